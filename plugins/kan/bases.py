"""Activation spaces for KAN edges: one registry of basis families.

A basis maps the inputs of a layer ``x [B, in]`` to ``[B, in, K]`` basis values; a KAN edge
``i -> j`` is then ``phi_ji(x_i) = w_b[j,i]·silu(x_i) + w_s[j,i]·Σ_k c[j,i,k]·B_k(x_i)``
(:mod:`actsparse.plugins.kan.layers`). Every basis is evaluated for all inputs at once (tensor
ops over ``[B, in, K]``; the only Python loops run over the recursion order or the polynomial
degree, never over nodes or edges).

Registered families (``SPACES``):

============== ================================================================= ============
name           ``B_k(x)``                                                        ``K``
============== ================================================================= ============
``bspline``    order-``k`` B-splines on a per-input grid of ``G`` intervals       ``G + k``
               extended by ``k`` knots each side (Cox–de Boor; KAN / pykan)
``chebyshev``  ``T_k(x) = cos(k·arccos x)``, ``k = 0..degree`` (recurrence)       ``degree+1``
``legendre``   ``P_k(x)``, ``k = 0..degree`` (Bonnet's recurrence)               ``degree+1``
``fourier``    ``cos(k·π·x/L)``, ``sin(k·π·x/L)``, ``k = 1..num_frequencies``     ``2·n``
``rbf``        ``exp(-((x - c_k)/h)²)``, ``G`` centres on the grid range          ``G``
``mexican_hat`` ``(2/(√3·π^¼))·(1 - t²)·exp(-t²/2)``, ``t = (x - c_k)/h``          ``G``
``relu_kan``   ``(16/((k+1)h)⁴)·[relu(e_i - x)·relu(x - s_i)]²`` (ReLU-KAN)       ``G + k``
============== ================================================================= ============

Bounded bases say what happens outside their domain with ``outside=``: ``"zero"`` (B-spline
and ReLU-KAN: the spline term vanishes there and the ``silu`` base carries the edge, pykan's
behaviour), ``"clamp"`` (hold the boundary value), ``"tanh"`` (polynomials: squash into
``(-1, 1)`` first, ChebyKAN's rule) or ``"error"`` (raise: no extension rule).

A new family is one registration::

    @register_basis("hermite")
    class Hermite(Basis):
        def __init__(self, in_features, degree=5): ...
        num_functions = property(lambda self: self.degree + 1)
        def forward(self, x): ...          # [B, in] -> [B, in, K]
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

import torch
from torch import nn

SPACES: dict[str, type["Basis"]] = {}

OUTSIDE_RULES = ("zero", "clamp", "tanh", "error")


def register_basis(name: str) -> Callable[[type["Basis"]], type["Basis"]]:
    """Class decorator: make ``cls`` the activation space called ``name``."""

    def add(cls: type[Basis]) -> type[Basis]:
        if not (isinstance(cls, type) and issubclass(cls, Basis)):
            raise TypeError(f"register_basis({name!r}) needs a Basis subclass, got {cls!r}.")
        SPACES[name] = cls
        cls.space = name
        return cls

    return add


def make_basis(space: str, in_features: int, **options: Any) -> "Basis":
    """The basis called ``space`` for a layer with ``in_features`` inputs."""
    if space not in SPACES:
        raise ValueError(f"Unknown activation space {space!r}; registered spaces: {', '.join(SPACES)}. "
                         "Register a new one with actsparse.plugins.kan.register_basis.")
    try:
        return SPACES[space](in_features, **options)
    except TypeError as err:  # an option the family does not take
        raise TypeError(f"Bad options for activation space {space!r}: {err}") from None


class Basis(nn.Module, ABC):
    """A family of ``K`` univariate functions, evaluated per input: ``[B, in] -> [B, in, K]``."""

    space: str = ""
    #: rules this family accepts for inputs outside its domain (first one is the default)
    outside_rules: tuple[str, ...] = ()

    def __init__(self, in_features: int) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}.")
        self.in_features = int(in_features)

    @property
    @abstractmethod
    def num_functions(self) -> int:
        """``K``, the functions per edge (each family defines it)."""

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in] -> [B, in, K]``: every basis function at every input (each family defines it)."""

    def select_inputs(self, index: torch.Tensor) -> "Basis":
        """Keep only the inputs ``index`` (pruning with ``select="inputs"``); per-input state
        (a B-spline grid) is sliced. In place; returns ``self``."""
        self.in_features = int(len(index))
        return self

    # -- helpers for bounded families ---------------------------------------------------------
    def _check_outside(self, outside: str | None) -> str:
        outside = outside or (self.outside_rules[0] if self.outside_rules else "zero")
        if self.outside_rules and outside not in self.outside_rules:
            raise ValueError(f"outside={outside!r} is not a rule of the {self.space!r} space; "
                             f"choose from {', '.join(self.outside_rules)}.")
        return outside

    def _enforce_domain(self, x: torch.Tensor, low: torch.Tensor | float, high: torch.Tensor | float) -> torch.Tensor:
        """Apply ``self.outside`` to inputs outside ``[low, high]`` (per input when tensors)."""
        if self.outside == "tanh":
            return torch.tanh(x)
        if self.outside == "clamp":
            return torch.maximum(torch.minimum(x, torch.as_tensor(high, dtype=x.dtype, device=x.device)),
                                 torch.as_tensor(low, dtype=x.dtype, device=x.device))
        if self.outside == "error":
            bad = (x < low) | (x > high)
            if bool(bad.any()):
                raise ValueError(
                    f"{int(bad.sum())} input(s) of the {self.space!r} space lie outside its domain "
                    f"[{_fmt(low)}, {_fmt(high)}] (min {x.min().item():.4g}, max {x.max().item():.4g}) and "
                    f"outside='error' gives no extension rule. Normalize the inputs, update the grid from "
                    f"data (update_grid), or choose an extension rule: {', '.join(r for r in self.outside_rules if r != 'error')}."
                )
        return x

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, K={self.num_functions}"


