"""The two S-KAN studies end to end at toy size (configs composed like `actsparse-train experiment=...`)."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from omegaconf import open_dict

from actsparse.experiments import study


def _cfg(experiment: str, tmp_path, overrides):
    cfg = study.compose(experiment, ["logger=none", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    return cfg


def test_skan_fit_end_to_end(tmp_path):
    from actsparse.experiments.skan_fit import run

    cfg = _cfg("skan_fit", tmp_path, ["skan_fit.seeds=[0]", "skan_fit.steps=12", "skan_fit.n_train=64",
                                      "skan_fit.n_test=64", "skan_fit.models=[mlp,chebyshev,skan,pykan]",
                                      "skan_fit.grid_update_until=4", "skan_fit.grid_update_every=2"])
    with open_dict(cfg):
        cfg.skan_fit.tasks = {"xy": [2, 3, 1]}
    result = run(cfg)
    data = json.loads((tmp_path / "results.json").read_text())
    runs = {r["model"]: r for r in data["runs"]}
    assert set(runs) == {"mlp", "chebyshev", "skan", "pykan"}
    assert all(len(r["curve"]) == 12 for r in runs.values())
    # S-KAN is evaluated after pruning: its size is that of a single-space KAN of the same shape
    assert runs["skan"]["params"] == runs["chebyshev"]["params"] < runs["skan"]["params_trained"]
    assert abs(runs["mlp"]["params"] - runs["chebyshev"]["params"]) <= 0.1 * runs["chebyshev"]["params"]
    assert sum(len(v) for v in runs["skan"]["chosen"].values()) == 4  # 3 hidden + 1 output node
    assert (tmp_path / "curves.png").exists() and (tmp_path / "spaces.png").exists()
    assert "S-KAN RMSE" in (tmp_path / "results.md").read_text()
    assert set(result["wins"]) == {"skan_le_all_single", "skan_lt_mlp", "skan_lt_pykan"}


def test_skan_fit_rejects_bad_settings(tmp_path):
    from actsparse.experiments.skan_fit import run

    cfg = _cfg("skan_fit", tmp_path, ["skan_fit.models=[mlp,splines]"])
    with pytest.raises(ValueError, match="Unknown model 'splines'"):
        run(cfg)
    cfg = _cfg("skan_fit", tmp_path, [])
    with open_dict(cfg):
        cfg.skan_fit.tasks = {"xy": [3, 2, 1]}
    with pytest.raises(ValueError, match="the task has 2"):
        run(cfg)


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
