"""The study engine's one aggregation: a Hydra callback that turns a multirun into its table and
figures.

A study is ``actsparse-train experiment=<name>``: the experiment file sets ``hydra.mode: MULTIRUN``
and a grid in ``hydra.sweeper.params``; every job is one ``fit(cfg)`` of the configured model,
data, task, callbacks and logger, and writes ``summary.json`` (final metrics and the logged
history, from the callbacks' and metrics' own state). At the end of the multirun,
:class:`StudyReport` reads every job's summary and the overrides that made it, groups the jobs by
the grid keys named in ``study.rows`` (the remaining keys, e.g. ``seed``, are repeats), and writes
``results.md``/``results.json`` (mean ± 95% t-interval over repeats) and one figure per
``study.curves`` entry into the sweep directory::

    study:
      title: IMP vs AP on digits
      rows: [model, callbacks.ap.ap_rate]        # grid keys that name a row
      labels: {callbacks.ap.ap_rate: {"0.0": IMP, "0.02": IMP + AP}}
      columns: {test acc: test/acc}              # table column -> summary key (final value)
      curves:                                    # figure -> logged series, y against x
        accuracy: {x: prune/remaining, y: val/acc, xscale: log, invert_x: true, scale: 100}
      plots:                                     # figure -> final values against a grid key
        vs_width: {x: model.width, y: {k-NN: test/knn_acc}, group: model.depth, xscale: log}
      paired: {key: model, against: cnn, metric: test/acc, better: higher}   # optional: per-seed paired
                                                 # tests and win counts (experiments/study_paired.py)
      ignores:                                   # optional: grid keys some jobs do not read
        - {where: {callbacks: [relu]}, keys: [prosparse.final_lambda]}

``study.ignores`` names grid keys that some jobs do not read (Hydra's grid is a Cartesian product,
so a regime without a penalty still runs once per lambda): the table shows those keys as "–" and
counts each repeat once (the job at the key's first value), so means and intervals are not skewed.

What a key of a YAML says is what runs: the job configs are the composed configs, nothing is
rebuilt in Python.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf

from actsparse.experiments.study_tables import log_to_wandb, write_results

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


@dataclass
class Job:
    """One finished job of a multirun: the grid values that made it and what it measured."""

    folder: Path
    overrides: dict[str, str]
    summary: dict[str, Any]

    def history(self, key: str) -> list[tuple[int, float]]:
        return [(int(s), float(v)) for s, v in self.summary.get("history", {}).get(key, [])]


@dataclass
class Group:
    """The jobs of one table row (same ``rows`` values), over repeats (e.g. seeds)."""

    key: tuple[str, ...]
    label: str
    jobs: list[Job] = field(default_factory=list)


def read_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every job folder of a multirun with a ``summary.json``, in job order. A job that failed
    (no summary) is named in the log and left out, so the others still make a table."""
    jobs = []
    for folder in sorted(Path(sweep_dir).iterdir(), key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)):
        overrides_file = folder / ".hydra" / "overrides.yaml"
        if not overrides_file.is_file():
            continue
        summary_file = folder / SUMMARY_FILE
        if not summary_file.is_file():
            log.warning("Study job %s has no %s (it failed or was interrupted); left out of the table.",
                        folder, SUMMARY_FILE)
            continue
        overrides = {}
        for item in OmegaConf.to_container(OmegaConf.load(overrides_file)):
            key, _, value = str(item).partition("=")
            overrides[key.lstrip("+~")] = value
        jobs.append(Job(folder, overrides, json.loads(summary_file.read_text())))
    return jobs


def ignored_keys(overrides: Mapping[str, str], ignores: Sequence[Mapping[str, Any]] | None) -> set[str]:
    """The grid keys that ``study.ignores`` says a job with these overrides does not read."""
    keys: set[str] = set()
    for rule in ignores or ():
        where = {k: [str(v) for v in (vs if isinstance(vs, (list, tuple)) else [vs])]
                 for k, vs in dict(rule.get("where") or {}).items()}
        if all(overrides.get(k) in vs for k, vs in where.items()):
            keys.update(rule.get("keys") or ())
    return keys


def without_ignored(jobs: Sequence[Job], ignores: Sequence[Mapping[str, Any]] | None) -> list[Job]:
    """Jobs with the keys they ignore (``study.ignores``) shown as "–", each repeat once: of jobs
    that differ only in ignored keys, the first (in job order, i.e. the grid's first values) stays."""
    kept, seen = [], set()
    for job in jobs:
        ignored = ignored_keys(job.overrides, ignores) & set(job.overrides)
        if not ignored:
            kept.append(job)
            continue
        overrides = {k: ("–" if k in ignored else v) for k, v in job.overrides.items()}
        key = tuple(sorted(overrides.items()))
        if key in seen:
            log.info("Study job %s repeats an earlier one but for %s (study.ignores): counted once.",
                     job.folder.name, ", ".join(sorted(ignored)))
            continue
        seen.add(key)
        kept.append(Job(job.folder, overrides, job.summary))
    return kept


