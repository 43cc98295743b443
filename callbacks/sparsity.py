"""SparsityMonitor: activation sparsity of the training forward passes, per site and overall."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from actsparse.plugins.recording import Recording
from actsparse.report import plot_heatmap


class SparsityMonitor(Callback):
    """Logs ``sparsity/<site>`` (fraction of exact zeros in the site tensor) and ``sparsity/mean``
    (zeros over entries pooled across sites, DESIGN §4) every ``every_n_steps`` optimizer steps.

    The values cover every training forward since the previous log (all micro-batches under
    gradient accumulation), summed over DDP ranks before dividing, so they are exact
    fractions of the global batch. Validation forwards are not counted. At the end of ``fit``,
    rank zero writes ``sparsity_heatmap.png`` (site x step) to the run directory and sends it to W&B.

    Example:
        >>> SparsityMonitor(every_n_steps=5).every_n_steps
        5
    """

    def __init__(self, sites: str | Sequence[str] | None = None, every_n_steps: int | None = None,
                 heatmap: bool = True, log: bool = True) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}.")
        self.sites = sites if sites is None or isinstance(sites, str) else list(sites)
        self.every_n_steps, self.heatmap, self.log = every_n_steps, heatmap, log
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
            self.recording = Recording(pl_module, self.sites, what="zero_fraction").attach()
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

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.recording is None:
            return
        self.recording.enabled = False
        stepped = trainer.global_step != self._last_step  # an optimizer step ended this batch
        every = self.every_n_steps or trainer.log_every_n_steps
        if stepped and trainer.global_step % every == 0:
            self._emit(trainer, pl_module)

    def _emit(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        records = list(self.recording.values())
        device = pl_module.device
        counts = torch.tensor([[r.zeros if r.calls else 0, r.elements] for r in records],
                              dtype=torch.float64, device=device)
        counts = trainer.strategy.reduce(counts, reduce_op="sum")  # exact global fractions
        self.recording.reset()
        if counts[:, 1].sum() == 0:
            return
        totals = counts.tolist()
        values = {r.site.name: z / n for r, (z, n) in zip(records, totals) if n}
        values["mean"] = sum(z for z, _ in totals) / sum(n for _, n in totals)
        self.last = values
        self.history.append((trainer.global_step, values))
        if self.log:
            for name, value in values.items():
                pl_module.log(f"sparsity/{name}", value, on_step=True, on_epoch=False)

    @override
    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.heatmap and self.history):
            return
        names = [k for k in self.history[-1][1] if k != "mean"]
        steps = [step for step, _ in self.history]
        grid = [[values.get(name, float("nan")) for _, values in self.history] for name in names]
        path = plot_heatmap(grid, names, steps, Path(trainer.default_root_dir) / "sparsity_heatmap.png",
                            title="Activation sparsity (fraction of zeros)", xlabel="optimizer step")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="sparsity/heatmap", images=[str(path)], step=trainer.global_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [(step, dict(values)) for step, values in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [(step, dict(values)) for step, values in state_dict["history"]]
