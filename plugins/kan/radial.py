"""Bumps on a grid of centres: Gaussian RBF, FastKAN (LayerNorm + RBF), FasterKAN's RSWAF, the
Mexican-hat wavelet on fixed centres and Wav-KAN's wavelets with learnable translation and scale.

Each is ``K = grid_size`` functions of ``t = (x - c_k)/h``; they decay away from the grid, so
no domain rule is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from actsparse.plugins.kan.bases import Basis, check_range, register_basis


class Centred(Basis):
    """``grid_size`` functions of ``t = (x - c_k)/h`` on centres ``c_k`` spread over ``grid_range``
    (``h`` = their spacing unless ``width``)."""

    def __init__(self, in_features: int, grid_size: int = 8, grid_range: Sequence[float] = (-1.0, 1.0),
                 width: float | None = None) -> None:
        super().__init__(in_features)
        if grid_size < 2:
            raise ValueError(f"{self.space} needs grid_size >= 2 centres, got {grid_size}.")
        a, b = check_range(grid_range)
        self.grid_size, self.low, self.high = int(grid_size), a, b
        self.width = float(width) if width is not None else (b - a) / (self.grid_size - 1)
        if self.width <= 0:
            raise ValueError(f"{self.space} width must be > 0, got {self.width}.")

    @property
    def num_functions(self) -> int:
        return self.grid_size

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        centres = torch.linspace(self.low, self.high, self.grid_size, dtype=x.dtype, device=x.device)
        return (x.unsqueeze(-1) - centres) / self.width

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, grid_size={self.grid_size}, width={self.width:.4g}"


@register_basis("rbf")
class GaussianRBF(Centred):
    """Gaussian bumps ``exp(-((x - c_k)/h)²)`` on ``grid_size`` centres (FastKAN)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.scaled(x).square())


MEXICAN_HAT_NORM = 2.0 / (math.sqrt(3.0) * math.pi ** 0.25)


@register_basis("mexican_hat")
class MexicanHat(Centred):
    """Mexican-hat (Ricker) wavelets ``(2/(√3·π^¼))·(1 - t²)·exp(-t²/2)``, ``t = (x - c_k)/h``
    (Wav-KAN's default mother wavelet, translated over a fixed grid)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t2 = self.scaled(x).square()
        return MEXICAN_HAT_NORM * (1 - t2) * torch.exp(-0.5 * t2)


@register_basis("fastkan")
class FastKAN(GaussianRBF):
    """FastKAN's basis: a LayerNorm over the layer's inputs, then Gaussian bumps on ``grid_size``
    centres of ``grid_range`` (FastKAN and torch-conv-kan's FastKANConv: 8 centres on
    ``[-2, 2]``). The LayerNorm mixes the inputs, so it cannot keep a subset of them: pruning with
    ``select="inputs"`` is refused."""

    def __init__(self, in_features: int, grid_size: int = 8, grid_range: Sequence[float] = (-2.0, 2.0),
                 width: float | None = None) -> None:
        super().__init__(in_features, grid_size=grid_size, grid_range=grid_range, width=width)
        self.norm = nn.LayerNorm(self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.norm(x))

    def select_inputs(self, index: torch.Tensor) -> FastKAN:
        raise ValueError("The fastkan space normalizes over all of a layer's inputs (LayerNorm), so it cannot be "
                         "pruned to a subset of them: use select='outputs' for S-KAN layers with fastkan.")


@register_basis("rswaf")
class RSWAF(Centred):
    """FasterKAN's reflectional switch functions ``1 - tanh((x - c_k)/h)²`` (= ``sech²``), cheaper
    bumps than Gaussians with heavier tails."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1 - torch.tanh(self.scaled(x)).square()


@register_basis("wavelet")
class Wavelet(Centred):
    """Wav-KAN's Mexican-hat wavelets with a learnable translation ``τ`` and scale ``s``:
    ``ψ((x - τ_ik)/s_ik)``, initialised on the grid (``τ = c_k``, ``s = h``). Wav-KAN learns one
    translation and scale per edge; here they are per input and function, shared by the edges
    leaving an input, so the family fits the basis interface (``[B, in] -> [B, in, K]``)."""

    def __init__(self, in_features: int, grid_size: int = 8, grid_range: Sequence[float] = (-1.0, 1.0),
                 width: float | None = None) -> None:
        super().__init__(in_features, grid_size=grid_size, grid_range=grid_range, width=width)
        centres = torch.linspace(self.low, self.high, self.grid_size)
        self.translation = nn.Parameter(centres.expand(self.in_features, -1).clone())
        self.scale = nn.Parameter(torch.full((self.in_features, self.grid_size), self.width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t2 = ((x.unsqueeze(-1) - self.translation.to(x.dtype)) / self.scale.to(x.dtype)).square()
        return MEXICAN_HAT_NORM * (1 - t2) * torch.exp(-0.5 * t2)

    def select_inputs(self, index: torch.Tensor) -> Wavelet:
        index = index.to(self.translation.device)
        self.translation = nn.Parameter(self.translation.detach().index_select(0, index).clone())
        self.scale = nn.Parameter(self.scale.detach().index_select(0, index).clone())
        return super().select_inputs(index)
