"""The tuning stage of ``experiment=dendrites``: pick each model arm's learning rate and epochs per
task from a finished ``actsparse-train experiment=dendrites_tune`` multirun, by validation only.

Every arm gets the same search (the tuning grid), and the same rule: the grid point with the best
mean final validation accuracy over the tuning seeds (``cl/val/final_mean_acc``, logged by
``ContinualEvaluation(split="val")``). Only ``cl/val/*`` values are read; a tuning job that logged
anything under a test key is refused, since it would mean test data was touched.

    python -m actsparse.experiments.dendrites outputs/dendrites_tune/multiruns/<time> [<more sweeps>]

(several sweep folders when the grid was split, e.g. one ``model.arm=...`` per process) writes
the picks to ``conf/dendrites_picks/dendrites_tuned.yaml`` (``--out`` to write elsewhere), which
``experiment=dendrites`` reads per arm.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from actsparse.experiments.study_report import (
    Job,
    final_value,
    group_jobs,
    read_jobs,
    t_interval,
)

log = logging.getLogger(__name__)

SELECT_BY = "cl/val/final_mean_acc"
SEARCHED = {"lr": "task.lr", "epochs_per_task": "data.epochs_per_task"}
PICKS_FILE = Path(__file__).resolve().parents[2] / "conf" / "dendrites_picks" / "dendrites_tuned.yaml"


def touched_test(job: Job) -> list[str]:
    """Keys of a job's summary or history that come from the test split."""
    keys = set(job.summary) | set(job.summary.get("history", {}))
    return sorted(k for k in keys if k.startswith(("test/", "cl/test/")))


def pick_by_validation(jobs: Sequence[Job], select_by: str = SELECT_BY) -> dict[str, dict[str, Any]]:
    """Per ``model.arm``: the searched values (``lr``, ``epochs_per_task``) whose jobs have the best
    mean ``select_by`` (a ``cl/val/`` key), with that mean, its 95% interval and the seed count.
    Ties go to the point seen first in the grid."""
    if not select_by.startswith("cl/val/"):
        raise ValueError(f"Tuning selects by validation values (cl/val/...), got {select_by!r}.")
    for job in jobs:
        bad = touched_test(job)
        if bad:
            raise ValueError(f"Tuning job {job.folder} logged test values {bad[:3]}: tuning must not read "
                             "the test split (run it with callbacks.continual.split=val, test_after_fit=false).")
    rows = ["model.arm", *SEARCHED.values()]
    groups = group_jobs(jobs, rows)
    counts: dict[str, set[int]] = {}
    for group in groups:
        counts.setdefault(group.key[0], set()).add(len(group.jobs))
    uneven = {arm: sorted(c) for arm, c in counts.items() if len(c) > 1}
    if uneven:
        raise ValueError(f"Tuning points have unequal seed counts {uneven}: the search is incomplete (a job failed or "
                         "was cut short); rerun the missing points or pass every sweep folder.")
    picks: dict[str, dict[str, Any]] = {}
    for group in groups:
        arm, *values = group.key
        mean, half = t_interval([final_value(job, select_by) for job in group.jobs])
        if math.isnan(mean):  # no job measured it
            continue
        if arm not in picks or mean > picks[arm]["val"]:
            picks[arm] = {**{name: _number(v) for name, v in zip(SEARCHED, values)},
                          "val": mean, "val_interval": half, "seeds": len(group.jobs)}
    return picks


def _number(text: str) -> int | float:
    return int(text) if text.strip().isdigit() else float(text)


def picks_yaml(picks: dict[str, dict[str, Any]], source: str) -> str:
    """The picks as the ``dendrites_picks`` config file (``dendrites.picks.<arm>.{lr, epochs_per_task}``)."""
    lines = ["# @package _global_",
             "# Per model arm: the learning rate and epochs per task experiment=dendrites trains with, picked by",
             "# best mean final VALIDATION accuracy over the tuning seeds (python -m actsparse.experiments.dendrites).",
             f"# Source: {source}",
             "dendrites:", "  picks:"]
    for arm, pick in picks.items():
        lines.append(f"    {arm}: {{lr: {pick['lr']!r}, epochs_per_task: {pick['epochs_per_task']}}}"
                     f"   # val {100 * pick['val']:.1f} ± {100 * pick['val_interval']:.1f}% over {pick['seeds']} seeds")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """``python -m actsparse.experiments.dendrites <tuning sweep dir>... [--out FILE]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dirs", type=Path, nargs="+", help="folders of finished experiment=dendrites_tune multiruns")
    parser.add_argument("--out", type=Path, default=PICKS_FILE, help="picks file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    jobs = [job for sweep in args.sweep_dirs for job in read_jobs(sweep)]
    if not jobs:
        parser.error(f"{[str(d) for d in args.sweep_dirs]} hold no finished job (no <job>/summary.json): give "
                     "tuning sweep folders.")
    picks = pick_by_validation(jobs)
    args.out.write_text(picks_yaml(picks, " ".join(str(d) for d in args.sweep_dirs)))
    for arm, pick in picks.items():
        log.info("%s: lr %s, %s epochs per task (val %.1f ± %.1f%%)", arm, pick["lr"], pick["epochs_per_task"],
                 100 * pick["val"], 100 * pick["val_interval"])
    log.info("Picks written to %s", args.out)
    return picks


if __name__ == "__main__":
    main()
