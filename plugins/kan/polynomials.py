"""Global series bases on ``[-1, 1]``: orthogonal polynomials (Chebyshev, Legendre, Jacobi),
GRAM-KAN's learnable three-term recurrence, and Fourier terms.

Polynomials are unbounded outside ``[-1, 1]``: inputs are squashed by ``tanh`` first by default
(ChebyKAN's rule, also JacobiKAN's and GRAM-KAN's); Fourier terms are periodic and need no rule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from actsparse.plugins.kan.bases import Basis, register_basis


class Polynomial(Basis):
    """A polynomial family ``k = 0..degree`` on ``[-1, 1]``; inputs squashed by ``tanh`` by default."""

    outside_rules = ("tanh", "clamp", "error")

    def __init__(self, in_features: int, degree: int = 7, outside: str | None = None) -> None:
        super().__init__(in_features)
        if degree < 1:
            raise ValueError(f"{self.space} degree must be >= 1, got {degree}.")
        self.degree = int(degree)
        self.outside = self.check_outside(outside)

    @property
    def num_functions(self) -> int:
        return self.degree + 1

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, degree={self.degree}, outside={self.outside!r}"


@register_basis("chebyshev")
class Chebyshev(Polynomial):
    """Chebyshev polynomials of the first kind ``T_0..T_degree`` on ``[-1, 1]``
    (``T_{k+1} = 2x·T_k - T_{k-1}``); inputs squashed by ``tanh`` by default (ChebyKAN)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.enforce_domain(x, -1.0, 1.0)
        terms = [torch.ones_like(x), x]
        for _ in range(2, self.degree + 1):
            terms.append(2 * x * terms[-1] - terms[-2])
        return torch.stack(terms, dim=-1)


@register_basis("legendre")
class Legendre(Polynomial):
    """Legendre polynomials ``P_0..P_degree`` on ``[-1, 1]``
    (``(k+1)·P_{k+1} = (2k+1)·x·P_k - k·P_{k-1}``); inputs squashed by ``tanh`` by default."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.enforce_domain(x, -1.0, 1.0)
        terms = [torch.ones_like(x), x]
        for k in range(1, self.degree):
            terms.append(((2 * k + 1) * x * terms[-1] - k * terms[-2]) / (k + 1))
        return torch.stack(terms, dim=-1)

@register_basis("jacobi")
class Jacobi(Polynomial):
    """Jacobi polynomials ``P_0^(α,β)..P_degree^(α,β)`` on ``[-1, 1]`` (JacobiKAN, torch-conv-kan's
    KAJN layer; ``α = β = 1`` there): ``P_1 = ((α-β) + (α+β+2)x)/2`` and the three-term recurrence
    ``P_k = (a_k·x + b_k)·P_{k-1} - c_k·P_{k-2}``. ``α = β = 0`` gives Legendre, ``-½`` Chebyshev
    up to a scale."""

    def __init__(self, in_features: int, degree: int = 7, alpha: float = 1.0, beta: float = 1.0,
                 outside: str | None = None) -> None:
        super().__init__(in_features, degree=degree, outside=outside)
        if alpha <= -1 or beta <= -1:
            raise ValueError(f"jacobi needs alpha > -1 and beta > -1 (integrable weight), got {alpha}, {beta}.")
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.enforce_domain(x, -1.0, 1.0)
        a, b = self.alpha, self.beta
        terms = [torch.ones_like(x), ((a - b) + (a + b + 2) * x) / 2]
        for k in range(2, self.degree + 1):
            s = 2 * k + a + b
            lead = s * (s - 1) / (2 * k * (k + a + b))
            shift = (s - 1) * (a * a - b * b) / (2 * k * (k + a + b) * (s - 2))
            back = (k + a - 1) * (k + b - 1) * s / (k * (k + a + b) * (s - 2))
            terms.append((lead * x + shift) * terms[-1] - back * terms[-2])
        return torch.stack(terms, dim=-1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha:g}, beta={self.beta:g}"


@register_basis("gram")
class Gram(Polynomial):
    """GRAM-KAN's basis (torch-conv-kan's KAGN layer): ``p_0 = 1``, ``p_1 = x``,
    ``p_k = x·p_{k-1} - β(k-1, k)·w_{k-1}·p_{k-2}`` with ``β(n, m) = (m+n)(m-n)n²·(4n²-1)/m²`` and
    learnable ``w`` (initialised near 0, as the authors do), each passed through ``silu``.
    The ``w`` belong to the basis (one set per layer input set), so a pruned node that drops the
    space drops them too."""

    def __init__(self, in_features: int, degree: int = 7, outside: str | None = None, init_std: float | None = None) -> None:
        super().__init__(in_features, degree=degree, outside=outside)
        std = 1.0 / (self.in_features * (self.degree + 1.0)) if init_std is None else float(init_std)
        self.beta_weights = nn.Parameter(torch.randn(self.degree + 1) * std)

    @staticmethod
    def beta(n: int, m: int) -> float:
        return (m + n) * (m - n) * n ** 2 * (4.0 * n ** 2 - 1.0) / m ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.enforce_domain(x, -1.0, 1.0)
        w = self.beta_weights.to(x.dtype)
        terms = [torch.ones_like(x), x]
        for k in range(2, self.degree + 1):
            terms.append(x * terms[-1] - self.beta(k - 1, k) * w[k - 1] * terms[-2])
        return F.silu(torch.stack(terms, dim=-1))


@register_basis("fourier")
class Fourier(Basis):
    """``cos(k·π·x/L), sin(k·π·x/L)`` for ``k = 1..num_frequencies`` (FourierKAN); periodic with
    period ``2L``, so no domain rule is needed (``L = half_period``, default 1: one period on [-1, 1])."""

    def __init__(self, in_features: int, num_frequencies: int = 4, half_period: float = 1.0) -> None:
        super().__init__(in_features)
        if num_frequencies < 1 or half_period <= 0:
            raise ValueError(f"fourier needs num_frequencies >= 1 and half_period > 0, got {num_frequencies}, {half_period}.")
        self.num_frequencies, self.half_period = int(num_frequencies), float(half_period)

    @property
    def num_functions(self) -> int:
        return 2 * self.num_frequencies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # constants built in the input's dtype (exact in float64), a few elements per call
        frequencies = torch.arange(1, self.num_frequencies + 1, dtype=x.dtype, device=x.device) * (math.pi / self.half_period)
        angle = x.unsqueeze(-1) * frequencies
        return torch.cat([torch.cos(angle), torch.sin(angle)], dim=-1)
