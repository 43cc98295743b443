"""What every study shares: composing its config, its run folder and metadata, trainers built
from ``cfg.trainer``, result tables (printed, markdown, JSON) and its W&B run.

Every study is ``actsparse-train experiment=<name>``: the experiment file sets
``entry: actsparse.experiments.<name>.run`` and a config block of its own (``<name>:``); ``run(cfg)``
starts with :func:`prepare`, trains with :func:`trainer` (so ``trainer=gpu``/``ddp`` apply), and
ends with :func:`write_results`. ``python -m actsparse.experiments.<name> [overrides]`` is the
same run (:func:`alias_main`).
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import math
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import lightning as L
import torch
from hydra import compose as _compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

Rows = Sequence[Mapping[str, Any]]


_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")


def entry(run):
    """Decorator for a study's ``run(cfg)``: a study trains many small models, so Lightning's INFO
    lines and warnings are kept out of its output while it runs — and the logger levels and warning
    filters are restored afterwards (a study called in-process, from a notebook, a test or a
    multirun, leaves the caller's logging as it found it)."""

    @functools.wraps(run)
    def wrapped(cfg, *args, **kwargs):
        levels = {name: logging.getLogger(name).level for name in _LIGHTNING_LOGGERS}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            for name in _LIGHTNING_LOGGERS[:2]:
                logging.getLogger(name).setLevel(logging.WARNING)
            try:
                return run(cfg, *args, **kwargs)
            finally:
                for name, level in levels.items():
                    logging.getLogger(name).setLevel(level)

    return wrapped


def compose(experiment: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``actsparse-train experiment=<experiment> <overrides>``'s config, composed in-process
    (tests, notebooks). ``paths.output_dir`` must be given or set afterwards (no Hydra run dir)."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="actsparse.conf", version_base="1.3"):
        return _compose("train", overrides=[f"experiment={experiment}", *overrides])


def run_metadata(cfg: DictConfig | None = None) -> dict[str, Any]:
    """What a reader needs to compare runs: versions, machine, threads, commit, time, seed."""
    meta: dict[str, Any] = {
        "time": _dt.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5)
        meta["commit"] = commit.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        meta["commit"] = None
    if cfg is not None:
        meta["seed"] = cfg.get("seed")
        meta["task_name"] = cfg.get("task_name")
    return meta


def prepare(cfg: DictConfig, threads: int | None = None) -> Path:
    """Start a study: create its run folder, write ``config_resolved.yaml`` and ``meta.json``,
    seed everything, optionally set torch's thread count. Returns the run folder."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(int(threads))
    (out / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (out / "meta.json").write_text(json.dumps(run_metadata(cfg), indent=2) + "\n")
    L.seed_everything(cfg.seed, workers=True)
    return out


def trainer(cfg: DictConfig, callbacks: Iterable[L.Callback] = (), **overrides: Any) -> L.Trainer:
    """A ``Trainer`` from ``cfg.trainer`` (accelerator, devices, strategy, precision follow the
    ``trainer=`` group), with the study's own settings in ``overrides``. Studies train many small
    models, so loggers, checkpoints and the model summary are off unless overridden."""
    settings: dict[str, Any] = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False}
    settings.update(overrides)
    return instantiate(cfg.trainer, callbacks=list(callbacks), **settings)


def with_values(cfg: DictConfig, **values: Any) -> DictConfig:
    """A copy of ``cfg`` with dotted keys set (``with_values(cfg, **{"model.width": 64})``)."""
    c = cfg.copy()
    with open_dict(c):
        for key, value in values.items():
            OmegaConf.update(c, key, value, merge=False)
    return c


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, sd


def format_cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(rows: Rows, columns: Sequence[str] | None = None) -> str:
    """Rows (dicts with the same keys) as a GitHub markdown table; numbers right-aligned."""
    if not rows:
        return ""
    columns = list(columns or rows[0])
    first = rows[0]
    align = ["---:" if isinstance(first.get(c), (int, float)) and not isinstance(first.get(c), bool) else "---"
             for c in columns]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join(align) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_results(out: str | Path, tables: Mapping[str, Rows], payload: Mapping[str, Any] | None = None,
                  title: str = "", name: str = "results") -> str:
    """Print each table, and write ``<name>.md`` (a section per table) and ``<name>.json``
    (``payload`` plus the tables and run metadata) into ``out``. Returns the markdown."""
    from actsparse.report import print_table  # rich, only when a study reports

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = [f"# {title}"] if title else []
    for table_title, rows in tables.items():
        if not rows:
            continue
        print_table(list(rows), title=table_title)
        sections.append(f"## {table_title}\n\n{markdown_table(rows)}")
    text = "\n\n".join(sections) + "\n"
    (out / f"{name}.md").write_text(text)
    meta_file = out / "meta.json"
    data = {**(payload or {}), "tables": {k: list(map(dict, v)) for k, v in tables.items()},
            "meta": json.loads(meta_file.read_text()) if meta_file.exists() else run_metadata()}
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def log_to_wandb(cfg: DictConfig, out: str | Path, figures: Mapping[str, str | Path] = (),
                 tables: Mapping[str, Rows] = (), summary: Mapping[str, Any] = ()) -> bool:
    """Log a study's figures and tables to one W&B run when the config has the wandb logger
    (offline unless ``WANDB_MODE`` says otherwise). Returns whether anything was logged."""
    logger_cfg = cfg.get("logger") or {}
    wandb_cfg = logger_cfg.get("wandb") if isinstance(logger_cfg, Mapping) else None
    if not wandb_cfg:
        return False
    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    run = wandb.init(project=wandb_cfg.get("project", "actsparse"), name=str(cfg.get("task_name")),
                     dir=str(out), mode=os.environ["WANDB_MODE"], reinit=True,
                     config=OmegaConf.to_container(cfg, resolve=True))
    try:
        for key, path in dict(figures).items():
            run.log({key: wandb.Image(str(path))})
        for key, rows in dict(tables).items():
            rows = list(rows)
            if rows:
                columns = list(rows[0])
                run.log({key: wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])})
        for key, value in dict(summary).items():
            run.summary[key] = value
    finally:
        run.finish()
    return True


def alias_main(experiment: str) -> None:
    """``python -m actsparse.experiments.<experiment> [overrides]`` = ``actsparse-train
    experiment=<experiment> [overrides]``."""
    from actsparse.cli import main

    sys.argv = [sys.argv[0], f"experiment={experiment}", *sys.argv[1:]]
    main()
