"""GO-term metrics (Fmax, Smin, AUPR): hand-computed cases, an independent loop implementation,
scikit-learn's average precision, the torchmetrics classes, and 2-process DDP."""

import doctest
import importlib
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from actsparse.metrics.functional.go_terms import aupr, average_precision, fmax, information_content, smin
from actsparse.metrics.go_terms import AUPR, Fmax, Smin
from distributed import run_ranks
from go_terms_ddp import go_data, metric_values, worker

THRESHOLDS = [k / 100 for k in range(1, 100)]


# ---- independent references: plain Python loops over thresholds, proteins and terms ----

def loop_fmax(preds, targets):
    best = 0.0
    for t in THRESHOLDS:
        precisions, recalls = [], []
        for p_row, y_row in zip(preds, targets):
            predicted = [j for j, p in enumerate(p_row) if p >= t]
            true = [j for j, y in enumerate(y_row) if y]
            hits = len(set(predicted) & set(true))
            if predicted:
                precisions.append(hits / len(predicted))
            if true:
                recalls.append(hits / len(true))
        if not precisions:
            continue
        p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
        if p + r > 0:
            best = max(best, 2 * p * r / (p + r))
    return best


def loop_ic(targets):
    n = len(targets)
    out = []
    for j in range(len(targets[0])):
        count = sum(1 for row in targets if row[j])
        out.append(-math.log2(count / n) if count else 0.0)
    return out


def loop_smin(preds, targets, ic):
    best = float("inf")
    n = len(preds)
    for t in THRESHOLDS:
        ru = mi = 0.0
        for p_row, y_row in zip(preds, targets):
            for j, (p, y) in enumerate(zip(p_row, y_row)):
                if y and p < t:
                    ru += ic[j]
                if p >= t and not y:
                    mi += ic[j]
        best = min(best, math.sqrt((ru / n) ** 2 + (mi / n) ** 2))
    return best


def loop_average_precision(scores, labels):
    """AP as a sum over each distinct threshold (descending): (recall step) x precision."""
    positives = sum(labels)
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        chosen = [y for s, y in zip(scores, labels) if s >= t]
        tp = sum(chosen)
        recall = tp / positives
        ap += (recall - prev_recall) * tp / len(chosen)
        prev_recall = recall
    return ap


def random_case(seed, n=23, c=7):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.3).astype(np.float32)
    targets[np.arange(n), rng.integers(0, c, n)] = 1       # every protein annotated
    preds = np.round(np.clip(0.5 * targets + 0.7 * rng.random((n, c)), 0, 1), 3).astype(np.float32)
    return torch.from_numpy(preds), torch.from_numpy(targets)


# ---- hand-computed ----

def test_fmax_hand_computed():
    preds = torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.8, 0.3]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 1]])
    # t in (0.2, 0.3]: protein 1 predicts {0, 2} (precision 1/2, recall 1), protein 2 {1, 2} (1, 1)
    assert float(fmax(preds, targets)) == pytest.approx(2 * 0.75 * 1.0 / 1.75)
    value, threshold = fmax(preds, targets, return_threshold=True)
    assert 0.2 < float(threshold) <= 0.3


def test_fmax_precision_only_over_proteins_with_predictions():
    # protein 2 never reaches any threshold: it is left out of precision but counts in recall
    preds = torch.tensor([[0.95, 0.0], [0.0, 0.0]])
    targets = torch.tensor([[1, 0], [0, 1]])
    # best: p = 1 (protein 1 only), r = (1 + 0) / 2
    assert float(fmax(preds, targets)) == pytest.approx(2 * 1 * 0.5 / 1.5)


