"""ActivationSwap: replace site activations when fit/validate/test sets up (ProSparse step 1)."""

from __future__ import annotations

from typing import Any, Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from actsparse.plugins.swap import SwapReport, swap_activation


class ActivationSwap(Callback):
    """Swap the activation of every selected site at ``setup``, i.e. before Lightning loads
    checkpoint weights, so resuming a swapped run restores into the swapped model.

    Args:
        activation: ``"relu"`` (ProSparse step 1), ``"fatrelu"``, ``"silu"``, ``"gelu"``, a module
            or a factory (see :func:`actsparse.plugins.swap_activation`).
        threshold: FATReLU threshold (``activation="fatrelu"`` only).
        sites: None (all sites), glob pattern(s) on site names (as seen from the LightningModule,
            e.g. ``"model.blocks.*"``).

    Example:
        >>> ActivationSwap("relu").state_key
        "ActivationSwap{'activation': 'relu', 'threshold': None, 'sites': None}"
    """

    def __init__(self, activation: Any = "relu", threshold: float | None = None,
                 sites: str | Sequence[str] | None = None) -> None:
        self.activation, self.threshold = activation, threshold
        self.sites = sites if sites is None or isinstance(sites, str) else list(sites)
        self.report: SwapReport | None = None

    @property
    @override
    def state_key(self) -> str:
        activation = self.activation if isinstance(self.activation, str) else repr(self.activation)
        return self._generate_state_key(activation=activation, threshold=self.threshold, sites=self.sites)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.report = swap_activation(pl_module, self.activation, threshold=self.threshold, sites=self.sites)
        rank_zero_info(str(self.report))
