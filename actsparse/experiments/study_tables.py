"""What a study writes once its jobs are aggregated (:mod:`actsparse.experiments.study_report`):
markdown tables, ``results.md``/``results.json`` with the run metadata, and the W&B run."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

Rows = Sequence[Mapping[str, Any]]


def run_metadata(cfg: DictConfig | None = None) -> dict[str, Any]:
    """What a reader needs to compare runs: versions, machine, threads, commit, time, seed."""
    meta: dict[str, Any] = {
        "time": dt.datetime.now().isoformat(timespec="seconds"),
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


def jsonable(value: Any) -> Any:
    """``json.dumps(default=...)`` for tensors, paths and numpy scalars."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


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
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=jsonable) + "\n")
    return text


def loggable_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as W&B records it: without its ``hydra`` node, each interpolation resolved where
    it can be and kept as written where it cannot. At the end of a multirun the config names
    values that existed only inside the jobs (``hydra.job.num``, ``${hydra:runtime.output_dir}``:
    Hydra's per-job state is gone); resolving the whole config at once failed there."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    raw.pop("hydra", None)

    def resolve(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            return {k: resolve(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v, f"{path}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, str) and "${" in node:
            try:
                value = OmegaConf.select(cfg, path, throw_on_resolution_failure=True, throw_on_missing=True)
                return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            except Exception:  # any resolver's error: the reader still sees what the key said
                return node
        return node

    return resolve(raw, "")


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
                     dir=str(out), mode=os.environ["WANDB_MODE"], reinit=True, config=loggable_config(cfg))
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
