"""KAN / S-KAN / MLP regressors, pykan's ``KAN`` as a drop-in module, and S-ConvKAN / CNN digits classifiers.

Parameter matching for the S-KAN study: :func:`mlp_width_for` picks the hidden width of an MLP
whose parameter count is closest to a target (a KAN's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from actsparse.plugins.activations import make_activation
from actsparse.plugins.kan.conv import SKANConv2d
from actsparse.plugins.kan.layers import DEFAULT_SPACES, KANLinear, SKANLinear


def _widths(widths: Sequence[int]) -> list[int]:
    widths = [int(w) for w in widths]
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"widths must list at least an input and an output size, all >= 1; got {widths}.")
    return widths


class KAN(nn.Module):
    """A stack of KAN layers ``widths[0] -> widths[1] -> ... -> widths[-1]`` (KAN paper notation,
    e.g. ``[2, 5, 1]``). One space (``spaces="chebyshev"``) gives single-space :class:`KANLinear`
    layers; several give S-KAN layers (:class:`SKANLinear`) with a selection per node.

    Example:
        >>> KAN([2, 5, 1], spaces="fourier")(torch.randn(3, 2)).shape
        torch.Size([3, 1])
        >>> sum(p.numel() for p in KAN([2, 5, 1], spaces="bspline").parameters())
        156
    """

    def __init__(self, widths: Sequence[int] = (2, 5, 1), spaces: str | Sequence[str] = DEFAULT_SPACES,
                 basis_options: Mapping[str, Mapping[str, Any]] | None = None, bias: bool = True,
                 select: str = "outputs") -> None:
        super().__init__()
        self.widths = _widths(widths)
        spaces = [spaces] if isinstance(spaces, str) else list(spaces)
        layers = []
        for a, b in zip(self.widths[:-1], self.widths[1:]):
            if len(spaces) == 1:
                layers.append(KANLinear(a, b, space=spaces[0], bias=bias, **dict((basis_options or {}).get(spaces[0], {}))))
            else:
                layers.append(SKANLinear(a, b, spaces=spaces, basis_options=basis_options, bias=bias, select=select))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MLPRegressor(nn.Module):
    """``in -> hidden... -> out`` with an activation module after each hidden layer.

    Example:
        >>> MLPRegressor(2, [16, 16], 1)(torch.randn(3, 2)).shape
        torch.Size([3, 1])
    """

    def __init__(self, in_features: int = 2, hidden: Sequence[int] = (32, 32), out_features: int = 1,
                 activation: str = "silu") -> None:
        super().__init__()
        sizes = [int(in_features), *[int(h) for h in hidden], int(out_features)]
        if min(sizes) < 1:
            raise ValueError(f"MLPRegressor sizes must be >= 1, got {sizes}.")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(make_activation(activation))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def mlp_parameters(in_features: int, width: int, depth: int, out_features: int = 1) -> int:
    sizes = [in_features, *[width] * depth, out_features]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def mlp_width_for(target: int, in_features: int, depth: int = 2, out_features: int = 1) -> int:
    """The hidden width whose ``depth``-hidden-layer MLP has the parameter count closest to ``target``."""
    best = min(range(1, 4097), key=lambda w: abs(mlp_parameters(in_features, w, depth, out_features) - target))
    return best


def mlp_matching_kan(widths: Sequence[int], space: str = "bspline", depth: int = 2, activation: str = "silu",
                     basis_options: Mapping[str, Mapping[str, Any]] | None = None) -> MLPRegressor:
    """An MLP ``widths[0] -> [w] * depth -> widths[-1]`` whose parameter count is closest to the
    single-space KAN ``KAN(widths, spaces=space)`` (the S-KAN study's matched baseline). The KAN
    is built on the meta device, so counting it draws no random numbers.

    Example:
        >>> mlp = mlp_matching_kan([2, 5, 1])
        >>> sum(p.numel() for p in mlp.parameters())  # closest to the B-spline KAN [2, 5, 1]'s trained count
        151
    """
    widths = _widths(widths)
    with torch.device("meta"):
        target = sum(p.numel() for p in KAN(widths, spaces=space, basis_options=basis_options).parameters())
    width = mlp_width_for(target, widths[0], depth=depth, out_features=widths[-1])
    return MLPRegressor(widths[0], [width] * int(depth), widths[-1], activation=activation)


class PyKAN(nn.Module):
    """pykan's own ``KAN`` (the reference implementation) behind a plain ``forward``: B-splines
    with ``grid`` intervals of order ``k``; symbolic branch off and no auto-saved checkpoints,
    so it trains like any module. ``self.kan`` is the pykan model (use its ``fit`` for pykan's
    own training loop with grid updates)."""

    def __init__(self, widths: Sequence[int] = (2, 5, 1), grid: int = 5, k: int = 3, seed: int = 0) -> None:
        super().__init__()
        try:
            from kan import KAN as _KAN
        except ImportError as err:  # pragma: no cover - optional dependency
            raise ImportError("PyKAN needs pykan: pip install 'actsparse[kan]'.") from err
        self.widths = _widths(widths)
        self.kan = _KAN(width=self.widths, grid=grid, k=k, seed=seed, symbolic_enabled=False, auto_save=False,
                        save_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kan(x)


class SConvKAN(nn.Module):
    """S-ConvKAN for 8x8 digits: ``[SKANConv2d 3x3 -> BatchNorm -> MaxPool2] x len(channels)``,
    then a linear head. ``spaces`` one name gives a single-space ConvKAN.

    Example:
        >>> SConvKAN(channels=[4, 8], spaces=["bspline", "rbf"])(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (8, 16), num_classes: int = 10,
                 image_size: int = 8, spaces: str | Sequence[str] = DEFAULT_SPACES,
                 basis_options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c, size = int(in_channels), int(image_size)
        for ch in channels:
            blocks += [SKANConv2d(c, int(ch), 3, padding=1, spaces=spaces, basis_options=basis_options),
                       nn.BatchNorm2d(int(ch)), nn.MaxPool2d(2)]
            c, size = int(ch), size // 2
        if size < 1:
            raise ValueError(f"{len(channels)} pooling blocks shrink a {image_size}x{image_size} image to nothing.")
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(c * size * size, num_classes)
        self.image_size, self.in_channels = int(image_size), int(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.view(-1, self.in_channels, self.image_size, self.image_size)
        return self.head(self.features(x).flatten(1))
