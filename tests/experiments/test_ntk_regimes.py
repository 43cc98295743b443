"""experiment=ntk_regimes on the study engine, end to end through the CLI at tiny sizes: every grid
point is one fit(cfg) whose KernelRegimes callback measures the kernel predictors vs depth, and
StudyReport turns the jobs into the table and the agreement-vs-depth curves. A key changed on the
command line changes what runs."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

TINY = ["data.n_train=60", "data.n_test=80", "seed=0", "callbacks.kernel_regimes.grid_size=1024",
        "callbacks.kernel_regimes.depths=[1,5,60]", "callbacks.kernel_regimes.exact_max_depth=5"]


def _study(tmp_path, overrides):
    sweep = tmp_path / "sweep"
    proc = run_cli(["experiment=ntk_regimes", f"hydra.sweep.dir={sweep}", *TINY, *overrides], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep, json.loads((sweep / "results.json").read_text())


def _series(job, key):
    return [v for _, v in job["summary"]["history"][key]]


def test_ntk_regimes_table_and_curves_come_from_the_jobs_histories(tmp_path):
    sweep, results = _study(tmp_path, ["model.activation=hermite_2,opt2", "callbacks.kernel_regimes.kind=nngp",
                                       "callbacks.kernel_regimes.depths=[1,5,60,1200]"])
    jobs = {j["overrides"]["model.activation"]: j for j in results["jobs"]}
    assert set(jobs) == {"hermite_2", "opt2"}
    # x = depth, one row per depth; hermite_2's log|Sigma| = 2^L log(xi) leaves float64 before 1200
    assert _series(jobs["opt2"], "kernel/depth") == [1, 5, 60, 1200]
    assert _series(jobs["hermite_2"], "kernel/depth") == [1, 5, 60]
    for job in jobs.values():
        assert job["summary"]["steps"] == 0  # nothing trained
        assert set(_series(job, "kernel/is_ntk")) == {0}
    assert _series(jobs["hermite_2"], "kernel/agree_1nn")[-1] == 1.0  # a'(0) = 0: the 1-NN regime
    (table,) = [rows for title, rows in results["tables"].items() if title.startswith("Deep kernel")]
    assert [r["run"] for r in table] == ["d=2 · hermite_2 · NNGP", "d=2 · opt2 · NNGP"]
    assert table[0]["agree 1-NN"] == "1" and table[0]["depth"] == "60"  # the column: the deepest depth
    curve = next(rows for title, rows in results["tables"].items() if title.startswith("agree_singular:"))
    assert [r["kernel/depth (d=2 · opt2 · NNGP)"] for r in curve] == ["1", "5", "60", "1200"]
    assert curve[-1]["kernel/agree_singular (d=2 · hermite_2 · NNGP)"] == "–"  # the shorter series
    for name in ("agree_singular", "agree_1nn", "agree_majority", "agree_bayes", "accuracy"):
        assert (sweep / f"{name}.png").is_file()


@pytest.mark.parametrize("kind, expected", [("authors", {"relu": 1.0, "opt2": 0.0}), ("ntk", {"relu": 1.0, "opt2": 1.0})])
def test_ntk_regimes_kind_key_picks_the_kernel(tmp_path, kind, expected):
    """kind=authors runs the NNGP for opt2 and the NTK for ReLU (the authors' main.py); kind=ntk the NTK for both."""
    _, results = _study(tmp_path, ["model.activation=relu,opt2", f"callbacks.kernel_regimes.kind={kind}",
                                   "data.dim=3"])
    ran = {j["overrides"]["model.activation"]: _series(j, "kernel/is_ntk")[-1] for j in results["jobs"]}
    assert ran == expected
    assert all(j["summary"]["history"]["kernel/depth"][-1][1] == 60 for j in results["jobs"])
    config = (tmp_path / "sweep" / "0" / ".hydra" / "config.yaml").read_text()
    assert "dim: 3" in config and f"kind: {kind}" in config
