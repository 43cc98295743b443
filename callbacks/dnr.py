"""``DeadNeuronRate`` callback: dynamic dead neuron rate of the training forward passes."""

from __future__ import annotations

from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from actsparse.callbacks.recording import TrainingRecorder


class DeadNeuronRate(TrainingRecorder):
    """Dynamic dead neuron rate (DNR, DESIGN §4) per activation site and overall.

    DNR is the fraction of (sample, neuron) outputs of a site that are exactly zero in the
    training forward passes. At the end of every training epoch it logs, over all of that
    epoch's training forwards (every micro-batch, summed over DDP processes before dividing):

    - ``dnr/<site>`` and ``dnr/mean`` (zeros over entries pooled across sites);
    - ``dead/<site>``: neurons that were zero on every training sample of the epoch, on every
      process (a CNN site has one neuron per channel and position).

    With ``every_n_steps`` it also logs ``dnr_step/<site>`` and ``dnr_step/mean`` over the
    forwards since the previous step log. Validation forwards are not counted. At the end of
    ``fit``, rank zero writes ``dnr_heatmap.png`` (site x epoch) to the run directory and sends
    it to W&B. The per-epoch history is kept in checkpoints; counts of an epoch interrupted
    mid-way are not (a resumed epoch is measured from its restart).

    Example:
        >>> DeadNeuronRate(every_n_steps=10).every_n_steps
        10
    """

    what = ("zero_fraction", "neuron_counts")

    def __init__(self, sites: str | Sequence[str] | None = None, every_n_steps: int | None = None,
                 heatmap: bool = True, log: bool = True) -> None:
        super().__init__(sites, every_n_steps)
        self.heatmap, self.log = heatmap, log  # history: (epoch, {dnr/..., dead/...})
        self._step_base: list[tuple[int, int]] = []  # (zeros, elements) per site at the last step log

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.recording is not None:
            self.recording.reset()
            self._step_base = [(0, 0)] * len(self.recording)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.recording is None:
            return
        stepped = self._end_batch(trainer)
        if self.every_n_steps and stepped and trainer.global_step % self.every_n_steps == 0:
            self._emit_step(trainer, pl_module)

    def _emit_step(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = self._counts()
        delta = [(z - z0, n - n0) for (z, n), (z0, n0) in zip(now, self._step_base)]
        self._step_base = now
        values = self._zero_fractions(trainer, pl_module, delta, "dnr_step")
        if self.log:
            for key, value in values.items():
                pl_module.log(key, value, on_step=True, on_epoch=False)

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """This epoch's values so far, reduced over processes (all must call it together)."""
        records = list(self.recording.values())
        device = pl_module.device
        values = self._zero_fractions(trainer, pl_module, self._counts(), "dnr")
        if not values:
            return values
        for r in records:
            if f"dnr/{r.site.name}" not in values:  # no process ran this site
                continue
            if not r.calls:
                raise RuntimeError(
                    f"DeadNeuronRate: site {r.site.name!r} ran on another process but not on this one; "
                    "every process must run every site in an epoch to count dead neurons.")
            fired = r.neuron_counts.to(device=device, dtype=torch.float64)
            fired = trainer.strategy.reduce(fired, reduce_op="sum")
            values[f"dead/{r.site.name}"] = float((fired == 0).sum())
        return values

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.recording is None:
            return
        values = self.measure(trainer, pl_module)
        if not values:
            return
        self.last = values
        self.history.append((trainer.current_epoch, values))
        if self.log:
            for key, value in values.items():
                pl_module.log(key, value, on_step=False, on_epoch=True)

    @override
    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.heatmap and self.history):
            return
        names = [k for k in self.history[-1][1] if k.startswith("dnr/") and k != "dnr/mean"]
        self._write_heatmap(trainer, names, [n[4:] for n in names], "dnr_heatmap.png", "dnr/heatmap",
                            title="Dynamic dead neuron rate (fraction of zero outputs)", xlabel="epoch")
