"""SparsityMonitor: activation sparsity of the training forward passes, per site and overall."""

from __future__ import annotations

from typing import Any, Sequence

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from actsparse.callbacks.recording import MEAN, TrainingRecorder
from actsparse.metrics.sparsity import ActivationSparsity


class SparsityMonitor(TrainingRecorder):
    """Logs ``sparsity/<site>`` (fraction of exact zeros in the site tensor) and ``sparsity/mean``
    (zeros over entries pooled across sites, DESIGN §4) every ``every_n_steps`` optimizer steps.

    The values are those of an :class:`~actsparse.metrics.ActivationSparsity` metric (one stream
    per site) fed from every training forward since the previous log (all micro-batches under
    gradient accumulation) and synchronized over DDP processes, so they are exact fractions of
    the global batch. Validation forwards are not counted. At the end of ``fit``, rank zero
    writes ``sparsity_heatmap.png`` (site x step) to the run directory and sends it to W&B.

    Example:
        >>> SparsityMonitor(every_n_steps=5).every_n_steps
        5
    """

    def __init__(self, sites: str | Sequence[str] | None = None, every_n_steps: int | None = None,
                 heatmap: bool = True, log: bool = True) -> None:
        super().__init__(sites, every_n_steps)
        self.heatmap, self.log = heatmap, log

    @override
    def _metrics(self, names: list[str]) -> list[ActivationSparsity]:
        return [ActivationSparsity(names)]

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.recording is None:
            return
        stepped = self._end_batch(trainer)
        every = self.every_n_steps or trainer.log_every_n_steps
        if stepped and trainer.global_step % every == 0:
            self._emit(trainer, pl_module)

    def _emit(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        (metric,) = self.metrics
        logged = self._values(metric, "sparsity")
        metric.reset()
        if not logged:
            return
        values = {key.removeprefix("sparsity/"): value for key, value in logged.items()}
        self.history.record(trainer.global_step, values)
        if self.log:
            for key, value in logged.items():
                pl_module.log(key, value, on_step=True, on_epoch=False)

    @override
    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.heatmap and self.history):
            return
        names = [k for k in self.history[-1][1] if k != MEAN]
        self._write_heatmap(trainer, names, names, "sparsity_heatmap.png", "sparsity/heatmap",
                            title="Activation sparsity (fraction of zeros)", xlabel="optimizer step")
