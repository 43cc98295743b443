"""GO-term metrics (Fmax with coverage, Smin, AUPR) with the field's conventions (annotated proteins
only, micro AUPR over terms with a positive, propagation up a GO graph, information content given
the parents): hand-computed cases, an independent loop implementation, scikit-learn's average
precision, the torchmetrics classes, and 2-process DDP."""

import doctest
import importlib
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from actsparse.metrics.functional.go_ontology import (
    ancestor_matrix,
    information_content,
    propagate,
)
from actsparse.metrics.functional.go_terms import (
    aupr,
    average_precision,
    fmax,
    fmax_result,
    smin,
)
from actsparse.metrics.go_terms import AUPR, Fmax, Smin
from distributed import run_ranks
from go_terms_ddp import PARENTS, go_data, metric_values, worker
from sklearn.metrics import average_precision_score

THRESHOLDS = [k / 100 for k in range(1, 100)]


# ---- independent references: plain Python loops over thresholds, proteins and terms ----

def loop_fmax(preds, targets):
    """CAFA full mode over the annotated proteins: (fmax, coverage at its threshold)."""
    rows = [(p, y) for p, y in zip(preds, targets) if any(y)]
    best, coverage = 0.0, 0.0
    for t in THRESHOLDS:
        precisions, recalls = [], []
        for p_row, y_row in rows:
            predicted = [j for j, p in enumerate(p_row) if p >= t]
            true = [j for j, y in enumerate(y_row) if y]
            hits = len(set(predicted) & set(true))
            if predicted:
                precisions.append(hits / len(predicted))
            recalls.append(hits / len(true))
        if not precisions:
            continue
        p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
        if p + r > 0 and 2 * p * r / (p + r) > best:
            best, coverage = 2 * p * r / (p + r), len(precisions) / len(rows)
    return best, coverage


def loop_ic(targets, parents=None):
    """-log2 P(f | all parents of f) by counting proteins (parents=None: the marginal)."""
    out = []
    for j in range(len(targets[0])):
        having_parents = [row for row in targets if all(row[q] for q in (parents[j] if parents else []))]
        count = sum(1 for row in having_parents if row[j])
        out.append(math.log2(len(having_parents) / count) if count else 0.0)
    return out


def loop_smin(preds, targets, ic):
    rows = [(p, y) for p, y in zip(preds, targets) if any(y)]
    best = float("inf")
    n = len(rows)
    for t in THRESHOLDS:
        ru = mi = 0.0
        for p_row, y_row in rows:
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


def loop_propagate(rows, parents):
    """Each term's score: the max over itself and every term below it (walking parents upwards)."""
    out = []
    for row in rows:
        new = list(row)
        for i, value in enumerate(row):
            stack = list(parents[i])
            while stack:
                q = stack.pop()
                new[q] = max(new[q], value)
                stack.extend(parents[q])
        out.append(new)
    return out


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
    _, threshold = fmax(preds, targets, return_threshold=True)
    assert 0.2 < float(threshold) <= 0.3


def test_unannotated_proteins_are_left_out():
    preds = torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.8, 0.3]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 1]])
    # a protein with no true term and confident wrong predictions changes nothing (it once lowered
    # precision at every threshold without counting in recall)
    with_unannotated = (torch.cat([preds, torch.tensor([[0.99, 0.99, 0.99]])]), torch.cat([targets, torch.zeros(1, 3)]))
    assert float(fmax(*with_unannotated)) == pytest.approx(2 * 0.75 / 1.75)
    assert float(smin(*with_unannotated, ic=torch.ones(3))) == float(smin(preds, targets, ic=torch.ones(3)))


def test_fmax_precision_over_proteins_with_predictions_and_coverage():
    # protein 2 never reaches any threshold: it is left out of precision but counts in recall
    preds = torch.tensor([[0.95, 0.0], [0.0, 0.0]])
    targets = torch.tensor([[1, 0], [0, 1]])
    # best: p = 1 (protein 1 only), r = (1 + 0) / 2, coverage 1/2
    result = fmax_result(preds, targets)
    assert float(result.fmax) == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert float(result.coverage) == pytest.approx(0.5)
    # everyone predicted at the best threshold: coverage 1
    assert float(fmax_result(torch.tensor([[0.9, 0.1], [0.1, 0.9]]), targets).coverage) == 1.0


