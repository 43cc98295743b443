"""A small reference CNN classifier for 8x8 digits.

Each activation is its own module (``nn.ReLU`` by default), so ``find_sites`` finds every conv
block as a bare activation site (one neuron per channel and position).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from actsparse.plugins.activations import make_activation


class CNN(nn.Module):
    """Conv blocks ``Conv3x3 -> activation -> MaxPool2`` then a linear head, for 8x8 digits.

    Accepts ``[B, 1, 8, 8]`` images or flat ``[B, 64]`` vectors (reshaped to ``image_size``).

    Example:
        >>> from actsparse.plugins import find_sites
        >>> cnn = CNN(channels=(8, 16))
        >>> [s.name for s in find_sites(cnn)]
        ['features.1', 'features.4']
        >>> cnn(torch.randn(3, 64)).shape
        torch.Size([3, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32),
        num_classes: int = 10,
        image_size: int = 8,
        activation: str = "relu",
        threshold: float = 0.0,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or min(channels) < 1 or image_size // 2 ** len(channels) < 1:
            raise ValueError(
                f"CNN needs 1 to {int(image_size).bit_length() - 1} positive conv widths for "
                f"{image_size}x{image_size} inputs (each block halves the size), got channels={channels}."
            )
        self._config = dict(in_channels=in_channels, channels=channels, num_classes=num_classes,
                            image_size=image_size, activation=activation, threshold=threshold)
        blocks: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            blocks += [nn.Conv2d(c_in, c, 3, padding=1), make_activation(activation, threshold), nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*blocks)
        side = image_size // 2 ** len(channels)
        self.head = nn.Linear(c_in * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            s = self._config["image_size"]
            x = x.view(x.shape[0], self._config["in_channels"], s, s)
        return self.head(self.features(x).flatten(1))

    def config_dict(self) -> dict[str, Any]:
        """Constructor arguments (plain types), enough to rebuild the model: ``CNN(**cfg)``."""
        return {"kind": "cnn", **self._config, "channels": list(self._config["channels"])}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
