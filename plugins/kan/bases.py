"""Activation spaces for KAN edges: one registry of basis families.

A basis maps the inputs of a layer ``x [B, in]`` to ``[B, in, K]`` basis values; a KAN edge
``i -> j`` is then ``phi_ji(x_i) = w_b[j,i]·silu(x_i) + w_s[j,i]·Σ_k c[j,i,k]·B_k(x_i)``
(:mod:`actsparse.plugins.kan.layers`). Every basis is evaluated for all inputs at once (tensor
ops over ``[B, in, K]``; the only Python loops run over the recursion order or the polynomial
degree, never over nodes or edges).

Registered families (``SPACES``), each in the module of its idea:

=============== ================================================================ ============ ==========================
name            ``B_k(x)``                                                       ``K``        module
=============== ================================================================ ============ ==========================
``bspline``     order-``k`` B-splines on a per-input grid of ``G`` intervals      ``G + k``    :mod:`.splines`
                extended by ``k`` knots each side (Cox–de Boor; KAN / pykan)
``relu_kan``    ``(16/((k+1)h)⁴)·[relu(e_i - x)·relu(x - s_i)]²`` (ReLU-KAN)      ``G + k``    :mod:`.splines`
``chebyshev``   ``T_k(x) = cos(k·arccos x)``, ``k = 0..degree`` (ChebyKAN)        ``degree+1`` :mod:`.polynomials`
``legendre``    ``P_k(x)``, ``k = 0..degree`` (Bonnet's recurrence)              ``degree+1`` :mod:`.polynomials`
``jacobi``      ``P_k^(α,β)(x)``, ``k = 0..degree`` (JacobiKAN, α = β = 1)        ``degree+1`` :mod:`.polynomials`
``gram``        ``silu(p_k(x))``, GRAM-KAN's three-term recurrence with learnable ``degree+1`` :mod:`.polynomials`
                ``β`` weights
``fourier``     ``cos(k·π·x/L)``, ``sin(k·π·x/L)``, ``k = 1..num_frequencies``    ``2·n``      :mod:`.polynomials`
``rbf``         ``exp(-((x - c_k)/h)²)``, ``G`` centres on the grid range         ``G``        :mod:`.radial`
``fastkan``     ``rbf`` after a LayerNorm over the layer's inputs (FastKAN)      ``G``        :mod:`.radial`
``rswaf``       ``1 - tanh((x - c_k)/h)²`` (FasterKAN's reflectional switch)      ``G``        :mod:`.radial`
``mexican_hat`` ``(2/(√3·π^¼))·(1 - t²)·exp(-t²/2)``, ``t = (x - c_k)/h``         ``G``        :mod:`.radial`
``wavelet``     the Mexican hat with a learnable translation and scale per        ``G``        :mod:`.radial`
                input and function (Wav-KAN)
=============== ================================================================ ============ ==========================

The S-KAN paper's pool is the KANConv2d family of torch-conv-kan (B-spline, FastKAN, RSWAF,
ChebyKAN, GRAM, WavKAN, Jacobi, ReLU-KAN): ``KANCONV_SPACES``.

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

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

SPACES: dict[str, type[Basis]] = {}

#: the S-KAN paper's layer family (torch-conv-kan's KANConv2d layers), in its order
KANCONV_SPACES = ("bspline", "fastkan", "rswaf", "chebyshev", "gram", "wavelet", "jacobi", "relu_kan")

OUTSIDE_RULES = ("zero", "clamp", "tanh", "error")


def register_basis(name: str) -> Callable[[type[Basis]], type[Basis]]:
    """Class decorator: make ``cls`` the activation space called ``name``."""

    def add(cls: type[Basis]) -> type[Basis]:
        if not (isinstance(cls, type) and issubclass(cls, Basis)):
            raise TypeError(f"register_basis({name!r}) needs a Basis subclass, got {cls!r}.")
        SPACES[name] = cls
        cls.space = name
        return cls

    return add


def make_basis(space: str, in_features: int, **options: Any) -> Basis:
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

    def select_inputs(self, index: torch.Tensor) -> Basis:
        """Keep only the inputs ``index`` (pruning with ``select="inputs"``); per-input state
        (a B-spline grid) is sliced. In place; returns ``self``."""
        self.in_features = len(index)
        return self

    # -- helpers for bounded families ---------------------------------------------------------
    def check_outside(self, outside: str | None) -> str:
        outside = outside or (self.outside_rules[0] if self.outside_rules else "zero")
        if self.outside_rules and outside not in self.outside_rules:
            raise ValueError(f"outside={outside!r} is not a rule of the {self.space!r} space; "
                             f"choose from {', '.join(self.outside_rules)}.")
        return outside

    def enforce_domain(self, x: torch.Tensor, low: torch.Tensor | float, high: torch.Tensor | float) -> torch.Tensor:
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
                    f"[{format_bound(low)}, {format_bound(high)}] (min {x.min().item():.4g}, max {x.max().item():.4g}) and "
                    f"outside='error' gives no extension rule. Normalize the inputs, update the grid from "
                    f"data (update_grid), or choose an extension rule: {', '.join(r for r in self.outside_rules if r != 'error')}."
                )
        return x

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, K={self.num_functions}"


def format_bound(v: torch.Tensor | float) -> str:
    """A domain bound for an error message (the lowest one when per input)."""
    if isinstance(v, torch.Tensor):
        return f"{v.min().item():.4g}" if v.numel() else "?"
    return f"{v:.4g}"


def check_range(grid_range: Sequence[float]) -> tuple[float, float]:
    """``(low, high)`` of a grid range, refused unless ``low < high``."""
    a, b = (float(v) for v in grid_range)
    if not b > a:
        raise ValueError(f"grid_range must be [low, high] with low < high, got {list(grid_range)}.")
    return a, b