def group_jobs(jobs: Sequence[Job], rows: Sequence[str], labels: Mapping[str, Mapping[str, str]] | None = None) -> list[Group]:
    """Jobs grouped by their values of the ``rows`` keys, in first-seen order."""
    labels = labels or {}
    groups: dict[tuple[str, ...], Group] = {}
    for job in jobs:
        missing = [k for k in rows if k not in job.overrides]
        if missing:
            raise ValueError(f"study.rows names {missing}, which job {job.folder.name} was not swept over "
                             f"(its overrides: {sorted(job.overrides)}). Name keys of hydra.sweeper.params.")
        key = tuple(job.overrides[k] for k in rows)
        if key not in groups:
            names = [str(labels.get(k, {}).get(v, v)) for k, v in zip(rows, key)]
            groups[key] = Group(key, " · ".join(names))
        groups[key].jobs.append(job)
    return list(groups.values())


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its two-sided t-interval (0 for one value, nan for none)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return float("nan"), float("nan")
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, 0.0
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return mean, float(t.ppf(0.5 + confidence / 2, len(vals) - 1)) * sd / math.sqrt(len(vals))


def format_interval(mean: float, half: float, scale: float = 1.0, digits: int = 4) -> str:
    if math.isnan(mean):
        return "–"
    if half == 0:
        return f"{mean * scale:.{digits}g}"
    return f"{mean * scale:.{digits}g} ± {half * scale:.2g}"


def final_value(job: Job, key: str) -> float:
    """A job's final value of ``key``: from its summary, else the last logged point of the series
    (e.g. ``dnr/mean``, logged by a callback each epoch), else nan."""
    if key in job.summary:
        return float(job.summary[key])
    points = job.history(key)
    return points[-1][1] if points else float("nan")


