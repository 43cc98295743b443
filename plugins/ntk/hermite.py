"""Activations given by normalized Hermite expansions, as modules a real network can use.

The normalized (probabilists') Hermite polynomials ``h_k = He_k / sqrt(k!)`` are orthonormal
under the standard Gaussian, so for ``phi = sum_k a_k h_k`` and (u, v) standard Gaussians with
correlation xi, ``E[phi(u) phi(v)] = sum_k a_k**2 xi**k`` — the dual activation. With
``sum_k a_k**2 = 1`` a unit-variance pre-activation gives a unit-variance activation, which is
what keeps a deep network in NTK parametrization on the sphere (DESIGN §4).

``HermiteActivation`` is registered as a bare activation site (``actsparse.plugins.sites``),
so ``find_sites``/``record``/monitors see it like any ``nn.ReLU``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from actsparse.plugins.sites import register_activation_type

COEFF_TOLERANCE = 1e-6


def hermite_series(x: torch.Tensor, coeffs: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``sum_k coeffs[k] * He_k(x) / sqrt(k!)``, by the three-term recurrence
    ``He_{k+1} = x He_k - k He_{k-1}`` (stable for the small degrees used here)."""
    coeffs = torch.as_tensor(coeffs, dtype=x.dtype, device=x.device)
    out = coeffs[0] * torch.ones_like(x)
    if coeffs.numel() == 1:
        return out
    prev, cur = torch.ones_like(x), x
    out = out + coeffs[1] * cur
    for k in range(1, coeffs.numel() - 1):
        prev, cur = cur, x * cur - k * prev  # He_{k+1}
        out = out + coeffs[k + 1] * cur / math.sqrt(math.factorial(k + 1))
    return out


def check_hermite_coeffs(coeffs: Sequence[float], normalize: bool = False) -> tuple[float, ...]:
    """Validate normalized Hermite coefficients (``sum a_k**2 = 1``); rescale them instead when
    ``normalize=True``. Returns them as a tuple of floats."""
    values = [float(c) for c in coeffs]
    if not values or any(not math.isfinite(c) for c in values):
        raise ValueError(f"Hermite coefficients must be a non-empty list of finite numbers, got {list(coeffs)!r}.")
    norm2 = sum(c * c for c in values)
    if norm2 == 0:
        raise ValueError("Hermite coefficients are all zero: the activation is identically 0.")
    if abs(norm2 - 1.0) > COEFF_TOLERANCE:
        if not normalize:
            raise ValueError(
                f"Hermite coefficients must be normalized (sum of squares = 1, so that the dual has "
                f"a(1) = 1), got sum a_k^2 = {norm2:.6g}. Divide them by {math.sqrt(norm2):.6g}, "
                "or pass normalize=True to have them rescaled."
            )
        values = [c / math.sqrt(norm2) for c in values]
    return tuple(values)


class HermiteActivation(nn.Module):
    """``phi(x) = sum_k a_k h_k(x)`` with normalized Hermite polynomials ``h_k`` (see module doc).

    Args:
        coeffs: ``a_0, a_1, ...``; must satisfy ``sum a_k**2 = 1`` unless ``normalize=True``.

    Its dual activation is ``sum a_k**2 xi**k`` (``plugins.ntk.duals.hermite_dual``). The optimal
    activations of Radhakrishnan et al. are ``HermiteActivation.from_name("opt3")`` etc.

    Example:
        >>> act = HermiteActivation([0.0, 2 ** -0.5, 0.0, 2 ** -0.5])   # opt3: dual xi^3/2 + xi/2
        >>> [round(v, 4) for v in act(torch.tensor([0.0, 1.0, 2.0])).tolist()]
        [0.0, 0.1298, 1.9916]
    """

    def __init__(self, coeffs: Sequence[float], normalize: bool = False) -> None:
        super().__init__()
        self.coeffs_tuple = check_hermite_coeffs(coeffs, normalize)
        self.register_buffer("coeffs", torch.tensor(self.coeffs_tuple, dtype=torch.float32))

    @classmethod
    def from_name(cls, name: str) -> "HermiteActivation":
        """The activation of a named dual with a finite Hermite expansion (opt3, opt5, opt9, hermite_<k>)."""
        from actsparse.plugins.ntk.duals import dual_activation  # the registry imports this module

        dual = dual_activation(name)
        if dual.hermite_coeffs is None:
            raise ValueError(
                f"The dual {dual.name!r} has no finite Hermite expansion, so it has no HermiteActivation; "
                "finite ones: opt3, opt5, opt9, hermite_<k>, or a list of normalized coefficients."
            )
        return cls(dual.hermite_coeffs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hermite_series(x, self.coeffs.to(x.dtype))

    def extra_repr(self) -> str:
        return "coeffs=[" + ", ".join(f"{c:.4g}" for c in self.coeffs_tuple) + "]"


register_activation_type(HermiteActivation)
