"""``DeadNeuronMonitor``: dynamic dead neuron rate of the training forward passes."""

from __future__ import annotations

from typing import Any, Sequence

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from actsparse.callbacks.recording import MEAN, TrainingRecorder
from actsparse.metrics.sparsity import DeadNeuronRate


class DeadNeuronMonitor(TrainingRecorder):
    """Dynamic dead neuron rate (DNR, DESIGN §4) per activation site and overall.

    DNR is the fraction of (sample, neuron) outputs of a site that are exactly zero in the
    training forward passes. The values are those of a :class:`~actsparse.metrics.DeadNeuronRate`
    metric (one stream per site) fed from every training forward of the epoch (every
    micro-batch, synchronized over DDP processes). At the end of every training epoch it logs:

    - ``dnr/<site>`` and ``dnr/mean`` (zeros over entries pooled across sites);
    - ``dead/<site>``: neurons that were zero on every training sample of the epoch, on every
      process (a CNN site has one neuron per channel and position).

    With ``every_n_steps`` it also logs ``dnr_step/<site>`` and ``dnr_step/mean`` over the
    forwards since the previous step log. Validation forwards are not counted. At the end of
    ``fit``, rank zero writes ``dnr_heatmap.png`` (site x epoch) to the run directory and sends
    it to W&B. The per-epoch history is kept in checkpoints; counts of an epoch interrupted
    mid-way are not (a resumed epoch is measured from its restart).

    Example:
        >>> DeadNeuronMonitor(every_n_steps=10).every_n_steps
        10
    """

    def __init__(self, sites: str | Sequence[str] | None = None, every_n_steps: int | None = None,
                 heatmap: bool = True, log: bool = True) -> None:
        super().__init__(sites, every_n_steps)
        self.heatmap, self.log = heatmap, log  # history: (epoch, {dnr/..., dead/...})
        self._step_base: tuple | None = None  # the epoch metric's totals at the previous step log

    @override
    def _metrics(self, names: list[str]):
        return [DeadNeuronRate(names)]

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for metric in self.metrics:
            metric.reset()
        self._step_base = None

    def _step_values(self) -> dict[str, float]:
        """DNR of the forwards since the previous step log: a window of the epoch metric's counts
        (each activation is counted once, by the epoch metric)."""
        metric = self.metrics[0]
        totals = metric.totals()
        base = self._step_base
        inactive, entries = totals if base is None else (totals[0] - base[0], totals[1] - base[1])
        self._step_base = totals
        if not bool((entries > 0).any()):
            return {}
        return {f"dnr_step/{name}": float(v) for name, v in metric.value_of(inactive, entries).items()}

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.recording is None:
            return
        stepped = self._end_batch(trainer)
        if self.every_n_steps and stepped and trainer.global_step % self.every_n_steps == 0:
            values = self._step_values()
            if self.log:
                for key, value in values.items():
                    pl_module.log(key, value, on_step=True, on_epoch=False)

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """This epoch's values so far, synchronized over processes (all must call it together)."""
        metric: DeadNeuronRate = self.metrics[0]
        values = self._values(metric, "dnr")
        if not values:
            return values
        ran = [name for name in metric.names if f"dnr/{name}" in values]
        local = dict(zip(metric.names, (metric.entries > 0).tolist()))
        missing = [name for name in ran if not local[name]]
        if missing:
            raise RuntimeError(
                f"DeadNeuronMonitor: site {missing[0]!r} ran on another process but not on this one; "
                "every process must run every site in an epoch to count dead neurons.")
        values.update({f"dead/{name}": float(n) for name, n in metric.dead_neurons().items()})
        return values

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.recording is None:
            return
        values = self.measure(trainer, pl_module)
        if not values:
            return
        self.history.record(trainer.current_epoch, values)
        if self.log:
            for key, value in values.items():
                pl_module.log(key, value, on_step=False, on_epoch=True)

    @override
    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.heatmap and self.history):
            return
        names = [k for k in self.history[-1][1] if k.startswith("dnr/") and k != f"dnr/{MEAN}"]
        self._write_heatmap(trainer, names, [n[4:] for n in names], "dnr_heatmap.png", "dnr/heatmap",
                            title="Dynamic dead neuron rate (fraction of zero outputs)", xlabel="epoch")