def _fmt(v: torch.Tensor | float) -> str:
    if isinstance(v, torch.Tensor):
        return f"{v.min().item():.4g}" if v.numel() else "?"
    return f"{v:.4g}"


def _check_range(grid_range: Sequence[float]) -> tuple[float, float]:
    a, b = (float(v) for v in grid_range)
    if not b > a:
        raise ValueError(f"grid_range must be [low, high] with low < high, got {list(grid_range)}.")
    return a, b


# -- B-splines ---------------------------------------------------------------------------------

def bspline_basis(x: torch.Tensor, knots: torch.Tensor, order: int) -> torch.Tensor:
    """Cox–de Boor for all inputs at once: ``x [B, in]``, ``knots [in, n]`` -> ``[B, in, n - order - 1]``.

    ``B_{i,0} = 1[t_i <= x < t_{i+1}]``, ``B_{i,p} = (x - t_i)/(t_{i+p} - t_i)·B_{i,p-1}
    + (t_{i+p+1} - x)/(t_{i+p+1} - t_{i+1})·B_{i+1,p-1}``.
    """
    xe = x.unsqueeze(-1)
    t = knots.unsqueeze(0)
    value = ((xe >= t[..., :-1]) & (xe < t[..., 1:])).to(x.dtype)
    for p in range(1, order + 1):
        left = (xe - t[..., : -(p + 1)]) / (t[..., p:-1] - t[..., : -(p + 1)])
        right = (t[..., p + 1:] - xe) / (t[..., p + 1:] - t[..., 1:-p])
        value = left * value[..., :-1] + right * value[..., 1:]
    return value