def test_fmax_nothing_predicted_is_zero_and_no_annotation_is_an_error():
    assert float(fmax(torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 1, 0]]))) == 0.0
    with pytest.raises(ValueError, match="no protein has a true term"):
        fmax(torch.rand(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\[proteins, terms\]"):
        fmax(torch.rand(2, 3), torch.zeros(3, 2))


def test_ancestors_and_propagation_hand_computed():
    # 0 is the root; 1 and 2 are its children; 3 is a child of 1 (and, by a second path, of 2)
    parents = [[], [0], [0], [1, 2]]
    a = ancestor_matrix(parents)
    assert a.int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]]
    scores = torch.tensor([[0.1, 0.2, 0.3, 0.8], [0.5, 0.4, 0.1, 0.0]])
    # row 1: 3's 0.8 reaches 1, 2 and 0; row 2: nothing below beats each term's own score
    torch.testing.assert_close(propagate(scores, a), torch.tensor([[0.8, 0.8, 0.8, 0.8], [0.5, 0.4, 0.1, 0.0]]))
    with pytest.raises(ValueError, match="acyclic"):
        ancestor_matrix([[1], [0]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ancestor_matrix([[], [5]])


def test_fmax_with_a_graph_propagates_predictions():
    # a leaf (1) under a root (0); the labels obey the true-path rule, the predictions do not
    a = ancestor_matrix([[], [0]])
    preds = torch.tensor([[0.1, 0.9]])
    targets = torch.tensor([[1, 1]])
    # unpropagated, at t = 0.5: only the leaf -> p = 1, r = 1/2
    t = torch.tensor([0.5])
    assert float(fmax(preds, targets, thresholds=t)) == pytest.approx(2 * 1 * 0.5 / 1.5)
    # propagated: the root gets 0.9 too -> p = r = 1
    assert float(fmax(preds, targets, thresholds=t, ancestors=a)) == pytest.approx(1.0)
    # labels are propagated too: a leaf-only label also means its root
    assert float(fmax(torch.tensor([[0.9, 0.9]]), torch.tensor([[0, 1]]), thresholds=t, ancestors=a)) == 1.0


def test_information_content_marginal_and_conditional_hand_computed():
    # root 0 with children 1 and 2; four proteins: {0,1}, {0,1}, {0,2}, {} (propagated)
    targets = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 1], [0, 0, 0]])
    # marginal: P(0) = 3/4, P(1) = 2/4, P(2) = 1/4
    assert information_content(targets).tolist() == pytest.approx([math.log2(4 / 3), 1.0, 2.0])
    # conditional on the parent: P(1 | 0) = 2/3, P(2 | 0) = 1/3; the root's condition is everything
    cond = information_content(targets, ancestor_matrix([[], [0], [0]]))
    assert cond.tolist() == pytest.approx([math.log2(4 / 3), math.log2(3 / 2), math.log2(3)])
    # a term with two parents is conditioned on having both: 3 under 1 and 2
    y = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 1, 0]])
    ic = information_content(y, ancestor_matrix([[], [0], [0], [1, 2]]))
    assert float(ic[3]) == pytest.approx(math.log2(2 / 1))  # 2 proteins have 1 and 2, one of them has 3
    # never annotated: 0
    assert float(information_content(torch.tensor([[1, 0], [1, 0]]))[1]) == 0.0


def test_smin_hand_computed_and_default_ic():
    targets = torch.tensor([[1, 0, 1], [1, 0, 0], [1, 0, 0], [1, 1, 0]])
    ic = information_content(targets)
    assert ic.tolist() == pytest.approx([0.0, 2.0, 2.0])  # -log2(4/4), -log2(1/4), -log2(1/4)
    preds = torch.tensor([[0.9, 0.0, 0.0], [0.9, 0.0, 0.0], [0.9, 0.0, 0.0], [0.9, 0.7, 0.0]])
    # best t in (0, 0.7]: protein 1 misses term 2 (ru = 2/4), nothing wrong predicted
    assert float(smin(preds, targets)) == pytest.approx(0.5)
    # an IC table charges term 0 too
    assert float(smin(torch.zeros(4, 3), targets, ic=torch.tensor([1.0, 0.0, 0.0]))) == pytest.approx(1.0)
    # with a graph (1 and 2 under 0) the default IC is conditional: 2 given 0 is 1/4 -> 2 bits
    a = ancestor_matrix([[], [0], [0]])
    assert float(smin(preds, targets, ancestors=a)) == pytest.approx(0.5)


