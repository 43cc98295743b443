"""The Sparsing Law's protocol: one CETT searched jointly over the last checkpoints (against an
independent float64 loop over the checkpoints), the activation ratio of a checkpoint at a CETT,
SparsityEvaluator's joint mode in a fit, and the study."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from actsparse.evaluation import ppl_p_sparsity
from actsparse.evaluation.joint_cett import activation_ratio_at_cett, joint_cett
from actsparse.models import TinyLM
from ppl_sparsity_ddp import bigram_batches, reference_eval

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
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    from actsparse.callbacks.evaluator import SparsityEvaluator
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


def test_study_config_defaults_to_the_papers_protocol():
    from actsparse.experiments import study

    cfg = study.compose("sparsing_law", ["paths.output_dir=/tmp/unused"])
    assert cfg.entry == "actsparse.experiments.sparsing_law.run"
    assert cfg.sparsing_law.cett == "joint" and cfg.sparsing_law.joint_last == 5


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["joint", "per_checkpoint"])
def test_study_runs_end_to_end(tmp_path, mode):
    from actsparse.experiments import study
    from actsparse.experiments.sparsing_law import report, run

    cfg = study.compose("sparsing_law", [f"paths.output_dir={tmp_path / 'job'}", "trainer.max_steps=40",
                                         "sparsing_law.eval_every_n_steps=10", "sparsing_law.skip_first=0",
                                         "sparsing_law.joint_last=2", f"sparsing_law.cett={mode}",
                                         "data.max_chars=200000", "sparsing_law.eval_batches=2",
                                         "trainer.limit_val_batches=2"]
                        + (["logger=none"] if mode == "per_checkpoint" else []))
    if mode == "per_checkpoint":  # without the CSV log the zero-based curve is left out, and it says so
        with pytest.warns(UserWarning, match="no CSV logger"):
            run(cfg)
    else:
        run(cfg)
    res = json.loads((tmp_path / "job" / "results.json").read_text())
    assert res["cett_mode"] == mode and len(res["tokens"]) == 4
    assert bool(res["zero_ratio"]) == (mode == "joint")
    assert (res["joint_cett"] is not None) == (mode == "joint")
    assert all(0 <= r <= 1 for r in res["ratio"])
    text = report([tmp_path / "job" / "results.json"], tmp_path)
    assert "c (D in 1e9 tokens)" in text and (tmp_path / "ratio_vs_tokens.png").exists()