def final_table(groups: Sequence[Group], columns: Mapping[str, str], scale: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """One row per group: each column's final value, mean ± 95% interval over the group's jobs."""
    scale = scale or {}
    table = []
    for group in groups:
        row: dict[str, Any] = {"run": group.label, "repeats": len(group.jobs)}
        for title, key in columns.items():
            mean, half = t_interval([final_value(job, key) for job in group.jobs])
            row[title] = format_interval(mean, half, float(scale.get(title, 1.0)))
        table.append(row)
    return table


def aligned_series(job: Job, x: str, y: str) -> list[tuple[float, float]]:
    """``(x, y)`` at the steps where both series were logged (a series logged once per round or
    per validation pairs with the other's value at the same optimizer step)."""
    xs = dict(job.history(x))
    return [(xs[step], value) for step, value in job.history(y) if step in xs]


def curve_points(group: Group, x: str, y: str) -> list[tuple[float, float, float]]:
    """Per point index: mean x, mean y and the y interval half-width over the group's jobs."""
    series = [aligned_series(job, x, y) for job in group.jobs]
    n = min((len(s) for s in series), default=0)
    points = []
    for i in range(n):
        mx, _ = t_interval([s[i][0] for s in series])
        my, hy = t_interval([s[i][1] for s in series])
        points.append((mx, my, hy))
    return points


def curve_table(groups: Sequence[Group], spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The figure's numbers: one row per point index, one column per group."""
    scale = float(spec.get("scale", 1.0))
    per_group = {g.label: curve_points(g, spec["x"], spec["y"]) for g in groups}
    n = max((len(p) for p in per_group.values()), default=0)
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"point": i}
        for label, points in per_group.items():
            if i < len(points):
                mx, my, hy = points[i]
                row[f"{spec['x']} ({label})"] = f"{mx * scale:.4g}"
                row[f"{spec['y']} ({label})"] = format_interval(my, hy, scale)
            else:  # a shorter series (a kernel past float64 before the deepest depth): same columns, no value
                row[f"{spec['x']} ({label})"] = row[f"{spec['y']} ({label})"] = "–"
        rows.append(row)
    return rows


def plot_curve(groups: Sequence[Group], spec: Mapping[str, Any], path: Path, title: str = "") -> Path:
    from actsparse.report import figure, save_figure

    scale = float(spec.get("scale", 1.0))
    fig, ax = figure()
    for group in groups:
        points = curve_points(group, spec["x"], spec["y"])
        if not points:
            continue
        xs = [p[0] * scale for p in points]
        ys = [p[1] * scale for p in points]
        ax.plot(xs, ys, marker="o", ms=3, label=f"{group.label} (n={len(group.jobs)})")
        ax.fill_between(xs, [y - p[2] * scale for y, p in zip(ys, points)],
                        [y + p[2] * scale for y, p in zip(ys, points)], alpha=0.2)
    if spec.get("xscale"):
        ax.set_xscale(spec["xscale"])
    if spec.get("invert_x"):
        ax.invert_xaxis()
    ax.set_xlabel(spec.get("xlabel", spec["x"]))
    ax.set_ylabel(spec.get("ylabel", spec["y"]))
    ax.set_title(title or f"{spec['y']} vs {spec['x']} (mean ± 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_finals(groups: Sequence[Group], spec: Mapping[str, Any], path: Path, title: str = "") -> Path:
    """Final values against a grid key (``x``, e.g. ``model.width``), one panel per ``y`` entry
    (panel title -> summary key), one line per value of ``group`` (a grid key, optional): mean
    ± 95% interval over each row's repeats. For grids, where ``curves`` plot logged series."""
    from actsparse.report import figure, save_figure

    x_key, group_key = spec["x"], spec.get("group")
    ys = dict(spec["y"])
    scale = float(spec.get("scale", 1.0))
    fig, axes = figure(1, len(ys), figsize=(4 * len(ys), 3.6), squeeze=False)
    lines: dict[str, list[Group]] = {}
    for group in groups:
        overrides = group.jobs[0].overrides
        lines.setdefault(overrides.get(group_key, "") if group_key else "", []).append(group)
    for ax, (panel, key) in zip(axes[0], ys.items()):
        for line, members in lines.items():
            points = sorted((float(g.jobs[0].overrides[x_key]), *t_interval([final_value(j, key) for j in g.jobs]))
                            for g in members)
            xs, means, halves = zip(*points)
            ax.plot(xs, [m * scale for m in means], marker="o", ms=3, label=f"{group_key} {line}" if group_key else None)
            ax.fill_between(xs, [(m - h) * scale for m, h in zip(means, halves)],
                            [(m + h) * scale for m, h in zip(means, halves)], alpha=0.2)
        if spec.get("xscale"):
            ax.set_xscale(spec["xscale"])
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(spec.get("xlabel", x_key))
        ax.grid(alpha=0.3)
    if group_key:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(title or f"final values vs {x_key} (mean ± 95% CI)", fontsize=10)
    return save_figure(fig, path)


def report(sweep_dir: str | Path, study: Mapping[str, Any], config: DictConfig | None = None) -> dict[str, Any]:
    """Aggregate the multirun in ``sweep_dir`` as ``study`` (the experiment's ``study:`` block)
    says; write ``results.md``, ``results.json`` and the figures there, and log them to W&B when
    ``config`` has the wandb logger. Returns the tables."""
    sweep_dir = Path(sweep_dir)
    jobs = without_ignored(read_jobs(sweep_dir), study.get("ignores"))
    if not jobs:
        log.warning("No finished job in %s: no study table written.", sweep_dir)
        return {}
    groups = group_jobs(jobs, list(study.get("rows", [])), study.get("labels"))
    title = str(study.get("title", "Study"))
    tables: dict[str, list[dict[str, Any]]] = {}
    if study.get("columns"):
        tables[title] = final_table(groups, study["columns"], study.get("scale"))
    if study.get("paired"):
        from actsparse.experiments.study_paired import paired_tables

        tables.update(paired_tables(jobs, study["paired"], list(study.get("rows", [])), study.get("labels")))
    figures = {}
    for name, spec in (study.get("curves") or {}).items():
        tables[f"{name}: {spec['y']} vs {spec['x']}"] = curve_table(groups, spec)
        figures[name] = plot_curve(groups, spec, sweep_dir / f"{name}.png", spec.get("title", ""))
    for name, spec in (study.get("plots") or {}).items():  # final values against a grid key
        figures[name] = plot_finals(groups, spec, sweep_dir / f"{name}.png", spec.get("title", ""))
    payload = {"jobs": [{"folder": str(j.folder), "overrides": j.overrides, "summary": j.summary} for j in jobs]}
    write_results(sweep_dir, tables, payload, title=title)
    if config is not None:
        log_to_wandb(config, sweep_dir, figures=figures, tables=tables)
    return tables


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m actsparse.experiments.study_report <sweep dir>``: aggregate a finished (or
    partly finished) multirun again, with the ``study:`` block saved in its ``multirun.yaml``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    saved = args.sweep_dir / "multirun.yaml"
    if not saved.is_file():
        parser.error(f"{saved} does not exist: give the folder of a multirun (it holds multirun.yaml and one "
                     "folder per job).")
    config = OmegaConf.load(saved)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report(args.sweep_dir, OmegaConf.to_container(config.get("study") or {}, resolve=False))


class StudyReport(HydraCallback):
    """Hydra callback: at the end of a multirun, aggregate its jobs into the study's table and
    figures (:func:`report`, configured by the experiment's ``study:`` block)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        study = OmegaConf.to_container(config.get("study") or {}, resolve=True)
        sweep_dir = Path(config.hydra.sweep.dir)
        report(sweep_dir, study, config)
        log.info("Study results in %s: results.md, results.json", sweep_dir.absolute())


if __name__ == "__main__":
    main()
