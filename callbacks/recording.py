"""The shared core of the monitors that measure site activations over the training forwards:
they hold torchmetrics metrics (:mod:`actsparse.metrics`) and feed them from a site
:class:`~actsparse.plugins.recording.Recording`, so the values they log are the metrics' values
(synchronized over DDP processes by torchmetrics)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from torchmetrics import Metric
from typing_extensions import override

from actsparse.callbacks.history import Curves
from actsparse.metrics.sparsity import MEAN
from actsparse.plugins.recording import Recording


class TrainingRecorder(Callback, ABC):
    """Attaches a :class:`Recording` of ``sites`` for ``fit``, enabled only inside training
    batches (validation forwards are not counted), whose observer feeds every metric that
    :meth:`_metrics` builds (one stream per site, named by the site).

    ``sites`` selects activation sites as everywhere in actsparse: None for all, or glob
    pattern(s) on site names. Subclasses build their metrics in :meth:`_metrics`, read them with
    ``compute()`` (a collective: every rank calls it at the same step), record
    ``(step or epoch, values)`` in ``self.history`` (:class:`~actsparse.callbacks.history.Curves`,
    kept in checkpoints; ``self.last`` is its latest row) and draw it with :meth:`_write_heatmap`.
    """

    def __init__(self, sites: str | Sequence[str] | None = None, every_n_steps: int | None = None) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 (or None), got {every_n_steps}.")
        self.sites = sites if sites is None or isinstance(sites, str) else list(sites)
        self.every_n_steps = every_n_steps
        self.recording: Recording | None = None
        self.metrics: list[Metric] = []
        self.history = Curves()
        self._last_step = -1

    @property
    def last(self) -> dict[str, float]:
        """The latest measured values (empty before the first)."""
        return self.history.last

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(sites=self.sites, every_n_steps=self.every_n_steps)

    @abstractmethod
    def _metrics(self, names: list[str]) -> list[Metric]:
        """The metrics this monitor feeds, one stream per site name (subclasses define them)."""

    def _observe(self, site, tensor) -> None:
        for metric in self.metrics:
            metric.update(tensor, name=site.name)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.recording is None:
            self.recording = Recording(pl_module, self.sites, what=(), observers=[self._observe]).attach()
            self.recording.enabled = False
            self.metrics = [m.to(pl_module.device) for m in self._metrics(list(self.recording))]

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

    @staticmethod
    def _values(metric: Metric, prefix: str) -> dict[str, float]:
        """``{prefix/<site>: value, prefix/mean: pooled}`` of a per-site metric, synchronized over
        processes (a collective); empty when nothing was recorded on any process."""
        try:
            values = metric.compute()
        except RuntimeError:  # no process recorded anything (raised after the sync, on every rank)
            return {}
        return {f"{prefix}/{name}": float(v) for name, v in values.items()}

    def _write_heatmap(self, trainer: L.Trainer, keys: Sequence[str], labels: Sequence[str], filename: str,
                       wandb_key: str, title: str, xlabel: str) -> None:
        """Site x history heatmap of ``keys`` into the run directory, and to W&B when attached."""
        from actsparse.report import plot_heatmap  # matplotlib only when a heatmap is drawn

        columns = [x for x, _ in self.history]
        grid = [[values.get(key, float("nan")) for _, values in self.history] for key in keys]
        path = plot_heatmap(grid, labels, columns, Path(trainer.default_root_dir) / filename, title=title,
                            xlabel=xlabel)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=wandb_key, images=[str(path)], step=trainer.global_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.state()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = Curves(state_dict["history"])


__all__ = ["MEAN", "TrainingRecorder"]
