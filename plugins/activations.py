"""Activation functions as swappable modules, and the one registry that names them.

Every place that turns a name (a config value, a callback argument) into an activation
module goes through :func:`make_activation`, so the list of valid names lives here only.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class FATReLU(nn.Module):
    """ReLU with an activation threshold (ProSparse step 3): ``x if x >= threshold else 0``.

    Example:
        >>> import torch
        >>> FATReLU(0.5)(torch.tensor([-1.0, 0.2, 0.5, 2.0]))
        tensor([0.0000, 0.0000, 0.5000, 2.0000])
    """

    def __init__(self, threshold: float = 0.0) -> None:
        super().__init__()
        if threshold < 0:
            raise ValueError(f"FATReLU threshold must be >= 0, got {threshold}.")
        self.threshold = float(threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # `where` rather than `x * mask` so that -inf/nan below the threshold become exact zeros.
        return torch.where(x >= self.threshold, x, torch.zeros((), dtype=x.dtype, device=x.device))

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"


_FACTORIES: dict[str, Callable[[float], nn.Module]] = {
    "relu": lambda threshold: nn.ReLU(),
    "fatrelu": lambda threshold: FATReLU(threshold),
    "silu": lambda threshold: nn.SiLU(),
    "gelu": lambda threshold: nn.GELU(),
}

ACTIVATIONS: tuple[str, ...] = tuple(_FACTORIES)


def make_activation(name: str, threshold: float = 0.0) -> nn.Module:
    """Build the activation module called ``name`` (one of :data:`ACTIVATIONS`).

    ``threshold`` is used by ``fatrelu`` only.

    Example:
        >>> make_activation("fatrelu", threshold=0.01)
        FATReLU(threshold=0.01)
    """
    key = str(name).lower()
    if key not in _FACTORIES:
        raise ValueError(
            f"Unknown activation {name!r}. Valid activations: {', '.join(ACTIVATIONS)}."
        )
    return _FACTORIES[key](threshold)
