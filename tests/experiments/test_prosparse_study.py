"""experiment=prosparse on the study engine at toy size: the regimes as callbacks groups, every job
a fit from one cached SiLU pretraining (cached_fit), ValidationSparsity's numbers against a count
by hand, and YAML keys that change what runs."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from actsparse.callbacks import ActivationSwap
from actsparse.callbacks.validation_sparsity import ValidationSparsity
from actsparse.plugins import find_sites
from conftest import run_cli
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from actsparse.experiments import cached_fit
from actsparse.models import TinyLM
from actsparse.tasks.lm import CausalLM

# 20 pretraining + 30 steps per regime of a d32 x 1-layer LM; the llama2-7b schedule scaled to 30
# steps ends its substitution at step 9.
TINY = ["logger=csv", "threads=1", "trainer.enable_progress_bar=false", "model.d_model=32", "model.n_layers=1",
        "model.n_heads=2", "data.max_chars=200000", "data.seq_len=64", "data.batch_size=8",
        "trainer.limit_val_batches=2", "prosparse.pretrain_steps=20", "prosparse.steps=30",
        "prosparse.substitution_steps=9", "trainer.val_check_interval=10"]


def _sweep(tmp_path, overrides, name="sweep"):
    sweep = tmp_path / name
    proc = run_cli(["experiment=prosparse", f"hydra.sweep.dir={sweep}", *TINY, *overrides], cwd=tmp_path,
                   timeout=900, env={"ACTSPARSE_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep, json.loads((sweep / "results.json").read_text())


def test_prosparse_study_through_the_cli(tmp_path):
    sweep, results = _sweep(tmp_path, [])
    table = results["tables"][next(iter(results["tables"]))]
    assert [r["run"].split(" · ")[0] for r in table] == ["SiLU (dense)", "ReLU only", "ReLU + fixed λ",
                                                          "ProSparse schedule"]
    jobs = {j["overrides"]["callbacks"]: j["summary"] for j in results["jobs"]}
    assert jobs["sparsity"]["val/sparsity"] < 0.01  # SiLU has (almost) no exact zeros
    assert jobs["relu"]["val/sparsity"] > 0.1
    assert jobs["prosparse_fatrelu"]["val/fatrelu/sparsity"] >= jobs["prosparse_fatrelu"]["val/sparsity"]
    assert "val/fatrelu/ppl" not in jobs["relu"]  # measured where the callbacks group says so only
    # every job started from the one cached SiLU pretraining, trained once
    fits = [p for p in (tmp_path / "cache" / "fits").iterdir() if p.is_dir()]
    assert len(fits) == 1
    pretrain = OmegaConf.load(fits[0] / "config_resolved.yaml")
    assert pretrain.model.activation == "silu" and pretrain.trainer.max_steps == 20 and pretrain.model.d_model == 32
    for job in range(4):
        ran = OmegaConf.load(sweep / str(job) / "config_resolved.yaml")
        assert ran.init_from == str(fits[0] / "checkpoints" / "last.ckpt")
        assert ran.trainer.max_steps == 30 and ran.task.lr == 1e-3
    # the stages the groups built from the prosparse.* keys
    fixed = OmegaConf.load(sweep / "2" / "config_resolved.yaml").callbacks.prosparse
    assert OmegaConf.to_container(fixed.stages) == [[0.0, 9], [0.003, 30]]
    # the trade-off curve: val/sparsity against val/ppl at every validation (steps 10, 20, 30)
    assert len(jobs["relu"]["history"]["val/sparsity"]) == 3 and (sweep / "tradeoff.png").is_file()

    # A second study reuses the cached pretraining and reproduces the job seed for seed.
    _, again = _sweep(tmp_path, ["callbacks=relu"], name="again")
    assert len([p for p in (tmp_path / "cache" / "fits").iterdir() if p.is_dir()]) == 1
    (job,) = again["jobs"]
    assert job["summary"]["val perplexity"] == jobs["relu"]["val perplexity"]
    assert job["summary"]["val/sparsity"] == jobs["relu"]["val/sparsity"]


def test_prosparse_final_lambda_key_changes_what_runs(tmp_path):
    """prosparse.final_lambda reaches relu_fixed's ProSparse: more L1, more zeros."""
    _, results = _sweep(tmp_path, ["callbacks=relu_fixed", "prosparse.final_lambda=1e-4,0.1"])
    sparsity = {j["overrides"]["prosparse.final_lambda"]: j["summary"]["val/sparsity"] for j in results["jobs"]}
    assert sparsity["0.1"] > sparsity["0.0001"] + 0.05, sparsity


