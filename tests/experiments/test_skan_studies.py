"""The two S-KAN studies end to end at toy size (configs composed like `actsparse-train experiment=...`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from actsparse.experiments import study

ROOT = Path(__file__).resolve().parents[2]
from conftest import run_cli


def _cfg(experiment: str, tmp_path, overrides):
    cfg = study.compose(experiment, ["logger=none", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    return cfg


SKAN_FIT_TINY = ["data.task=xy", "seed=0,1", "trainer.max_steps=12", "data.n_train=64", "data.n_val=32",
                 "data.n_test=64", "task.grid_update_every=2", "task.grid_update_until=4", "skan_fit.widths.xy=[2,3,1]"]


def _fit_sweep(tmp_path, overrides, experiment="skan_fit"):
    sweep = tmp_path / "sweep"
    proc = run_cli([f"experiment={experiment}", f"hydra.sweep.dir={sweep}", *overrides], cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep, json.loads((sweep / "results.json").read_text())


def test_skan_fit_grid_through_the_cli(tmp_path):
    """Four models x two seeds on one task: the table, the paired tests, and what each YAML key did."""
    from actsparse.models import KAN
    from actsparse.models.skan import mlp_parameters

    models = "model=skan_fit/skan,skan_fit/chebyshev,skan_fit/mlp,skan_fit/pykan"
    sweep, results = _fit_sweep(tmp_path, [*SKAN_FIT_TINY, models])
    rmse, wins, pairs = results["tables"].values()
    assert [r["run"] for r in rmse] == ["xy · S-KAN", "xy · ChebyKAN", "xy · MLP", "xy · pykan KAN"]
    jobs = {(j["overrides"]["model"].split("/")[1], j["overrides"]["seed"]): j["summary"] for j in results["jobs"]}
    assert len(jobs) == 8
    # skan_fit.widths.xy reached every model: sizes against models built by hand at [2, 3, 1]
    cheb = _params(KAN([2, 3, 1], spaces="chebyshev"))
    assert jobs["chebyshev", "0"]["parameters"] == cheb
    bspline = _params(KAN([2, 3, 1], spaces="bspline"))
    width = min(range(1, 50), key=lambda w: abs(mlp_parameters(2, w, 2, 1) - bspline))
    assert jobs["mlp", "0"]["parameters"] == mlp_parameters(2, width, 2, 1)
    # S-KAN: tested after pruning (one space per node, so between the parameter-free single-space
    # size and the unpruned one), with every space of skan_fit.spaces in its pool
    skan = jobs["skan", "0"]
    unpruned = _params(KAN([2, 3, 1], spaces=list(study.compose("skan_fit").skan_fit.spaces),
                           basis_options={"gram": {"degree": 3}}))
    assert skan["history"]["skan/parameters_unpruned"][-1][1] == unpruned
    assert cheb <= skan["parameters"] < unpruned
    shares = {k.rsplit("/", 1)[1] for k in skan["history"] if k.startswith("skan/space_share/")}
    assert shares == {"bspline", "fastkan", "rswaf", "chebyshev", "gram", "wavelet", "jacobi", "relu_kan"}
    for summary in jobs.values():
        assert summary["steps"] == 12 and 0 < summary["test/rmse"] < 10
    # the paired tests: S-KAN against each other model over the two seeds
    assert [r["vs"] for r in pairs] == ["ChebyKAN", "MLP", "pykan KAN"] and all(r["pairs"] == 2 for r in pairs)
    diff = jobs["skan", "0"]["test/rmse"] - jobs["chebyshev", "0"]["test/rmse"]
    diff1 = jobs["skan", "1"]["test/rmse"] - jobs["chebyshev", "1"]["test/rmse"]
    assert pairs[0]["test/rmse: S-KAN − other"].startswith(f"{(diff + diff1) / 2:.3g}")
    assert [w["vs"] for w in wins][-1] == "every single-space KAN (all of 8)"
    assert "paired over seeds" in (sweep / "results.md").read_text()


def test_skan_fit_yaml_keys_change_what_runs(tmp_path):
    """trainer.max_steps, skan_fit.widths and the grid-update schedule each take effect."""
    from actsparse.models import KAN

    sweep, results = _fit_sweep(tmp_path, [*SKAN_FIT_TINY[:1], "seed=0", "trainer.max_steps=6", "data.n_train=64",
                                           "data.n_test=64", "skan_fit.widths.xy=[2,4,1]", "task.grid_update_every=0",
                                           "model=skan_fit/bspline", "trainer.log_every_n_steps=1"])
    (job,) = results["jobs"]
    assert job["summary"]["steps"] == 6
    assert job["summary"]["parameters"] == _params(KAN([2, 4, 1], spaces="bspline"))
    # the composed job config is what ran: no grid updates, Adam at the study's learning rate
    cfg = (sweep / "0" / ".hydra" / "config.yaml").read_text()
    assert "grid_update_every: 0" in cfg and "optimizer: adam" in cfg


def test_skan_fit_lbfgs_is_pykans_protocol():
    cfg = study.compose("skan_fit_lbfgs")
    assert (cfg.task.optimizer, cfg.task.lr, cfg.task.lbfgs_max_iter, cfg.task.lbfgs_tolerance) == ("lbfgs", 1.0, 20, 1e-32)
    assert (cfg.task.grid_update_every, cfg.task.grid_update_until) == (10, 50)
    assert cfg.study.paired.against == "skan_fit/skan"
    base = study.compose("skan_fit")
    assert base.task.optimizer == "adam" and base.trainer.max_steps == 300
    import yaml

    for name in ("skan_fit", "skan_fit_lbfgs"):  # issue 25: at least 10 seeds in both grids
        grid = yaml.safe_load((ROOT / "conf" / "experiment" / f"{name}.yaml").read_text())["hydra"]["sweeper"]["params"]
        assert len(str(grid["seed"]).split(",")) >= 10


def test_grid_updates_follow_the_tasks_schedule_for_pykan_and_ours():
    """Regressor moves pykan's grid (through its own update_grid_from_samples) and ours to the data
    at the steps of its schedule only."""
    import torch

    from actsparse.models import KAN, PyKAN
    from actsparse.tasks import Regressor

    x = torch.rand(64, 2) * 0.5 + 0.25  # data on [0.25, 0.75]: a moved grid starts near 0.25
    for model, grid in ((PyKAN([2, 3, 1]), lambda m: m.kan.act_fun[0].grid),
                        (KAN([2, 3, 1], spaces="bspline"), lambda m: m.layers[0].bases["bspline"].grid)):
        task = Regressor(model, grid_update_every=10, grid_update_until=50)
        before = grid(model).clone()
        task.on_train_batch_start((x, x[:, :1]), 0)  # global_step 0: an update step
        inner = grid(model)[:, 3]  # the first inner knot (3 extension knots of order 3 before it)
        assert not torch.equal(before, grid(model))
        assert float((inner - x.min(0).values).abs().max()) < 0.05
    with pytest.raises(ValueError, match="grid_update_every must be >= 0"):
        Regressor(KAN([2, 3, 1]), grid_update_every=-1)


SKAN_DIGITS_TINY = ["seed=0", "trainer.max_epochs=1", "model.channels=[2,4]"]  # 17 steps per job


def _sweep(tmp_path, overrides):
    sweep = tmp_path / "sweep"
    proc = run_cli(["experiment=skan_digits", f"hydra.sweep.dir={sweep}", *overrides], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep, json.loads((sweep / "results.json").read_text())


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_skan_digits_grid_through_the_cli(tmp_path):
    from actsparse.models import CNN, SConvKAN

    sweep, results = _sweep(tmp_path, SKAN_DIGITS_TINY)
    (table,) = results["tables"].values()
    assert [r["run"] for r in table] == ["S-ConvKAN (pruned)", "ConvKAN (B-spline)", "CNN (matched size)"]
    jobs = {j["overrides"]["model"]: j["summary"] for j in results["jobs"]}
    assert set(jobs) == {"skan_conv_pruned", "skan_conv_bspline", "cnn_skan_matched"}
    # model.channels reached every model: sizes against models built by hand at [2, 4]
    single = _params(SConvKAN(channels=[2, 4], spaces="bspline"))
    assert jobs["skan_conv_bspline"]["parameters"] == single
    assert jobs["cnn_skan_matched"]["parameters"] == _params(CNN(channels=[2, 4]))
    # the S-ConvKAN is tested after pruning: one space of K = 8 functions per node, the single-space size
    skan = jobs["skan_conv_pruned"]
    assert skan["parameters"] == single
    all_spaces = _params(SConvKAN(channels=[2, 4], spaces=["bspline", "chebyshev", "fourier", "rbf", "mexican_hat",
                                                           "legendre", "relu_kan"]))
    assert skan["history"]["skan/parameters_unpruned"][-1][1] == all_spaces
    shares = {k.rsplit("/", 1)[1]: v[-1][1] for k, v in skan["history"].items() if k.startswith("skan/space_share/")}
    assert len(shares) == 7 and sum(shares.values()) == pytest.approx(1.0)
    assert all(v * 6 == pytest.approx(round(v * 6)) for v in shares.values())  # whole nodes of 2 + 4
    assert not any(k.startswith("skan/") for k in jobs["skan_conv_bspline"]["history"])  # no SKANTraining there
    for summary in jobs.values():
        assert summary["steps"] == 17 and 0 < summary["test/acc"] <= 1
    assert f"| S-ConvKAN (pruned) | 1 | {100 * skan['test/acc']:.4g} |" in (sweep / "results.md").read_text()


@pytest.mark.parametrize("full_fraction, pruned_at", [(0.5, 12), (0.25, 8)])
def test_skan_digits_phase_fraction_key_moves_the_pruning(tmp_path, full_fraction, pruned_at):
    # 17 steps: full = round(17 * full_fraction), selective = round(17 * 0.25) = 4, then pruned
    sweep, results = _sweep(tmp_path, [*SKAN_DIGITS_TINY, "model=skan_conv_pruned",
                                       f"callbacks.skan.full_fraction={full_fraction}", "trainer.log_every_n_steps=1"])
    (job,) = results["jobs"]
    log = (sweep / "0" / "train.log").read_text()
    assert f"SKANTraining: pruned at step {pruned_at}:" in log
    phase = dict(job["summary"]["history"]["skan/phase"])
    assert max(phase.values()) == 2.0  # the pruned phase was reached and logged


def test_skan_digits_matched_cnn_channels_follow_the_skan_config():
    """conf/model/cnn_skan_matched.yaml's channels are derived from skan_conv_pruned's: recompute them."""
    from hydra.utils import instantiate

    from actsparse.models import CNN
    from actsparse.plugins.kan import prune_spaces

    skan = instantiate(study.compose("skan_digits", ["model=skan_conv_pruned"]).model, _convert_="all")
    prune_spaces(skan)
    target = _params(skan)
    cnn_cfg = study.compose("skan_digits", ["model=cnn_skan_matched"]).model
    assert cnn_cfg._target_ == "actsparse.models.CNN"
    kwargs = {k: v for k, v in cnn_cfg.items() if k not in ("_target_", "channels")}
    best = min(([c, 2 * c] for c in range(1, 65)), key=lambda ch: abs(_params(CNN(channels=ch, **kwargs)) - target))
    assert list(cnn_cfg.channels) == best, (
        f"the pruned S-ConvKAN has {target} parameters: set channels: {best} in conf/model/cnn_skan_matched.yaml")
    assert (target, _params(CNN(channels=best, **kwargs))) == (3606, 3706)  # the numbers its comment states


def test_skan_digits_phase_lengths_are_steps_or_fractions():
    from actsparse.callbacks import SKANTraining

    cb = SKANTraining(full_fraction=0.5, selective_fraction=0.25)
    with pytest.raises(RuntimeError, match="resolve_steps"):
        cb.phase(0)
    assert cb.resolve_steps(340) == (170, 85)  # the study's 20 epochs x 17 batches
    assert (cb.phase(169), cb.phase(170), cb.phase(255)) == ("full", "selective", "pruned")
    with pytest.raises(ValueError, match="either as full_steps/selective_steps or as"):
        SKANTraining(full_steps=10, full_fraction=0.5, selective_fraction=0.25)
    with pytest.raises(ValueError, match="sum to <= 1"):
        SKANTraining(full_fraction=0.8, selective_fraction=0.3)
    with pytest.raises(ValueError, match="finite run"):
        SKANTraining(full_fraction=0.5, selective_fraction=0.25).resolve_steps(float("inf"))
