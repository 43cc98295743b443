"""The issue-15 study experiment=ntk_regimes end to end at tiny sizes (experiment=ntk_finite runs on the
study engine: tests/experiments/test_study_engine.py)."""

import json

from omegaconf import open_dict

from actsparse.experiments import ntk_regimes, study


def test_ntk_regimes_runs_end_to_end(tmp_path):
    cfg = study.compose("ntk_regimes", [
        "logger=none", "ntk_regimes.dims=[3]", "ntk_regimes.seeds=[0]", "ntk_regimes.n_train=40",
        "ntk_regimes.n_test=60", "ntk_regimes.activations=[relu,hermite_2,opt3]", "ntk_regimes.depths=[1,4,60]",
        "ntk_regimes.extra_depths.relu=[100]", "ntk_regimes.exact_max_depth=4", "ntk_regimes.grid_size=2048",
    ])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    assert cfg.entry == "actsparse.experiments.ntk_regimes.run"
    result = ntk_regimes.run(cfg)
    assert 0.0 <= result["dim3/opt3/deep_acc"] <= 1.0
    data = json.loads((tmp_path / "results.json").read_text())
    limit = {r["activation"]: r for r in data["tables"][next(k for k in data["tables"] if k.startswith("Deep limit"))]}
    assert set(limit) == {"relu", "hermite_2", "opt3", "sine_2.676"}
    assert limit["hermite_2"]["agree 1-NN"] == 1.0  # the 1-NN regime, already at depth 60
    assert (tmp_path / "ntk_regimes.png").stat().st_size > 0
    assert "Deep limit" in (tmp_path / "results.md").read_text()