@pytest.mark.slow  # two CLI studies (~25 s); test_cached_fit_composes_keys_and_reuses checks the cache keys in-process
def test_prosparse_pretrain_steps_key_keys_a_new_pretraining(tmp_path):
    _sweep(tmp_path, ["callbacks=relu", "prosparse.pretrain_steps=20"], name="shorter")
    _sweep(tmp_path, ["callbacks=relu", "prosparse.pretrain_steps=25"], name="longer")
    fits = sorted(p for p in (tmp_path / "cache" / "fits").iterdir() if p.is_dir())
    assert len(fits) == 2
    assert sorted(OmegaConf.load(f / "config_resolved.yaml").trainer.max_steps for f in fits) == [20, 25]


def test_cached_fit_composes_keys_and_reuses(tmp_path, monkeypatch):
    import actsparse.train

    job = cached_fit.compose_run(["experiment=tiny_lm", "model.d_model=48"])
    # the job's model node replaces the composed one; the overrides inside it still hold
    cfg = cached_fit.compose_run(["experiment=tiny_lm", "model.activation=silu", "trainer.max_steps=7"],
                                 nodes={"model": OmegaConf.merge(job.model, {"activation": "relu", "max_seq_len": 64})})
    assert (cfg.model.d_model, cfg.model.activation, cfg.trainer.max_steps) == (48, "silu", 7)
    key = cached_fit.run_key(cfg)
    other = copy.deepcopy(cfg)
    other.trainer.max_steps = 8
    assert cached_fit.run_key(other) != key
    moved = copy.deepcopy(cfg)
    moved.paths.output_dir, moved.task_name = "/elsewhere", "renamed"  # where, not what: same key
    assert cached_fit.run_key(moved) == key

    calls = []

    def fake_fit(c):
        calls.append(c)
        ckpt = Path(c.paths.output_dir) / "last.ckpt"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        ckpt.write_text("weights")
        return {"checkpoint": str(ckpt)}

    monkeypatch.setattr(actsparse.train, "fit", fake_fit)
    args = {"overrides": ["experiment=tiny_lm", "model.activation=silu", "trainer.max_steps=7"],
            "nodes": {"model": OmegaConf.merge(job.model, {"max_seq_len": 64})}, "cache": str(tmp_path / "cache")}
    first = cached_fit.cached_fit(**args)
    assert cached_fit.cached_fit(**args) == first and len(calls) == 1
    expected = cached_fit.run_key(cached_fit.compose_run(args["overrides"], args["nodes"]))
    assert calls[0].paths.output_dir == str(tmp_path / "cache" / "fits" / expected)


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 17), generator=g)
    return DataLoader(list(zip(x[:, :-1], x[:, 1:])), batch_size=4)


def test_validation_sparsity_against_a_count_by_hand():
    torch.manual_seed(0)
    task = CausalLM(model=TinyLM(d_model=32, n_layers=2, n_heads=2, max_seq_len=16), lr=3e-3, warmup_steps=1)
    train, val = _data(32, 1), _data(12, 2)
    meter = ValidationSparsity(threshold=0.05)
    trainer = L.Trainer(accelerator="cpu", max_steps=6, val_check_interval=6, check_val_every_n_epoch=None, num_sanity_val_steps=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[ActivationSwap("relu"), meter])
    trainer.fit(task, train, val)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}

    def count(model):  # zeros of the down projections' inputs, and the mean token loss, in float64
        zeros, entries, nll, tokens = 0, 0, 0.0, 0
        hooks = [s.down.register_forward_pre_hook(
            lambda m, a: counts.append(((a[0] == 0).sum().item(), a[0].numel()))) for s in find_sites(model)]
        model.eval()
        with torch.no_grad():
            for x, y in val:
                counts = []
                logits = model(x)
                nll += F.cross_entropy(logits.double().flatten(0, 1), y.flatten(), reduction="sum").item()
                tokens += y.numel()
                zeros += sum(z for z, _ in counts)
                entries += sum(n for _, n in counts)
        for h in hooks:
            h.remove()
        return zeros / entries, nll / tokens

    sparsity, _ = count(task)
    assert logged["val/sparsity"] == pytest.approx(sparsity, abs=1e-7)
    shifted = copy.deepcopy(task)
    for site in find_sites(shifted):  # FATReLU by hand: x if x >= t else 0
        site.owner.act = torch.nn.Threshold(0.05, 0.0)  # Threshold zeroes x <= t; t is not hit in float
    fat_sparsity, fat_loss = count(shifted)
    assert logged["val/fatrelu/sparsity"] == pytest.approx(fat_sparsity, abs=1e-7)
    assert logged["val/fatrelu/loss"] == pytest.approx(fat_loss, rel=1e-5)
    assert logged["val/fatrelu/ppl"] == pytest.approx(math.exp(fat_loss), rel=1e-5)
    assert fat_sparsity > sparsity
    with pytest.raises(ValueError, match="threshold must be None or >= 0"):
        ValidationSparsity(threshold=-1)
