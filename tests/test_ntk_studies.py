"""The issue-15 studies end to end at tiny sizes: experiment=ntk_regimes and experiment=ntk_finite."""

import json

from omegaconf import open_dict

from actsparse.experiments import ntk_finite, ntk_regimes, study


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


def test_ntk_finite_trains_mlps_and_compares_with_the_kernel_limit(tmp_path):
    cfg = study.compose("ntk_finite", [
        "logger=none", "ntk_finite.widths=[16]", "ntk_finite.depths=[2]", "ntk_finite.activations=[relu,opt3]",
        "data.n_train=60", "data.n_val=20", "data.n_test=50", "trainer.max_steps=5", "trainer.val_check_interval=5",
    ])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    assert cfg.model.in_features == cfg.data.dim == 3
    result = ntk_finite.run(cfg)
    assert set(result) == {"seconds", "relu/d2/w16/net_acc", "opt3/d2/w16/net_acc"}
    rows = next(iter(json.loads((tmp_path / "results.json").read_text())["tables"].values()))
    assert len(rows) == 2 and all(0.0 <= r["agree_kernel"] <= 1.0 for r in rows)
    assert rows[0]["bayes_acc"] == rows[1]["bayes_acc"] > 0.8  # same data for every net
