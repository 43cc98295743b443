"""The shared core of callbacks that count site statistics over the training forwards only."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from typing_extensions import override

from actsparse.plugins.recording import Recording
from actsparse.report import plot_heatmap


class TrainingRecorder(Callback):
    """Attaches a :class:`Recording` of ``what`` for ``fit``, enabled only inside training batches
    (validation forwards are not counted), and reduces zero counts exactly over DDP ranks.

    Subclasses set ``what`` and read ``self.recording``; :meth:`_end_batch` says whether an
    optimizer step ended the batch, :meth:`_zero_fractions` turns per-site ``(zeros, entries)``
    into exact global fractions. They append ``(step or epoch, values)`` to ``self.history``
    (kept in checkpoints; ``self.last`` is its latest entry) and draw it with :meth:`_write_heatmap`.
    """

    what: tuple[str, ...] = ("zero_fraction",)

    def __init__(self, sites: str | Sequence[str] | None = None, every_n_steps: int | None = None) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 (or None), got {every_n_steps}.")
        self.sites = sites if sites is None or isinstance(sites, str) else list(sites)
        self.every_n_steps = every_n_steps
        self.recording: Recording | None = None
        self.history: list[tuple[int, dict[str, float]]] = []
        self.last: dict[str, float] = {}
        self._last_step = -1

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(sites=self.sites)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.recording is None:
            self.recording = Recording(pl_module, self.sites, what=self.what).attach()
            self.recording.enabled = False

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.recording is not None:
            self.recording.detach()
            self.recording = None

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.recording is not None:
            self.recording.enabled = True
            self._last_step = trainer.global_step

    def _end_batch(self, trainer: L.Trainer) -> bool:
        """Stop counting; True when an optimizer step ended this batch (not mid-accumulation)."""
        self.recording.enabled = False
        return trainer.global_step != self._last_step

    def _counts(self) -> list[tuple[int, int]]:
        """Per site, (exact zeros, entries) recorded since the last reset."""
        return [(r.zeros, r.elements) if r.calls else (0, 0) for r in self.recording.values()]

    def _zero_fractions(self, trainer: L.Trainer, pl_module: L.LightningModule,
                        counts: list[tuple[int, int]], prefix: str) -> dict[str, float]:
        """``{prefix/<site>: zeros/entries, prefix/mean: pooled}`` summed over ranks (a collective:
        every rank calls it at the same step). Empty when nothing was recorded."""
        totals = torch.tensor(counts, dtype=torch.float64, device=pl_module.device)
        totals = trainer.strategy.reduce(totals, reduce_op="sum").tolist()
        if not sum(n for _, n in totals):
            return {}
        values = {f"{prefix}/{name}": z / n for name, (z, n) in zip(self.recording, totals) if n}
        values[f"{prefix}/mean"] = sum(z for z, _ in totals) / sum(n for _, n in totals)
        return values

    def _write_heatmap(self, trainer: L.Trainer, keys: Sequence[str], labels: Sequence[str], filename: str,
                       wandb_key: str, title: str, xlabel: str) -> None:
        """Site x history heatmap of ``keys`` into the run directory, and to W&B when attached."""
        columns = [x for x, _ in self.history]
        grid = [[values.get(key, float("nan")) for _, values in self.history] for key in keys]
        path = plot_heatmap(grid, labels, columns, Path(trainer.default_root_dir) / filename, title=title,
                            xlabel=xlabel)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=wandb_key, images=[str(path)], step=trainer.global_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [(x, dict(values)) for x, values in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [(x, dict(values)) for x, values in state_dict["history"]]
        self.last = dict(self.history[-1][1]) if self.history else {}
