"""Loggers that continue a resumed run: the same W&B run (its id kept in the run folder) and the
same CSV file (the rows up to the checkpoint kept, those of the interrupted part redone)."""

from __future__ import annotations

import csv
import secrets
import string
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig, open_dict
from typing_extensions import override

WANDB_ID_FILE = "wandb_run_id"  # the run's W&B id, so a resume continues the same W&B run


def _targets(node: Any, cls: type) -> bool:
    """True when the config node builds ``cls`` or a subclass of it."""
    if not (isinstance(node, DictConfig) and node.get("_target_")):
        return False
    from hydra.utils import get_class

    try:
        return issubclass(get_class(str(node._target_)), cls)
    except Exception:  # not a class (a factory function), or not importable: Hydra reports it later
        return False


def assign_wandb_run_id(cfg: DictConfig, out_dir: Path, resuming: bool) -> None:
    """Give each W&B logger of the run its id: the stored one when resuming (the same W&B run
    continues), a new one otherwise, kept in ``<run>/wandb_run_id``. An id set in the config wins."""
    nodes = [n for n in (cfg.get("logger") or {}).values() if _targets(n, WandbLogger)]
    if not nodes or any(n.get("id") for n in nodes):
        return
    id_file = out_dir / WANDB_ID_FILE
    if resuming and id_file.is_file() and id_file.read_text().strip():
        run_id = id_file.read_text().strip()
    else:
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's form
        id_file.write_text(run_id + "\n")
    with open_dict(cfg):
        for node in nodes:
            node.id = run_id
            node.resume = "allow"


def finish_wandb(loggers: list[Any]) -> None:
    """Close the W&B run so the next job of an in-process multirun starts a new one."""
    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()


def latest_version(root: str | Path) -> int | None:
    """The highest ``N`` of the ``version_N`` folders under ``root`` (None when there is none)."""
    versions = [int(p.name.split("_", 1)[1]) for p in Path(root).glob("version_*")
                if p.name.split("_", 1)[1].isdigit()]
    return max(versions) if versions else None


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` that can continue the log of a run resumed at ``resume_step``.

    With ``resume_step`` and no ``version``, it writes into the latest existing ``version_N``
    (Lightning's default would open a new ``version_N+1``), and keeps the rows of that
    ``metrics.csv`` logged before ``resume_step``; the rows of the interrupted part after the
    checkpoint are dropped, because the resumed run logs them again. Without ``resume_step`` it
    is ``CSVLogger``.

    Example:
        >>> import tempfile
        >>> ResumableCSVLogger(tempfile.mkdtemp(), name="csv").version
        0
    """

    def __init__(self, save_dir: str | Path, name: str | None = "lightning_logs", version: int | str | None = None,
                 prefix: str = "", flush_logs_every_n_steps: int = 100, resume_step: int | None = None) -> None:
        root = Path(save_dir) / (name or "")
        if resume_step is not None and version is None:
            version = latest_version(root)
        super().__init__(save_dir, name=name, version=version, prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)
        self.resume_step = resume_step
        # Read now: the writer Lightning creates on first use replaces the file.
        self.kept_rows = self._rows_before(resume_step) if resume_step is not None else []
        self._rows_restored = False

    def _rows_before(self, step: int) -> list[dict[str, str]]:
        metrics = Path(self.log_dir) / "metrics.csv"
        if not metrics.is_file():
            return []
        with open(metrics, newline="") as f:
            return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)
                    if row.get("step", "").isdigit() and int(row["step"]) < step]

    @property
    @override
    @rank_zero_experiment
    def experiment(self) -> Any:
        writer = super().experiment
        if not self._rows_restored:
            self._rows_restored = True
            for row in self.kept_rows:
                writer.log_metrics({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))
        return writer


def resume_overrides(node: DictConfig, resume_step: int | None) -> dict[str, Any]:
    """``instantiate`` arguments that make a CSV logger node (Lightning's ``CSVLogger`` or
    :class:`ResumableCSVLogger`) continue the run at ``resume_step``; none for other nodes."""
    if resume_step is None or not _targets(node, CSVLogger):
        return {}
    resumable = f"{ResumableCSVLogger.__module__}.{ResumableCSVLogger.__qualname__}"
    if _targets(node, ResumableCSVLogger):
        return {"resume_step": int(resume_step)}
    if str(node._target_).rsplit(".", 1)[-1] != "CSVLogger":
        return {}  # a user's own CSVLogger subclass: not ours to replace
    return {"_target_": resumable, "resume_step": int(resume_step)}