@register_basis("bspline")
class BSpline(Basis):
    """Order-``order`` B-splines on ``grid_size`` intervals of ``grid_range`` per input, the grid
    extended by ``order`` knots on each side (as pykan): ``K = grid_size + order``.

    ``update_grid(x, coef)`` moves the grid to the data (KAN paper §2.4: sample quantiles mixed
    with a uniform grid by ``grid_eps``) and refits the coefficients by least squares so the
    edge functions are kept on the data.
    """

    outside_rules = ("zero", "clamp", "error")

    def __init__(self, in_features: int, grid_size: int = 5, order: int = 3,
                 grid_range: Sequence[float] = (-1.0, 1.0), grid_eps: float = 0.02, outside: str | None = None) -> None:
        super().__init__(in_features)
        if order < 0:
            raise ValueError(f"B-spline order must be >= 0, got {order}.")
        if grid_size < max(order, 1):
            raise ValueError(
                f"B-spline grid_size={grid_size} is smaller than the spline order {order}: each piece of an "
                f"order-{order} spline spans {order + 1} knots, so use grid_size >= {max(order, 1)} "
                "(e.g. grid_size=5 with order=3, the KAN default).")
        if not 0.0 <= grid_eps <= 1.0:
            raise ValueError(f"grid_eps must be in [0, 1] (0: quantiles of the data, 1: uniform), got {grid_eps}.")
        self.grid_size, self.order, self.grid_eps = int(grid_size), int(order), float(grid_eps)
        self.outside = self._check_outside(outside)
        a, b = _check_range(grid_range)
        inner = torch.linspace(a, b, self.grid_size + 1).expand(self.in_features, -1)
        self.register_buffer("grid", _extend(inner, self.order))

    @property
    def num_functions(self) -> int:
        return self.grid_size + self.order

    def select_inputs(self, index: torch.Tensor) -> "BSpline":
        self.grid = self.grid.index_select(0, index.to(self.grid.device)).clone()
        return super().select_inputs(index)

    @property
    def inner_grid(self) -> torch.Tensor:
        """The ``grid_size + 1`` knots that bound the covered range, per input ``[in, G+1]``."""
        return self.grid[:, self.order: self.grid.shape[1] - self.order]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outside != "zero":
            low, high = self.inner_grid[:, 0], self.inner_grid[:, -1]
            if self.outside == "clamp":
                # just inside the last knot: the half-open last interval would give 0 at `high`.
                high = high - 1e-6 * (high - low)
            x = self._enforce_domain(x, low, high)
        return bspline_basis(x, self.grid.to(x.dtype), self.order)

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """Move the grid to the inputs ``x [N, in]`` and return coefficients ``[out, in, K]`` (fitted
        by least squares on ``x``) that keep ``Σ_k coef·B_k`` where the data lie."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"update_grid needs inputs [N, {self.in_features}], got {tuple(x.shape)}.")
        n = x.shape[0]
        if n < self.num_functions:
            raise ValueError(f"update_grid needs at least K={self.num_functions} samples to refit the "
                             f"coefficients, got {n}.")
        x = x.to(self.grid.dtype)
        old = torch.einsum("nik,oik->nio", self.forward(x), coef.to(x.dtype))  # [N, in, out]
        xs = torch.sort(x, dim=0).values
        ids = torch.linspace(0, n - 1, self.grid_size + 1, device=x.device).round().long()
        adaptive = xs[ids].T                                                           # [in, G+1]
        span = (adaptive[:, -1:] - adaptive[:, :1]).clamp_min(1e-6)
        uniform = adaptive[:, :1] + span * torch.linspace(0, 1, self.grid_size + 1, device=x.device, dtype=x.dtype)
        inner = self.grid_eps * uniform + (1 - self.grid_eps) * adaptive
        # Knots must increase strictly (repeated data values would collapse an interval).
        inner = torch.maximum(inner, torch.cummax(inner, dim=1).values)
        eps = 1e-6 * span
        inner = inner + eps * torch.arange(self.grid_size + 1, device=x.device, dtype=x.dtype)
        # The last sample sits on the closing knot, where the half-open intervals give 0: nudge it out.
        inner[:, -1] = inner[:, -1] + eps[:, 0]
        self.grid.copy_(_extend(inner, self.order))
        design = self.forward(x).permute(1, 0, 2)                                      # [in, N, K]
        target = old.permute(1, 0, 2)                                                  # [in, N, out]
        solution = torch.linalg.lstsq(design.double(), target.double()).solution       # [in, K, out]
        return solution.permute(2, 0, 1).to(coef.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, grid_size={self.grid_size}, order={self.order}, outside={self.outside!r}"


def _extend(inner: torch.Tensor, k: int) -> torch.Tensor:
    """Add ``k`` knots on each side of ``inner [in, G+1]`` at the end intervals' spacing."""
    h = (inner[:, -1:] - inner[:, :1]) / (inner.shape[1] - 1)
    steps = torch.arange(1, k + 1, device=inner.device, dtype=inner.dtype)
    left = inner[:, :1] - h * steps.flip(0)
    right = inner[:, -1:] + h * steps
    return torch.cat([left, inner, right], dim=1)


# -- orthogonal polynomials ----------------------------------------------------------------------

class _Polynomial(Basis):
    outside_rules = ("tanh", "clamp", "error")

    def __init__(self, in_features: int, degree: int = 7, outside: str | None = None) -> None:
        super().__init__(in_features)
        if degree < 1:
            raise ValueError(f"{self.space} degree must be >= 1, got {degree}.")
        self.degree = int(degree)
        self.outside = self._check_outside(outside)

    @property
    def num_functions(self) -> int:
        return self.degree + 1

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, degree={self.degree}, outside={self.outside!r}"


