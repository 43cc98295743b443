"""The SDR theory study (experiment=sdr_theory) on the study engine at toy size: each job is one
test-only fit of SDRTheoryCheck on one figure (data=sdr_*); its logged agreement against the
Monte Carlo, its theory against big-integer sums written out here, and YAML keys changing what
runs."""

from __future__ import annotations

import json
from fractions import Fraction
from math import comb

import pytest
from conftest import run_cli
from omegaconf import open_dict

from actsparse.experiments import study
from actsparse.train import fit


def _job(tmp_path, overrides):
    cfg = study.compose("sdr_theory", ["logger=none", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    return fit(cfg)


def _false_match(n: int, a: int, s: int, theta: int) -> float:
    """Σ_{b ≥ θ} C(s, b) C(n - s, a - b) / C(n, a), exact (Ahmad & Hawkins 2016, eq. 4)."""
    return float(Fraction(sum(comb(s, b) * comb(n - s, a - b) for b in range(theta, min(s, a) + 1)), comb(n, a)))


def test_false_match_job_checks_the_theory_against_the_simulation(tmp_path):
    summary = _job(tmp_path, ["data=sdr_false_match", "data.ns=[1000,4000]", "data.trials=20000"])
    data = json.loads((tmp_path / "false_match.json").read_text())
    points = data["points"]
    assert summary["test/sdr/points"] == len(points) and summary["test/sdr/inside"] == sum(p["inside"] for p in points)
    assert summary["test/sdr/inside"] >= 0.9 * summary["test/sdr/points"]  # 99.9% intervals
    assert summary["steps"] == 0  # nothing trained
    for p in points:  # the theory each point was checked against, as big-integer sums
        n, theta = (int(part.split("=")[1]) for part in p["point"].split())
        assert p["theory"] == pytest.approx(_false_match(n, 128, 24, theta), rel=1e-9)
    # only points with >= 20 expected events: n=1000 reaches θ=10 (p=3.4e-4: 6.8 events at 20,000 trials) no further
    assert max(int(p["point"].split("θ=")[1]) for p in points if p["point"].startswith("n=1000 ")) == 9
    assert (tmp_path / "false_match.png").is_file()


def test_yaml_keys_change_what_the_job_measures(tmp_path):
    few = _job(tmp_path / "a", ["data=sdr_false_match", "data.ns=[1000]", "data.trials=20000"])
    more = _job(tmp_path / "b", ["data=sdr_false_match", "data.ns=[1000]", "data.trials=20000", "task.min_events=2000"])
    assert more["test/sdr/points"] < few["test/sdr/points"]  # a stricter measurability bar checks fewer points
    union = _job(tmp_path / "c", ["data=sdr_union", "data.ns=[1000]", "data.max_m=4", "data.trials=5000"])
    assert union["test/sdr/paper_points"] == union["test/sdr/points"] > 0  # both union formulas, same points


def test_sdr_grid_through_the_cli(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(["experiment=sdr_theory", f"hydra.sweep.dir={sweep}", "data=sdr_noise", "data.trials=5000",
                    "data.fp_trials=5000", "data.noise_step=0.1", "data.noise_levels=8", "logger=none"],
                   cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((sweep / "results.json").read_text())
    (table,) = results["tables"].values()
    (row,) = table
    assert row["run"] == "match vs noise" and row["optimal θ at 30% noise"] == "11"  # theory; the paper's 30% row
    assert (sweep / "0" / "noise.png").is_file()


def test_bad_settings_are_named():
    from actsparse.experiments.sdr_theory import SDRFigure, SDRTheoryCheck

    with pytest.raises(ValueError, match="data.figure must be one of"):
        SDRFigure("unions", a=200, s=25, trials=10, ns=[1000])
    with pytest.raises(ValueError, match="needs data.theta, data.max_m"):
        SDRFigure("union", a=200, s=25, trials=10, ns=[1000])
    with pytest.raises(ValueError, match="set model: null"):
        SDRTheoryCheck(model=object())
