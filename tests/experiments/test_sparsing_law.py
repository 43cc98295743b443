"""The Sparsing Law's protocol: one CETT searched jointly over the last checkpoints (against an
independent float64 loop over the checkpoints), the activation ratio of a checkpoint at a CETT,
SparsityEvaluator's joint mode in a fit, and the study."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from ppl_sparsity_ddp import bigram_batches, reference_eval

from actsparse.evaluation import ppl_p_sparsity
from actsparse.evaluation.joint_cett import activation_ratio_at_cett, joint_cett
from actsparse.models import TinyLM

P = 1.0
SHAPE = {"d_model": 32, "n_layers": 2, "n_heads": 2, "activation": "relu", "max_seq_len": 32}


@pytest.fixture(scope="module")
def checkpoints():
    """Five checkpoints of one run (every 20 of 100 steps), float64 for the reference comparison."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    lm = TinyLM(**SHAPE)
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-2)
    data = bigram_batches(n_batches=8, seed=1)
    states = []
    for step in range(1, 101):
        x, y = data[step % len(data)]
        loss = F.cross_entropy(lm(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0:
            states.append(copy.deepcopy(lm.state_dict()))
    models = []
    for state in states:
        m = TinyLM(**SHAPE)
        m.load_state_dict(state)
        models.append(m.double().eval())
    yield models
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batches():
    return bigram_batches(n_batches=4)


def test_joint_cett_against_an_independent_loop(checkpoints, batches):
    r = joint_cett(checkpoints, batches, P, calibration_dtype=torch.float64)
    assert 0 < r.cett < 1 and r.cett_rejected - r.cett <= 1e-3 + 1e-12
    at = [reference_eval(m, batches, r.cett) for m in checkpoints]
    ratios = [a[0] for a in at]
    # the paper's criterion: the checkpoints' mean perplexity ratio within 1 + p/100 ...
    assert sum(ratios) / len(ratios) <= 1 + P / 100
    assert r.ppl_ratio == pytest.approx(sum(ratios) / len(ratios), rel=1e-6)
    assert r.ppl_ratios == pytest.approx(ratios, rel=1e-6)
    assert r.sparsities == pytest.approx([a[1] for a in at], rel=1e-12)
    # ... and not at the smallest rejected target
    beyond = [reference_eval(m, batches, r.cett_rejected)[0] for m in checkpoints]
    assert sum(beyond) / len(beyond) > 1 + P / 100
    # a different protocol from re-searching every checkpoint (PPL-p% of each)
    own = [ppl_p_sparsity(m, batches, P, calibration_dtype=torch.float64).cett for m in checkpoints]
    assert max(abs(c - r.cett) for c in own) > 2e-3, (own, r.cett)


def test_activation_ratio_at_cett_against_the_reference(checkpoints, batches):
    r = activation_ratio_at_cett(checkpoints[1], batches, 0.1, calibration_dtype=torch.float64)
    ratio, dropped, eps = reference_eval(checkpoints[1], batches, 0.1)
    assert r.activation_ratio == pytest.approx(1 - dropped, rel=1e-12)
    assert r.sparsity == pytest.approx(dropped, rel=1e-12)
    assert r.ppl_ratio == pytest.approx(ratio, rel=1e-6)
    assert r.thresholds == pytest.approx(eps, rel=1e-12)
    with pytest.raises(ValueError, match="cett must be in"):
        activation_ratio_at_cett(checkpoints[1], batches, 1.5)


def test_checkpoint_paths_are_loaded(checkpoints, batches, tmp_path):
    paths = []
    for i, m in enumerate(checkpoints[-2:]):
        paths.append(tmp_path / f"step{i}.pt")
        torch.save(m.state_dict(), paths[-1])

    def load(path):
        m = TinyLM(**SHAPE).double()
        m.load_state_dict(torch.load(path, weights_only=True))
        return m

    from_paths = joint_cett(paths, batches, P, load=load, calibration_dtype=torch.float64)
    from_models = joint_cett(checkpoints[-2:], batches, P, calibration_dtype=torch.float64)
    assert from_paths.cett == from_models.cett and from_paths.sparsities == from_models.sparsities
    with pytest.raises(ValueError, match="at least one"):
        joint_cett([], batches, P)


def test_sparsity_evaluator_joint_mode_in_a_fit(tmp_path):
    import lightning as L
    from actsparse.callbacks.evaluator import SparsityEvaluator
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    from actsparse.tasks.lm import CausalLM

    torch.manual_seed(0)
    task = CausalLM(model=TinyLM(**SHAPE), lr=1e-2)
    data = bigram_batches(n_batches=8, seed=2)
    x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    train = DataLoader(list(zip(x[:24], y[:24])), batch_size=4)
    val = DataLoader(list(zip(x[24:], y[24:])), batch_size=4)
    evaluator = SparsityEvaluator(p=P, joint_last=2, calibration_dtype=torch.float64)
    trainer = L.Trainer(accelerator="cpu", max_steps=30, val_check_interval=10, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0,
                        logger=CSVLogger(tmp_path), enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, callbacks=[evaluator], default_root_dir=tmp_path)
    trainer.fit(task, train, val)
    assert [step for step, _ in evaluator.snapshots] == [10, 20, 30]
    assert [step for step, _, _ in evaluator.curve] == [10, 20, 30]
    # independently: the last two snapshots rebuilt as models, the joint search, each ratio
    models = []
    for _, state in evaluator.snapshots:
        m = CausalLM(model=TinyLM(**SHAPE))
        m.load_state_dict(state)
        models.append(m)
    joint = joint_cett(models[-2:], val, P, calibration_dtype=torch.float64)
    assert evaluator.joint.cett == joint.cett
    for (_, ratio, ppl), m in zip(evaluator.curve, models):
        r = activation_ratio_at_cett(m, val, joint.cett, calibration_dtype=torch.float64)
        assert ratio == pytest.approx(r.activation_ratio, rel=1e-12)
        assert ppl == pytest.approx(r.ppl_ratio, rel=1e-9)
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "val/joint_p1_activation_ratio" in logged and "val/joint_p1_cett" in logged
    with pytest.raises(ValueError, match="joint_last"):
        SparsityEvaluator(joint_last=0)


def test_sparsing_law_callback_against_its_pieces(tmp_path):
    """SparsingLaw's curve, law and final PPL-p% sparsity against the public functions run by hand
    on the same snapshots (tokens per step counted by hand: 4 sequences x 16 tokens)."""
    import lightning as L
    from actsparse.callbacks import MetricHistory, SparsityMonitor
    from actsparse.callbacks.sparsing_law import SparsingLaw
    from actsparse.metrics.functional.laws import fit_activation_law
    from torch.utils.data import DataLoader

    from actsparse.tasks.lm import CausalLM

    torch.manual_seed(0)
    task = CausalLM(model=TinyLM(**SHAPE), lr=1e-2)
    data = bigram_batches(n_batches=8, seed=2)
    x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    train = DataLoader(list(zip(x[:24], y[:24])), batch_size=4)
    val = DataLoader(list(zip(x[24:], y[24:])), batch_size=4)
    law = SparsingLaw(p=P, joint_last=3, skip_first=1, calibration_dtype=torch.float64)
    history = MetricHistory(every_n_steps=5)
    trainer = L.Trainer(accelerator="cpu", max_steps=60, val_check_interval=6, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, callbacks=[history, SparsityMonitor(every_n_steps=5, heatmap=False), law],
                        default_root_dir=tmp_path)
    trainer.fit(task, train, val)
    per_step = 4 * x.shape[1]
    curves = history.history.by_key()
    steps = [s for s, _ in curves["sparsing_law/activation_ratio"]]
    assert steps == list(range(6, 61, 6))
    models = []
    for _, state in law.snapshots:
        m = CausalLM(model=TinyLM(**SHAPE))
        m.load_state_dict(state)
        models.append(m)
    joint = joint_cett(models[-3:], val, P, calibration_dtype=torch.float64)
    ratios = [activation_ratio_at_cett(m, val, joint.cett, calibration_dtype=torch.float64).activation_ratio
              for m in models]
    assert [r for _, r in curves["sparsing_law/activation_ratio"]] == pytest.approx(ratios, rel=1e-12)
    assert dict(curves["sparsing_law/tokens"])[60] == 60 * per_step
    by_hand = fit_activation_law([s * per_step for s in steps][1:], ratios[1:], kind="relu")
    measured = law.measured
    assert measured["sparsing_law/A0"] == pytest.approx(by_hand.A0, rel=1e-6)
    assert measured["sparsing_law/alpha"] == pytest.approx(by_hand.alpha, rel=1e-6)
    assert measured["sparsing_law/joint_cett"] == joint.cett
    final = ppl_p_sparsity(task, val, P, calibration_dtype=torch.float64)
    assert measured["sparsing_law/ppl_p1_sparsity"] == pytest.approx(final.sparsity, rel=1e-12)
    zero = curves["sparsing_law/zero_ratio"]
    assert [s for s, _ in zero] == list(range(5, 61, 5)) and all(0 < r < 1 for _, r in zero)
    assert dict(curves["sparsing_law/ppl_p1_sparsity"]) == {60: measured["sparsing_law/ppl_p1_sparsity"]}
    with pytest.raises(ValueError, match="kind must be"):
        SparsingLaw(kind="gelu")


SPARSING_TINY = ["trainer.max_steps=40", "callbacks.sparsity.every_n_steps=5", "trainer.val_check_interval=10", "data.max_chars=200000",
                 "callbacks.sparsing_law.joint_last=2", "callbacks.sparsing_law.skip_first=0",
                 "callbacks.sparsing_law.max_batches=2", "trainer.limit_val_batches=2"]


def _sweep(tmp_path, overrides, name="sweep"):
    from conftest import run_cli

    sweep = tmp_path / name
    proc = run_cli(["experiment=sparsing_law", f"hydra.sweep.dir={sweep}", *SPARSING_TINY, *overrides],
                   cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep, json.loads((sweep / "results.json").read_text())


@pytest.mark.slow
def test_sparsing_law_study_through_the_cli(tmp_path):
    sweep, results = _sweep(tmp_path, ["sparsing_law.shape=base"])
    table = results["tables"][next(iter(results["tables"]))]
    assert [r["run"] for r in table] == ["relu · d64×L4 (w/d 16)", "silu · d64×L4 (w/d 16)"]
    jobs = {j["overrides"]["model.activation"]: j["summary"] for j in results["jobs"]}
    for summary in jobs.values():
        assert len(summary["history"]["sparsing_law/activation_ratio"]) == 4
        assert 0 < summary["history"]["sparsing_law/joint_cett"][-1][1] < 1  # final values: the history's last step
    assert jobs["silu"]["history"]["sparsing_law/final_zero_ratio"][-1][1] == 1.0  # SiLU has no exact zeros
    assert "sparsing_law/zero_A0" in jobs["relu"]["history"] and "sparsing_law/zero_A0" not in jobs["silu"]["history"]
    (row,) = [r for r in table if r["run"].startswith("relu")]
    assert row["joint CETT"] == f'{jobs["relu"]["history"]["sparsing_law/joint_cett"][-1][1]:.4g}'
    assert (sweep / "ratio_vs_tokens.png").is_file() and (sweep / "zero_ratio_vs_tokens.png").is_file()


@pytest.mark.slow
def test_sparsing_law_yaml_keys_change_what_runs(tmp_path):
    """sparsing_law.shape sets the model's shape; callbacks.sparsing_law.joint_last=null switches
    to a PPL-p% search at every validation (no joint CETT)."""
    from actsparse.experiments import study

    cfg = study.compose("sparsing_law", ["sparsing_law.shape=wide", "hydra.mode=RUN"])
    assert (cfg.model.d_model, cfg.model.n_layers) == (92, 2)
    _, results = _sweep(tmp_path, ["sparsing_law.shape=widest", "model.activation=relu",
                                   "callbacks.sparsing_law.joint_last=null"])
    (job,) = results["jobs"]
    summary = job["summary"]
    assert "sparsing_law/joint_cett" not in summary["history"] and "sparsing_law/A0" in summary["history"]
    assert len(summary["history"]["val/ppl_p1_sparsity"]) == 4  # searched at each validation
    ratios = [r for _, r in summary["history"]["sparsing_law/activation_ratio"]]
    assert ratios == pytest.approx([1 - s for _, s in summary["history"]["val/ppl_p1_sparsity"]])
    widest = TinyLM(d_model=128, n_layers=1, n_heads=2, max_seq_len=64)
    assert summary["parameters"] == sum(p.numel() for p in widest.parameters())
