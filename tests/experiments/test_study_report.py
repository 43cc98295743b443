"""The study engine's aggregation: job folders of a multirun -> one table and its figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from actsparse.experiments.study_report import (
    aligned_series,
    curve_points,
    group_jobs,
    read_jobs,
    report,
    t_interval,
)


def _job(sweep: Path, num: int, overrides: list[str], summary: dict | None) -> Path:
    folder = sweep / str(num)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def _sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    accs = {("mlp", "0"): 0.90, ("mlp", "1"): 0.94, ("cnn", "0"): 0.80, ("cnn", "1"): 0.86}
    for num, ((model, seed), acc) in enumerate(accs.items()):
        history = {"prune/remaining": [[10, 1.0], [20, 0.8], [30, 0.64]],
                   "val/acc": [[10, acc], [20, acc - 0.01], [25, 0.5], [30, acc - 0.02]]}
        _job(sweep, num, [f"model={model}", f"seed={seed}"], {"test/acc": acc, "history": history})
    return sweep


def test_t_interval_matches_the_textbook_formula():
    # n = 3, mean 2, sample sd 1: half-width = t_{0.975, 2} * 1 / sqrt(3), t = 4.302652729911275.
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.302652729911275 / math.sqrt(3), rel=1e-9)
    assert t_interval([5.0]) == (5.0, 0.0)
    assert all(math.isnan(v) for v in t_interval([]))


def test_jobs_group_by_the_row_keys_and_seeds_are_repeats(tmp_path):
    jobs = read_jobs(_sweep(tmp_path))
    groups = group_jobs(jobs, ["model"], {"model": {"mlp": "MLP"}})
    assert [g.label for g in groups] == ["MLP", "cnn"]
    assert [[j.overrides["seed"] for j in g.jobs] for g in groups] == [["0", "1"], ["0", "1"]]
    with pytest.raises(ValueError, match="not swept over"):
        group_jobs(jobs, ["width"])


def test_series_pair_at_equal_steps_only(tmp_path):
    job = read_jobs(_sweep(tmp_path))[0]
    # val/acc at step 25 has no prune/remaining beside it: left out.
    assert aligned_series(job, "prune/remaining", "val/acc") == [(1.0, 0.90), (0.8, 0.89), (0.64, 0.88)]
    points = curve_points(group_jobs([job], ["model"])[0], "prune/remaining", "val/acc")
    assert [p[:2] for p in points] == [(1.0, 0.90), (0.8, pytest.approx(0.89)), (0.64, pytest.approx(0.88))]


def test_report_writes_the_table_with_intervals_and_figures(tmp_path):
    sweep = _sweep(tmp_path)
    _job(sweep, 9, ["model=mlp", "seed=2"], None)  # a failed job: named in the log, left out
    study = {"title": "T", "rows": ["model"], "columns": {"acc (%)": "test/acc"}, "scale": {"acc (%)": 100},
             "curves": {"accuracy": {"x": "prune/remaining", "y": "val/acc", "scale": 100}}}
    tables = report(sweep, study)
    row = tables["T"][0]
    mean, half = t_interval([0.90, 0.94])
    assert row["run"] == "mlp" and row["repeats"] == 2
    assert row["acc (%)"] == f"{100 * mean:.4g} ± {100 * half:.2g}"
    assert (sweep / "accuracy.png").stat().st_size > 0
    saved = json.loads((sweep / "results.json").read_text())
    assert len(saved["jobs"]) == 4 and "T" in saved["tables"]
    assert "| mlp |" in (sweep / "results.md").read_text()


def test_ignored_keys_show_as_a_dash_and_repeats_count_once(tmp_path):
    """study.ignores: a regime without a penalty ran once per lambda (Hydra's grid is Cartesian);
    its row has lambda "–" and each seed's repeat counts once, the reference job once in all."""
    sweep = tmp_path / "sweep"
    jobs = [(["callbacks=ref", "lam=1", "seed=0"], 1.0), (["callbacks=ref", "lam=2", "seed=0"], 1.0),
            (["callbacks=ref", "lam=1", "seed=1"], 1.0),
            (["callbacks=relu", "lam=1", "seed=0"], 0.90), (["callbacks=relu", "lam=2", "seed=0"], 0.90),
            (["callbacks=relu", "lam=1", "seed=1"], 0.80), (["callbacks=relu", "lam=2", "seed=1"], 0.80),
            (["callbacks=fixed", "lam=1", "seed=0"], 0.70), (["callbacks=fixed", "lam=2", "seed=0"], 0.60)]
    for num, (overrides, cos) in enumerate(jobs):
        _job(sweep, num, overrides, {"cos": cos})
    study = {"title": "T", "rows": ["callbacks", "lam"], "columns": {"cos": "cos"},
             "labels": {"lam": {"–": "none"}},
             "ignores": [{"where": {"callbacks": ["ref"]}, "keys": ["lam", "seed"]},
                         {"where": {"callbacks": "relu"}, "keys": ["lam"]}]}
    rows = {r["run"]: r for r in report(sweep, study)["T"]}
    assert list(rows) == ["ref · none", "relu · none", "fixed · 1", "fixed · 2"]
    assert [r["repeats"] for r in rows.values()] == [1, 2, 1, 1]
    mean, half = t_interval([0.90, 0.80])  # not over [0.9, 0.9, 0.8, 0.8]: that would narrow the interval
    assert rows["relu · none"]["cos"] == f"{mean:.4g} ± {half:.2g}"
    kept = [j["folder"].rsplit("/", 1)[-1] for j in json.loads((sweep / "results.json").read_text())["jobs"]]
    assert kept == ["0", "3", "5", "7", "8"]  # the first of each set of repeats, in job order