@register_basis("chebyshev")
class Chebyshev(_Polynomial):
    """Chebyshev polynomials of the first kind ``T_0..T_degree`` on ``[-1, 1]``
    (``T_{k+1} = 2x·T_k - T_{k-1}``); inputs squashed by ``tanh`` by default (ChebyKAN)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._enforce_domain(x, -1.0, 1.0)
        terms = [torch.ones_like(x), x]
        for _ in range(2, self.degree + 1):
            terms.append(2 * x * terms[-1] - terms[-2])
        return torch.stack(terms, dim=-1)


@register_basis("legendre")
class Legendre(_Polynomial):
    """Legendre polynomials ``P_0..P_degree`` on ``[-1, 1]``
    (``(k+1)·P_{k+1} = (2k+1)·x·P_k - k·P_{k-1}``); inputs squashed by ``tanh`` by default."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._enforce_domain(x, -1.0, 1.0)
        terms = [torch.ones_like(x), x]
        for k in range(1, self.degree):
            terms.append(((2 * k + 1) * x * terms[-1] - k * terms[-2]) / (k + 1))
        return torch.stack(terms, dim=-1)


# -- Fourier -------------------------------------------------------------------------------------

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


# -- radial / wavelet families on a fixed grid of centres ----------------------------------------

class _Centred(Basis):
    def __init__(self, in_features: int, grid_size: int = 8, grid_range: Sequence[float] = (-1.0, 1.0),
                 width: float | None = None) -> None:
        super().__init__(in_features)
        if grid_size < 2:
            raise ValueError(f"{self.space} needs grid_size >= 2 centres, got {grid_size}.")
        a, b = _check_range(grid_range)
        self.grid_size, self.low, self.high = int(grid_size), a, b
        self.width = float(width) if width is not None else (b - a) / (self.grid_size - 1)
        if self.width <= 0:
            raise ValueError(f"{self.space} width must be > 0, got {self.width}.")

    @property
    def num_functions(self) -> int:
        return self.grid_size

    def _t(self, x: torch.Tensor) -> torch.Tensor:
        centres = torch.linspace(self.low, self.high, self.grid_size, dtype=x.dtype, device=x.device)
        return (x.unsqueeze(-1) - centres) / self.width

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, grid_size={self.grid_size}, width={self.width:.4g}"


@register_basis("rbf")
class GaussianRBF(_Centred):
    """Gaussian bumps ``exp(-((x - c_k)/h)²)`` on ``grid_size`` centres (FastKAN)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self._t(x).square())


_MEXICAN_HAT_NORM = 2.0 / (math.sqrt(3.0) * math.pi ** 0.25)


@register_basis("mexican_hat")
class MexicanHat(_Centred):
    """Mexican-hat (Ricker) wavelets ``(2/(√3·π^¼))·(1 - t²)·exp(-t²/2)``, ``t = (x - c_k)/h``
    (Wav-KAN's default mother wavelet, translated over a fixed grid)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t2 = self._t(x).square()
        return _MEXICAN_HAT_NORM * (1 - t2) * torch.exp(-0.5 * t2)


# -- ReLU-KAN ------------------------------------------------------------------------------------

@register_basis("relu_kan")
class ReLUKAN(Basis):
    """ReLU-KAN's bumps ``R_i(x) = r·[relu(e_i - x)·relu(x - s_i)]²`` with ``s_i = a + (i-k-1)h``,
    ``e_i = a + i·h`` (``h = (b-a)/G``, ``i = 1..G+k``) and ``r = 16/((k+1)h)⁴`` (peak 1). Zero
    outside ``[a - k·h, b + k·h]`` (``outside="zero"``)."""

    outside_rules = ("zero", "clamp", "error")

    def __init__(self, in_features: int, grid_size: int = 5, order: int = 3,
                 grid_range: Sequence[float] = (-1.0, 1.0), outside: str | None = None) -> None:
        super().__init__(in_features)
        if grid_size < max(order, 1) or order < 1:
            raise ValueError(f"relu_kan needs order >= 1 and grid_size >= order, got grid_size={grid_size}, order={order}.")
        a, b = _check_range(grid_range)
        self.grid_size, self.order, self.outside = int(grid_size), int(order), self._check_outside(outside)
        self.low, self.high = a, b
        self.step = (b - a) / self.grid_size
        self.scale = 16.0 / ((self.order + 1) * self.step) ** 4

    @property
    def num_functions(self) -> int:
        return self.grid_size + self.order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._enforce_domain(x, self.low, self.high)
        xe = x.unsqueeze(-1)
        i = torch.arange(1, self.grid_size + self.order + 1, dtype=x.dtype, device=x.device)
        starts, ends = self.low + (i - self.order - 1) * self.step, self.low + i * self.step
        bump = torch.relu(ends - xe) * torch.relu(xe - starts)
        return self.scale * bump.square()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, grid_size={self.grid_size}, order={self.order}, outside={self.outside!r}"
