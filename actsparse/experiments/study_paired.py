"""Paired comparisons for the study engine: one row value against the others, seed by seed.

Comparing means of a few seeds calls a winner even when the gap is inside the seed spread. When
two models ran on the same seeds (and the same everything else), their difference per seed is a
paired sample: a paired t-test and a Wilcoxon signed-rank test say whether the gap is more than
the noise. :class:`~actsparse.experiments.study_report.StudyReport` runs this when the study's
``study:`` block has a ``paired:`` entry::

    study:
      rows: [data.task, model]
      paired:
        key: model              # the row key whose values are compared
        against: skan_fit/skan  # the value compared with every other value of ``key``
        metric: test/rmse           # a summary key (its final value, as for columns)
        better: lower           # lower | higher
        alpha: 0.05             # a win or loss needs p < alpha (paired t-test)
        sets:                   # optional: "better than every member" counts
          every single-space KAN: [skan_fit/bspline, skan_fit/chebyshev]

(``metric``, not ``on``: YAML reads a bare ``on`` key as the boolean true.)

Two jobs pair when every override other than ``key`` is equal (the same seed and the same other
row values). Holm's correction over all comparisons of the table is reported beside the raw
p-values, since a study makes many comparisons at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actsparse.experiments.study_report import Job

log = logging.getLogger(__name__)


def paired_p_values(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided p-values of the paired t-test and the Wilcoxon signed-rank test of ``a - b``
    (nan where a test is undefined: fewer than 2 pairs, or all differences equal)."""
    from scipy.stats import ttest_rel, wilcoxon

    diffs = [x - y for x, y in zip(a, b)]
    if len(diffs) < 2 or all(d == diffs[0] for d in diffs):
        return float("nan"), float("nan")
    t_p = float(ttest_rel(a, b).pvalue)
    try:
        w_p = float(wilcoxon(a, b).pvalue)
    except ValueError:  # all differences zero
        w_p = float("nan")
    return t_p, w_p


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (nan stays nan and is not counted as a test)."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(order)
    adjusted = [float("nan")] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def _value(job: Job, key: str) -> float:
    from actsparse.experiments.study_report import final_value

    return final_value(job, key)


def _fmt_p(p: float) -> str:
    return "–" if math.isnan(p) else f"{p:.2g}"


def paired_tables(jobs: Sequence[Job], spec: Mapping[str, Any], rows: Sequence[str],
                  labels: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The per-comparison table and the win counts (see the module docstring for ``spec``)."""
    from actsparse.experiments.study_report import format_interval, t_interval

    labels = labels or {}
    missing = [k for k in ("key", "against", "metric") if k not in spec]
    if missing:
        raise ValueError(f"study.paired needs {missing} (it has {sorted(spec)}); e.g. "
                         "{key: model, against: <a value of model>, metric: test/rmse}.")
    key, against, metric = str(spec["key"]), str(spec["against"]), str(spec["metric"])
    better = str(spec.get("better", "lower"))
    if better not in ("lower", "higher"):
        raise ValueError(f"study.paired.better must be 'lower' or 'higher', got {better!r}.")
    alpha = float(spec.get("alpha", 0.05))
    sign = -1.0 if better == "lower" else 1.0  # sign * (a - b) > 0: `against` is better
    context_keys = [k for k in rows if k != key]
    values = list(dict.fromkeys(j.overrides.get(key) for j in jobs if key in j.overrides))
    if against not in values:  # e.g. a sweep narrowed on the command line: the other tables still come
        log.warning("study.paired.against=%r is not a value of %r in this multirun (values: %s): no paired "
                    "tables.", against, key, values)
        return {}
    name = lambda k, v: str(labels.get(k, {}).get(v, v))  # noqa: E731

    # pair key: every override but `key`; context: the other row keys' values
    cells: dict[tuple[tuple[str, ...], str], dict[tuple, float]] = {}
    for job in jobs:
        if key not in job.overrides:
            continue
        context = tuple(job.overrides.get(k, "") for k in context_keys)
        pair = tuple(sorted((k, v) for k, v in job.overrides.items() if k != key))
        cells.setdefault((context, job.overrides[key]), {})[pair] = _value(job, metric)
    contexts = list(dict.fromkeys(c for c, _ in cells))
    others = [v for v in values if v != against]

    results = []  # (context, other, n, diffs, wins, t_p, w_p)
    for context in contexts:
        mine = cells.get((context, against), {})
        for other in others:
            theirs = cells.get((context, other), {})
            common = [p for p in mine if p in theirs and not math.isnan(mine[p]) and not math.isnan(theirs[p])]
            if not common:
                continue
            a, b = [mine[p] for p in common], [theirs[p] for p in common]
            t_p, w_p = paired_p_values(a, b)
            diffs = [x - y for x, y in zip(a, b)]
            wins = sum(sign * d > 0 for d in diffs)
            results.append((context, other, len(common), diffs, wins, t_p, w_p))
    adjusted = holm([r[5] for r in results])

    def verdict(mean_diff: float, p: float) -> str:
        if math.isnan(p) or p >= alpha:
            return "tie"
        return "better" if sign * mean_diff > 0 else "worse"

    table, outcome = [], {}
    for (context, other, n, diffs, wins, t_p, w_p), h_p in zip(results, adjusted):
        mean, half = t_interval(diffs)
        row = {**{k: name(k, v) for k, v in zip(context_keys, context)}, "vs": name(key, other), "pairs": n,
               f"{metric}: {name(key, against)} − other": format_interval(mean, half, digits=3),
               f"seeds {name(key, against)} better": f"{wins}/{n}", "t-test p": _fmt_p(t_p),
               "Wilcoxon p": _fmt_p(w_p), "Holm p (t)": _fmt_p(h_p), "verdict": verdict(mean, t_p)}
        table.append(row)
        outcome[(context, other)] = (verdict(mean, t_p), verdict(mean, h_p), sign * mean > 0)

    counts = []
    n_ctx = len(contexts)
    for other in others:
        got = [outcome[(c, other)] for c in contexts if (c, other) in outcome]
        counts.append({"vs": name(key, other), "compared on": f"{len(got)}/{n_ctx}",
                       "mean better": sum(g[2] for g in got),
                       f"better (p < {alpha:g})": sum(g[0] == "better" for g in got),
                       f"worse (p < {alpha:g})": sum(g[0] == "worse" for g in got),
                       "tie": sum(g[0] == "tie" for g in got),
                       "better (Holm)": sum(g[1] == "better" for g in got),
                       "worse (Holm)": sum(g[1] == "worse" for g in got)})
    for set_name, members in (spec.get("sets") or {}).items():
        members = [str(m) for m in members]
        full = [c for c in contexts if all((c, m) in outcome for m in members)]
        counts.append({"vs": f"{set_name} (all of {len(members)})", "compared on": f"{len(full)}/{n_ctx}",
                       "mean better": sum(all(outcome[(c, m)][2] for m in members) for c in full),
                       f"better (p < {alpha:g})": sum(all(outcome[(c, m)][0] == "better" for m in members) for c in full),
                       f"worse (p < {alpha:g})": sum(any(outcome[(c, m)][0] == "worse" for m in members) for c in full),
                       "tie": "–",
                       "better (Holm)": sum(all(outcome[(c, m)][1] == "better" for m in members) for c in full),
                       "worse (Holm)": sum(any(outcome[(c, m)][1] == "worse" for m in members) for c in full)})
    title = f"{name(key, against)} vs each {key} on {metric}, paired over seeds"
    return {f"{title}: wins per comparison": counts, f"{title}: every comparison": table}