def test_fmax_nothing_predicted_is_zero_and_unannotated_is_an_error():
    assert float(fmax(torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 1, 0]]))) == 0.0
    with pytest.raises(ValueError, match="no protein has a true term"):
        fmax(torch.rand(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\[proteins, terms\]"):
        fmax(torch.rand(2, 3), torch.zeros(3, 2))


def test_smin_hand_computed_and_frequency_ic():
    targets = torch.tensor([[1, 0, 1], [1, 0, 0], [1, 0, 0], [1, 1, 0]])
    ic = information_content(targets)
    assert ic.tolist() == pytest.approx([0.0, 2.0, 2.0])  # -log2(4/4), -log2(1/4), -log2(1/4)
    preds = torch.tensor([[0.9, 0.0, 0.0], [0.9, 0.0, 0.0], [0.9, 0.0, 0.0], [0.9, 0.7, 0.0]])
    # best t in (0, 0.7]: protein 1 misses term 2 (ru = 2/4), nothing wrong predicted
    assert float(smin(preds, targets)) == pytest.approx(0.5)
    # an IC table charges term 0 too
    assert float(smin(torch.zeros(4, 3), targets, ic=torch.tensor([1.0, 0.0, 0.0]))) == pytest.approx(1.0)


def test_aupr_hand_computed():
    # ranking 0.8(+) 0.4(-) 0.35(+) 0.1(-): AP = 1/2 * 1 + 1/2 * 2/3
    assert float(average_precision(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))) == pytest.approx(5 / 6)
    # ties are one threshold: both at 0.5, one positive -> precision 1/2 at recall 1
    assert float(average_precision(torch.tensor([0.5, 0.5]), torch.tensor([1, 0]))) == pytest.approx(0.5)


# ---- independent loop implementation and scikit-learn ----

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_loop_implementation(seed):
    preds, targets = random_case(seed)
    p, y = preds.tolist(), targets.tolist()
    assert float(fmax(preds, targets)) == pytest.approx(loop_fmax(p, y), abs=1e-9)
    ic = loop_ic(y)
    assert information_content(targets).tolist() == pytest.approx(ic)
    assert float(smin(preds, targets)) == pytest.approx(loop_smin(p, y, ic), abs=1e-9)
    flat_p, flat_y = preds.flatten().tolist(), targets.flatten().tolist()
    assert float(aupr(preds, targets, "micro")) == pytest.approx(loop_average_precision(flat_p, flat_y), abs=1e-9)


@pytest.mark.parametrize("seed", [0, 3])
def test_aupr_matches_sklearn(seed):
    preds, targets = random_case(seed, n=40, c=9)
    targets[:, 4] = 0  # a term without positives is left out of the macro mean
    micro = average_precision_score(targets.numpy().ravel(), preds.numpy().ravel())
    kept = [c for c in range(9) if targets[:, c].any()]
    macro = average_precision_score(targets.numpy()[:, kept], preds.numpy()[:, kept], average="macro")
    assert float(aupr(preds, targets, "micro")) == pytest.approx(micro, abs=1e-9)
    assert float(aupr(preds, targets, "macro")) == pytest.approx(macro, abs=1e-9)


def test_metric_classes_accumulate_like_the_functions():
    preds, targets = random_case(4)
    values = metric_values([(preds[:9], targets[:9]), (preds[9:], targets[9:])])
    assert values["fmax"] == pytest.approx(float(fmax(preds, targets)))
    assert values["smin"] == pytest.approx(float(smin(preds, targets)))
    assert values["aupr_micro"] == pytest.approx(float(aupr(preds, targets, "micro")))
    assert values["aupr_macro"] == pytest.approx(float(aupr(preds, targets, "macro")))
    metric = Fmax()
    with pytest.raises(RuntimeError, match="before update"):
        metric.compute()
    metric.update(preds[:, :3], targets[:, :3])
    with pytest.raises(ValueError, match="same GO-term vocabulary"):
        metric.update(preds, targets)
    with pytest.raises(ValueError, match="micro' or 'macro"):
        AUPR("weighted")
    smin_fixed = Smin(ic=torch.ones(targets.shape[1]))
    smin_fixed.update(preds, targets)
    assert float(smin_fixed.compute()) == pytest.approx(loop_smin(preds.tolist(), targets.tolist(), [1.0] * 7))


def test_ddp_two_processes_equal_single_process(tmp_path):
    results = run_ranks(worker, tmp_path, world=2)
    preds, targets = go_data()
    single = metric_values([(preds, targets)])
    for rank_values in results:
        for key, value in single.items():
            assert rank_values[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("name", ["actsparse.metrics.functional.go_terms", "actsparse.metrics.go_terms"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_metrics_import_stays_light():
    # the GO metrics add no heavy import to what `import actsparse.metrics` already loads
    code = ("import sys, actsparse.metrics; before = set(sys.modules); "
            "import actsparse.metrics.go_terms, actsparse.metrics.functional.go_terms; "
            "heavy = ('hydra', 'wandb', 'matplotlib', 'gemmi', 'torch_geometric', 'lightning'); "
            "print([m for m in set(sys.modules) - before if m.split('.')[0] in heavy] "
            "+ [m for m in ('hydra', 'wandb', 'gemmi', 'torch_geometric') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
