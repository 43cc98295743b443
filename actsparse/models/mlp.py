"""A small reference MLP classifier for 8x8 digits (the CNN is in :mod:`actsparse.models.cnn`).

Each activation is its own module (``nn.ReLU`` by default), so ``find_sites`` finds every
hidden layer as a bare activation site and callbacks can record, swap or prune around them.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from actsparse.plugins.activations import make_activation


class MLP(nn.Module):
    """``depth`` hidden layers ``Linear -> activation`` of ``width`` units, then a linear head.

    Inputs with more than two dims (``[B, 1, 8, 8]`` images) are flattened.

    Args:
        widths: per-layer widths, overriding ``width``/``depth`` (e.g. ``[256, 64]``).

    Example:
        >>> from actsparse.plugins import find_sites
        >>> mlp = MLP(width=32, depth=2)
        >>> [s.name for s in find_sites(mlp)]
        ['layers.1', 'layers.3']
        >>> mlp(torch.randn(5, 64)).shape
        torch.Size([5, 10])
    """

    def __init__(
        self,
        in_features: int = 64,
        width: int = 128,
        depth: int = 2,
        num_classes: int = 10,
        activation: str = "relu",
        widths: Sequence[int] | None = None,
        threshold: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths] if widths is not None else [int(width)] * int(depth)
        if not widths or min(widths) < 1 or in_features < 1 or num_classes < 1:
            raise ValueError(
                f"MLP needs at least one hidden layer and positive sizes, got widths={widths}, "
                f"in_features={in_features}, num_classes={num_classes}."
            )
        self._config = dict(in_features=in_features, widths=widths, num_classes=num_classes,
                            activation=activation, threshold=threshold)
        layers: list[nn.Module] = []
        fan_in = in_features
        for w in widths:
            layers += [nn.Linear(fan_in, w), make_activation(activation, threshold)]
            fan_in = w
        layers.append(nn.Linear(fan_in, num_classes))
        self.layers = nn.Sequential(*layers)

    @property
    def widths(self) -> list[int]:
        return list(self._config["widths"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1) if x.dim() > 2 else x)

    def config_dict(self) -> dict[str, Any]:
        """Constructor arguments (plain types), enough to rebuild the model: ``MLP(**cfg)``."""
        return {"kind": "mlp", **self._config, "widths": list(self._config["widths"])}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_classifier(config: dict[str, Any]) -> nn.Module:
    """Rebuild an :class:`MLP` or :class:`~actsparse.models.cnn.CNN` from its ``config_dict()``."""
    from actsparse.models.cnn import CNN

    config = dict(config)
    kind = config.pop("kind", None)
    models = {"mlp": MLP, "cnn": CNN}
    if kind not in models:
        raise ValueError(f"Unknown classifier kind {kind!r}; expected one of {sorted(models)}.")
    return models[kind](**config)