def test_aupr_hand_computed_and_terms_without_positives_left_out():
    # ranking 0.8(+) 0.4(-) 0.35(+) 0.1(-): AP = 1/2 * 1 + 1/2 * 2/3
    assert float(average_precision(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))) == pytest.approx(5 / 6)
    # ties are one threshold: both at 0.5, one positive -> precision 1/2 at recall 1
    assert float(average_precision(torch.tensor([0.5, 0.5]), torch.tensor([1, 0]))) == pytest.approx(0.5)
    # micro: a term without positives (column 1, scored 0.9) is left out; with it, 0.9 would lead the ranking
    preds = torch.tensor([[0.8, 0.9], [0.3, 0.9]])
    targets = torch.tensor([[1, 0], [0, 0]])
    assert float(aupr(preds, targets, "micro")) == pytest.approx(1.0)
    assert float(average_precision(preds.flatten(), targets.flatten())) == pytest.approx(1 / 3)


# ---- independent loop implementation and scikit-learn ----

def unannotated_case(seed):
    preds, targets = random_case(seed)
    targets[[2, 9]] = 0  # two proteins without a true term
    return preds, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_loop_implementation(seed):
    preds, targets = unannotated_case(seed)
    p, y = preds.tolist(), targets.tolist()
    value, coverage = loop_fmax(p, y)
    result = fmax_result(preds, targets)
    assert float(result.fmax) == pytest.approx(value, abs=1e-9)
    assert float(result.coverage) == pytest.approx(coverage, abs=1e-9)
    annotated = [row for row in y if any(row)]
    ic = loop_ic(annotated)
    assert float(smin(preds, targets)) == pytest.approx(loop_smin(p, y, ic), abs=1e-9)
    kept = [c for c in range(targets.shape[1]) if targets[:, c].any()]
    flat_p, flat_y = preds[:, kept].flatten().tolist(), targets[:, kept].flatten().tolist()
    assert float(aupr(preds, targets, "micro")) == pytest.approx(loop_average_precision(flat_p, flat_y), abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_against_loop_implementation_with_a_graph(seed):
    # terms 0..6 of random_case: 0 and 1 roots, 2 under 0, 3 under 0 and 1, 4 under 2, 5 under 3, 6 under 4 and 5
    parents = [[], [], [0], [0, 1], [2], [3], [4, 5]]
    a = ancestor_matrix(parents)
    preds, targets = unannotated_case(seed)
    p, y = loop_propagate(preds.tolist(), parents), loop_propagate(targets.tolist(), parents)
    torch.testing.assert_close(propagate(preds, a), torch.tensor(p))
    value, coverage = loop_fmax(p, y)
    result = fmax_result(preds, targets, ancestors=a)
    assert float(result.fmax) == pytest.approx(value, abs=1e-9)
    assert float(result.coverage) == pytest.approx(coverage, abs=1e-9)
    annotated = [row for row in y if any(row)]
    ic = loop_ic(annotated, parents)
    assert information_content(torch.tensor(annotated), a).tolist() == pytest.approx(ic)
    assert float(smin(preds, targets, ancestors=a)) == pytest.approx(loop_smin(p, y, ic), abs=1e-9)
    yt = torch.tensor(y)
    kept = [c for c in range(yt.shape[1]) if yt[:, c].any()]
    flat_p, flat_y = torch.tensor(p)[:, kept].flatten().tolist(), yt[:, kept].flatten().tolist()
    assert float(aupr(preds, targets, "micro", ancestors=a)) == pytest.approx(
        loop_average_precision(flat_p, flat_y), abs=1e-9)


@pytest.mark.parametrize("seed", [0, 3])
def test_aupr_matches_sklearn(seed):
    preds, targets = random_case(seed, n=40, c=9)
    targets[:, 4] = 0  # a term without positives is left out of micro and macro
    kept = [c for c in range(9) if targets[:, c].any()]
    micro = average_precision_score(targets.numpy()[:, kept].ravel(), preds.numpy()[:, kept].ravel())
    macro = average_precision_score(targets.numpy()[:, kept], preds.numpy()[:, kept], average="macro")
    assert float(aupr(preds, targets, "micro")) == pytest.approx(micro, abs=1e-9)
    assert float(aupr(preds, targets, "macro")) == pytest.approx(macro, abs=1e-9)


@pytest.mark.parametrize("graph", [False, True])
def test_metric_classes_accumulate_like_the_functions(graph):
    preds, targets = go_data()
    a = ancestor_matrix(PARENTS) if graph else None
    values = metric_values([(preds[:9], targets[:9]), (preds[9:], targets[9:])], graph=graph)
    result = fmax_result(preds, targets, ancestors=a)
    assert values["fmax"] == pytest.approx(float(result.fmax))
    assert values["coverage"] == pytest.approx(float(result.coverage))
    assert values["smin"] == pytest.approx(float(smin(preds, targets, ancestors=a)))
    assert values["aupr_micro"] == pytest.approx(float(aupr(preds, targets, "micro", ancestors=a)))
    assert values["aupr_macro"] == pytest.approx(float(aupr(preds, targets, "macro", ancestors=a)))


def test_metric_classes_errors():
    preds, targets = random_case(4)
    metric = Fmax()
    with pytest.raises(RuntimeError, match="before update"):
        metric.compute()
    metric.update(preds[:, :3], targets[:, :3])
    with pytest.raises(ValueError, match="same GO-term vocabulary"):
        metric.update(preds, targets)
    with pytest.raises(ValueError, match="micro' or 'macro"):
        AUPR("weighted")
    with pytest.raises(ValueError, match="vocabulary size"):
        Smin()
    smin_fixed = Smin(ic=torch.ones(targets.shape[1]))
    smin_fixed.update(preds, targets)
    assert float(smin_fixed.compute()) == pytest.approx(loop_smin(preds.tolist(), targets.tolist(), [1.0] * 7))


def test_metric_states_are_sums_except_aupr():
    # Fmax and Smin keep per-threshold sums (memory independent of the number of proteins)
    fmax_metric, smin_metric = Fmax(), Smin(num_terms=7)
    assert set(fmax_metric.metric_state) >= {"precision", "covered", "recall", "annotated"}
    for metric in (fmax_metric, smin_metric):
        preds, targets = random_case(1)
        metric.update(preds, targets)
        metric.update(preds, targets)
        assert all(isinstance(v, torch.Tensor) for v in metric.metric_state.values())
    assert smin_metric.missed.shape == (99, 7) and fmax_metric.precision.shape == (99,)
    assert isinstance(AUPR().metric_state["preds"], list)  # AUPR needs every score: cat states


def test_ddp_two_processes_equal_single_process(tmp_path):
    results = run_ranks(worker, tmp_path, world=2)
    preds, targets = go_data()
    for graph in (False, True):
        single = metric_values([(preds, targets)], graph=graph)
        for rank_values in results:
            for key, value in single.items():
                assert rank_values["graph" if graph else "flat"][key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("name", ["actsparse.metrics.functional.go_terms", "actsparse.metrics.functional.go_ontology",
                                  "actsparse.metrics.go_terms"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_metrics_import_stays_light():
    # the GO metrics add no heavy import to what `import actsparse.metrics` already loads
    code = ("import sys, actsparse.metrics; before = set(sys.modules); "
            "import actsparse.metrics.go_terms, actsparse.metrics.functional.go_terms, actsparse.metrics.functional.go_ontology; "
            "heavy = ('hydra', 'wandb', 'matplotlib', 'gemmi', 'torch_geometric', 'lightning'); "
            "print([m for m in set(sys.modules) - before if m.split('.')[0] in heavy] "
            "+ [m for m in ('hydra', 'wandb', 'gemmi', 'torch_geometric') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
