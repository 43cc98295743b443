"""The two S-KAN studies end to end at toy size (configs composed like `actsparse-train experiment=...`)."""

from __future__ import annotations

import json

import pytest
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


def test_skan_digits_end_to_end(tmp_path):
    from actsparse.experiments.skan_digits import run

    cfg = _cfg("skan_digits", tmp_path, ["skan_digits.seeds=[0]", "skan_digits.epochs=1", "skan_digits.channels=[2,4]",
                                         "skan_digits.spaces=[bspline,rbf]", "skan_digits.single_spaces=[rbf]"])
    run(cfg)
    data = json.loads((tmp_path / "results.json").read_text())
    runs = {r["model"]: r for r in data["runs"]}
    assert set(runs) == {"sconvkan", "convkan_rbf", "cnn"}
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in runs.values())
    assert runs["sconvkan"]["params"] < runs["sconvkan"]["params_trained"]  # pruned
    assert runs["sconvkan"]["params"] == runs["convkan_rbf"]["params"]
    assert "Digits test accuracy" in (tmp_path / "results.md").read_text()
