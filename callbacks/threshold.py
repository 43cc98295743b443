"""ThresholdShift: ReLU -> FATReLU(t) on every site (ProSparse step 3)."""

from __future__ import annotations

from typing import Any, Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from actsparse.plugins.activations import FATReLU
from actsparse.plugins.sites import resolve_sites
from actsparse.plugins.swap import swap_activation


class ThresholdShift(Callback):
    """Replace each site's ReLU by ``FATReLU(threshold)`` (``x if x >= t else 0``).

    Args:
        threshold: the activation threshold t (0.01 in the ProSparse paper).
        at: ``"fit_end"`` (after training: evaluation and later use see FATReLU) or an optimizer
            step: the shift happens before that step's forward and training continues with it.
        sites: None (all sites) or glob pattern(s) on site names seen from the LightningModule.

    Sites whose activation is not a ReLU (e.g. SiLU) are an error: shift after
    ``ActivationSwap("relu")``. Resuming past the shift step re-applies it at setup.

    Example:
        >>> ThresholdShift(0.01).at
        'fit_end'
    """

    def __init__(self, threshold: float, at: str | int = "fit_end", sites: str | Sequence[str] | None = None) -> None:
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}.")
        if at != "fit_end" and not (isinstance(at, int) and at >= 0):
            raise ValueError(f"at must be 'fit_end' or an optimizer step >= 0, got {at!r}.")
        self.threshold, self.at = float(threshold), at
        self.sites = sites if sites is None or isinstance(sites, str) else list(sites)
        self.shifted = False
        self._resume_shifted = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(threshold=self.threshold, at=self.at, sites=self.sites)

    def shift(self, pl_module: L.LightningModule) -> None:
        sites = resolve_sites(pl_module, self.sites)
        wrong = [f"{s.name} ({type(s.activation).__name__})" for s in sites
                 if not isinstance(s.activation, (nn.ReLU, FATReLU))]
        if wrong:
            raise TypeError(
                f"ThresholdShift turns ReLU into FATReLU, but these sites are not ReLU: {', '.join(wrong)}. "
                "Add ActivationSwap('relu') (ProSparse step 1) before it."
            )
        report = swap_activation(pl_module, "fatrelu", threshold=self.threshold, sites=sites)
        self.shifted = True
        rank_zero_info(str(report))

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if not self.shifted and isinstance(self.at, int) and trainer.global_step >= self.at:
            self.shift(pl_module)

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.shifted and self.at == "fit_end":
            self.shift(pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"shifted": self.shifted}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_shifted = bool(state_dict["shifted"])

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A checkpoint written after the shift: the rebuilt model has plain ReLU again.
        if self._resume_shifted and not self.shifted:
            self.shift(pl_module)
