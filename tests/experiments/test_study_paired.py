"""StudyReport's paired comparison: pairs by seed, p-values against hand computations, win counts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from actsparse.experiments.study_paired import holm, paired_p_values, paired_tables
from actsparse.experiments.study_report import read_jobs, report


def _job(sweep: Path, num: int, overrides: list[str], summary: dict) -> None:
    folder = sweep / str(num)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / "summary.json").write_text(json.dumps(summary))


def test_paired_t_test_matches_the_textbook_formula():
    # differences 1, 2, 3, 6: mean 3, sd sqrt(14/3), t = 3 / (sd / 2) = 2.777..., df 3
    a, b = [2.0, 4.0, 6.0, 10.0], [1.0, 2.0, 3.0, 4.0]
    t = 3.0 / (math.sqrt(14.0 / 3.0) / 2.0)
    from scipy.stats import t as student

    t_p, w_p = paired_p_values(a, b)
    assert t_p == pytest.approx(2 * student.sf(t, 3), rel=1e-9)
    # Wilcoxon, n = 4, all differences positive: the exact two-sided p is 2 / 2^4
    assert w_p == pytest.approx(2 / 16)
    assert all(math.isnan(p) for p in paired_p_values([1.0, 2.0], [0.0, 1.0]))  # constant difference


def test_holm_adjusts_in_rank_order_and_stays_monotone():
    assert holm([0.01, 0.04, float("nan"), 0.03]) == pytest.approx([0.03, 0.06, float("nan"), 0.06], nan_ok=True)


def _sweep(tmp_path: Path) -> Path:
    """`new` beats `old` on every seed of task a (by 1.0 ± noise) and ties it on task b."""
    sweep = tmp_path / "sweep"
    num = 0
    for task in ("a", "b"):
        for seed in range(6):
            noise = 0.1 * ((seed * 7) % 5 - 2)
            for model, err in (("new", 1.0 + noise), ("old", 2.0 + noise * 1.5 if task == "a" else 1.0 - noise)):
                _job(sweep, num, [f"task={task}", f"model={model}", f"seed={seed}"], {"test/rmse": err})
                num += 1
    return sweep


def test_wins_count_only_significant_gaps(tmp_path):
    jobs = read_jobs(_sweep(tmp_path))
    tables = paired_tables(jobs, {"key": "model", "against": "new", "metric": "test/rmse"}, ["task", "model"],
                           {"model": {"new": "New"}})
    counts, rows = tables.values()
    assert [r["task"] for r in rows] == ["a", "b"]
    a, b = rows
    assert a["seeds New better"] == "6/6" and a["verdict"] == "better" and float(a["t-test p"]) < 1e-4
    assert b["verdict"] == "tie" and float(b["t-test p"]) > 0.05
    (old,) = counts
    # on b the mean of `new` is lower by chance (differences -0.4, 0, 0.4, -0.2, 0.2, -0.4): a win by
    # means, a tie by the test
    assert (old["mean better"], old["better (p < 0.05)"], old["tie"], old["worse (p < 0.05)"]) == (2, 1, 1, 0)
    # "higher is better" turns the win into a loss
    flipped = paired_tables(jobs, {"key": "model", "against": "new", "metric": "test/rmse", "better": "higher"},
                            ["task", "model"])
    assert next(iter(flipped.values()))[0]["worse (p < 0.05)"] == 1


def test_pairs_are_matched_by_seed_not_by_order(tmp_path):
    """Job order shuffled: the pairing must still use the seed (a perfect positive shift)."""
    sweep = tmp_path / "sweep"
    base = [3.0, 1.0, 4.0, 1.5, 5.0]
    order = [("new", s) for s in range(5)] + [("old", s) for s in reversed(range(5))]
    for num, (model, seed) in enumerate(order):
        _job(sweep, num, [f"model={model}", f"seed={seed}"], {"err": base[seed] + (0.0 if model == "new" else 1.0 + 0.01 * seed)})
    counts, rows = paired_tables(read_jobs(sweep), {"key": "model", "against": "new", "metric": "err"}, ["model"]).values()
    assert rows[0]["seeds new better"] == "5/5" and float(rows[0]["t-test p"]) < 1e-6


def test_sets_and_report_integration(tmp_path):
    sweep = _sweep(tmp_path)
    study = {"title": "T", "rows": ["task", "model"], "columns": {"rmse": "test/rmse"},
             "paired": {"key": "model", "against": "new", "metric": "test/rmse", "sets": {"all baselines": ["old"]}}}
    tables = report(sweep, study)
    counts = next(v for k, v in tables.items() if k.endswith("wins per comparison"))
    assert counts[-1]["vs"] == "all baselines (all of 1)" and counts[-1]["better (p < 0.05)"] == 1
    assert "every comparison" in (sweep / "results.md").read_text()
    with pytest.raises(ValueError, match=r"needs \['metric'\]"):
        paired_tables(read_jobs(sweep), {"key": "model", "against": "new", "on": "test/rmse"}, ["task", "model"])
    # a sweep narrowed to other values (e.g. on the command line) gets no paired tables, not an error
    assert paired_tables(read_jobs(sweep), {"key": "model", "against": "nope", "metric": "test/rmse"}, ["task", "model"]) == {}
