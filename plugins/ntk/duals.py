"""Dual activations and their registry (Radhakrishnan, Belkin, Uhler; DESIGN §4).

The dual of an activation ``phi`` is ``a(xi) = E[phi(u) phi(v)]`` for standard Gaussians (u, v)
with correlation ``xi``; every dual here is normalized so that ``a(1) = 1`` (a unit-variance
pre-activation stays unit variance). Each :class:`DualActivation` carries ``a``, its derivative
``a'``, the activation ``phi`` itself when known (for Monte Carlo checks and finite networks) and,
for the deep kernels, evaluations in the log domain (``log|a|``, sign) so that depths in the
thousands neither overflow nor silently underflow to 0.

Names (:func:`dual_activation`):

==============  ==========================================  =============================
name            dual ``a(xi)``                              activation ``phi``
==============  ==========================================  =============================
relu            ``(xi (pi - arccos xi) + sqrt(1-xi^2))/pi``  ``sqrt(2) relu(x)``
erf             ``arcsin(2 xi/3) / arcsin(2/3)``            ``erf(x) / sqrt(2/pi arcsin(2/3))``
sine_<a>        ``sinh(a xi) / sinh(a)``                    ``sin(sqrt(a) x) / sqrt(e^-a sinh a)``
opt3            ``xi^3/2 + xi/2``                           Hermite ``(h1 + h3)/sqrt(2)``
opt5            ``xi^3/4 + xi^2/2 + xi/4``                  Hermite ``h1/2 + h2/sqrt(2) + h3/2``
opt9            ``xi^3/16 + 7 xi^2/8 + xi/16``              Hermite ``h1/4 + sqrt(7/8) h2 + h3/4``
hermite_<k>     ``xi^k``                                    ``h_k = He_k / sqrt(k!)``
[a0, a1, ...]   ``sum a_k^2 xi^k``                          ``sum a_k h_k`` (``sum a_k^2 = 1``)
==============  ==========================================  =============================

``opt2`` (the authors' 2-d dual ``xi^7/2 + xi/2``) and ``optimal_<d>[_<k>]`` (a consistent dual for any
input dimension) are registered by :mod:`actsparse.plugins.ntk.optimal`.

The sine parameter follows the authors' code (``sine_2.676`` is consistent in 3-d). A new dual
is one entry: ``register_dual("name", factory)`` (``family=True`` for ``name_<param>``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from actsparse.plugins.ntk.hermite import check_hermite_coeffs, hermite_series

Tensor = torch.Tensor
LogPair = tuple[Tensor, Tensor]  # (log|value|, sign in {-1, 0, 1})


def signed_logsumexp(logs: Tensor, signs: Tensor) -> LogPair:
    """``log|sum_t s_t exp(l_t)|`` and its sign, over the last dim (all ``-inf`` gives ``-inf``, 0)."""
    top = logs.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = (signs * torch.exp(logs - top)).sum(-1)
    return torch.log(total.abs()) + top.squeeze(-1), torch.sign(total)


def to_log(x: Tensor) -> LogPair:
    return torch.log(x.abs()), torch.sign(x)


def from_log(logabs: Tensor, sign: Tensor) -> Tensor:
    return sign * torch.exp(logabs)


@dataclass(frozen=True, eq=False)
class DualActivation:
    """A dual activation ``a`` on [-1, 1] with ``a(1) = 1`` and its derivative.

    ``value_at_zero``/``slope_at_zero`` (``a(0)``, ``a'(0)``) and ``slope_at_one`` (``a'(1)``)
    decide the deep regime (DESIGN §4): ``a'(0) = 0`` gives 1-NN, ``a'(1) <= 1`` with ``a(0) > 0``
    majority vote, and ``0 < a'(0) < 1 < a'(1)`` the singular kernel ``(1 - xi)^(-beta)`` with
    ``beta = log(1/a'(0)) / log a'(1)`` (:meth:`singular_exponent`).
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor]
    activation: Callable[[Tensor], Tensor] | None = None
    hermite_coeffs: tuple[float, ...] | None = None
    description: str = ""
    poly: tuple[float, ...] | None = field(default=None, repr=False)  # a(xi) = sum poly[i] xi^i

    def __call__(self, xi: Tensor) -> Tensor:
        return self.fn(xi)

    def _scalar(self, f: Callable[[Tensor], Tensor], x: float) -> float:
        return float(f(torch.tensor(x, dtype=torch.float64)))

    @property
    def value_at_zero(self) -> float:
        return self._scalar(self.fn, 0.0)

    @property
    def slope_at_zero(self) -> float:
        return self._scalar(self.derivative, 0.0)

    @property
    def slope_at_one(self) -> float:
        return self._scalar(self.derivative, 1.0)

    def singular_exponent(self) -> float:
        """``beta`` of the limiting singular kernel ``(1 - xi)^(-beta)`` (the sphere in R^d is
        consistent at ``beta = (d - 1)/2``); inf for 1-NN, nan where the regime is not singular."""
        s0, s1 = self.slope_at_zero, self.slope_at_one
        if self.value_at_zero != 0.0 or s1 <= 1.0:
            return float("nan")
        if s0 == 0.0:
            return float("inf")
        return math.log(1.0 / s0) / math.log(s1) if s0 < 1.0 else float("nan")

    def regime(self) -> str:
        """The deep-limit classifier this dual's NTK/NNGP predictor approaches."""
        if self.value_at_zero == 0.0 and self.slope_at_one <= 1.0:
            return "linear (depth-independent)"  # a(xi) = xi: nothing collapses
        if self.value_at_zero != 0.0 or self.slope_at_one <= 1.0:
            return "majority vote"
        if self.slope_at_zero == 0.0:
            return "1-NN"
        return f"singular kernel (beta={self.singular_exponent():.3g})"

    # -- log domain (deep kernels) -------------------------------------------------------------
    @property
    def leading_term(self) -> tuple[int, float]:
        """``(p, c)`` with ``a(x) = c x^p (1 + O(x))`` as ``x -> 0``: how tiny entries evolve."""
        if self.value_at_zero != 0.0:
            return 0, self.value_at_zero
        if self.slope_at_zero != 0.0:
            return 1, self.slope_at_zero
        if self.poly is not None:
            p = next(i for i, c in enumerate(self.poly) if c != 0.0)
            return p, self.poly[p]
        raise ValueError(f"The dual {self.name!r} has a(0) = a'(0) = 0 and no polynomial form; give it `poly`.")

    def log_value(self, logabs: Tensor, sign: Tensor) -> LogPair:
        """``(log|a(x)|, sign a(x))`` for ``x = sign * exp(logabs)``. Entries with ``|x| < 1e-100``
        use the leading term ``c x^p`` (relative error < 1e-100), so they never underflow."""
        return _log_apply(self.fn, self.leading_term, logabs, sign)

    def log_derivative(self, logabs: Tensor, sign: Tensor) -> LogPair:
        """``(log|a'(x)|, sign a'(x))`` for ``x = sign * exp(logabs)`` (same scheme)."""
        lead = (0, self.slope_at_zero)
        if self.slope_at_zero == 0.0 and self.poly is not None:
            q = next((i for i, ci in enumerate(self.poly) if i > 0 and ci != 0.0), None)
            lead = (0, 0.0) if q is None else (q - 1, q * self.poly[q])
        return _log_apply(self.derivative, lead, logabs, sign)


_LOG_SMALL = -230.0  # |x| < 1e-100: a(x) is its leading term to float64 precision


def _log_apply(fn: Callable[[Tensor], Tensor], lead: tuple[int, float], logabs: Tensor, sign: Tensor) -> LogPair:
    p, c = lead
    value = fn(from_log(logabs, sign))
    big_log, big_sign = to_log(value)
    if c == 0.0:
        return big_log, big_sign
    small = logabs < _LOG_SMALL
    small_log = p * logabs + math.log(abs(c)) if p else torch.full_like(logabs, math.log(abs(c)))
    small_sign = (sign if p % 2 else sign.abs()) * math.copysign(1.0, c) if p else torch.full_like(sign, math.copysign(1.0, c))
    return torch.where(small, small_log, big_log), torch.where(small, small_sign, big_sign)


def _horner(coeffs: Sequence[float]) -> Callable[[Tensor], Tensor]:
    def evaluate(x: Tensor) -> Tensor:
        out = torch.zeros_like(x)
        for c in reversed(coeffs):
            out = out * x + c
        return out

    return evaluate


def hermite_dual(coeffs: Sequence[float], normalize: bool = False, name: str | None = None) -> DualActivation:
    """The dual ``sum a_k^2 xi^k`` of ``phi = sum a_k h_k`` (normalized Hermite ``h_k``).

    ``coeffs`` must satisfy ``sum a_k^2 = 1`` (so ``a(1) = 1``); ``normalize=True`` rescales them.
    """
    a = check_hermite_coeffs(coeffs, normalize)
    poly = tuple(c * c for c in a)
    deriv = tuple(i * c for i, c in enumerate(poly))[1:] or (0.0,)
    label = name or "hermite[" + ", ".join(f"{c:.4g}" for c in a) + "]"
    return DualActivation(
        name=label, fn=_horner(poly), derivative=_horner(deriv),
        activation=lambda x, a=a: hermite_series(x, a), hermite_coeffs=a, poly=poly,
        description="sum a_k^2 xi^k of a normalized Hermite expansion",
    )


def _relu() -> DualActivation:
    def fn(xi: Tensor) -> Tensor:
        xi = xi.clamp(-1.0, 1.0)
        return (xi * (math.pi - torch.arccos(xi)) + torch.sqrt((1.0 - xi * xi).clamp_min(0.0))) / math.pi

    def derivative(xi: Tensor) -> Tensor:  # (pi - arccos xi)/pi is finite at +-1 (no 1/sqrt term)
        return (math.pi - torch.arccos(xi.clamp(-1.0, 1.0))) / math.pi

    return DualActivation("relu", fn, derivative, activation=lambda x: math.sqrt(2.0) * torch.relu(x),
                          description="arc-cosine kernel of sqrt(2)*relu")


_ERF_NORM = math.asin(2.0 / 3.0)


def _erf() -> DualActivation:
    def fn(xi: Tensor) -> Tensor:
        return torch.arcsin(2.0 * xi.clamp(-1.0, 1.0) / 3.0) / _ERF_NORM

    def derivative(xi: Tensor) -> Tensor:
        xi = xi.clamp(-1.0, 1.0)
        return (2.0 / 3.0) / torch.sqrt(1.0 - 4.0 * xi * xi / 9.0) / _ERF_NORM

    scale = math.sqrt(2.0 / math.pi * _ERF_NORM)
    return DualActivation("erf", fn, derivative, activation=lambda x: torch.erf(x) / scale,
                          description="arcsin kernel of a normalized erf")


def _sine(param: str) -> DualActivation:
    a = _positive_float(param, "sine_<a>")
    denom = -math.expm1(-2.0 * a)  # 1 - e^{-2a}; sinh(a xi)/sinh(a) without overflow for large a

    def fn(xi: Tensor) -> Tensor:
        xi = xi.clamp(-1.0, 1.0)
        # the exp difference cancels for small a*xi, where sinh itself is accurate
        small = (a * xi).abs() < 1.0
        via_sinh = torch.sinh(a * torch.where(small, xi, 0.0)) * (2.0 * math.exp(-a) / denom)
        return torch.where(small, via_sinh, (torch.exp(a * (xi - 1.0)) - torch.exp(-a * (xi + 1.0))) / denom)

    def derivative(xi: Tensor) -> Tensor:
        xi = xi.clamp(-1.0, 1.0)
        return a * (torch.exp(a * (xi - 1.0)) + torch.exp(-a * (xi + 1.0))) / denom

    scale = math.sqrt(denom / 2.0)  # sqrt(e^{-a} sinh a) = E[sin^2(sqrt(a) u)]^(1/2)
    return DualActivation(f"sine_{param}", fn, derivative,
                          activation=lambda x: torch.sin(math.sqrt(a) * x) / scale,
                          description=f"sinh({a:g} xi)/sinh({a:g}) of a normalized sin(sqrt({a:g}) x)")


def _hermite_monomial(param: str) -> DualActivation:
    if not param.isdigit():
        raise ValueError(f"hermite_<k> needs a non-negative integer degree k, got {param!r} (e.g. hermite_2).")
    k = int(param)
    return hermite_dual([0.0] * k + [1.0], name=f"hermite_{k}")


def _positive_float(text: str, pattern: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{pattern} needs a positive number, got {text!r} (e.g. sine_2.676).")
    return value


_OPTIMAL = {  # Hermite coefficients a_0..a_3 of the optimal activations (DESIGN §4)
    "opt3": (0.0, math.sqrt(0.5), 0.0, math.sqrt(0.5)),
    "opt5": (0.0, 0.5, math.sqrt(0.5), 0.5),
    "opt9": (0.0, 0.25, math.sqrt(7.0 / 8.0), 0.25),
}

_NAMED: dict[str, Callable[[], DualActivation]] = {}
_FAMILIES: dict[str, Callable[[str], DualActivation]] = {}


def register_dual(name: str, factory: Callable[..., DualActivation], family: bool = False) -> None:
    """Add a dual: ``factory()`` for a plain name, or ``factory(param: str)`` for a family whose
    names are ``<name>_<param>`` (``family=True``, like ``sine_<a>``)."""
    if "_" in name and family:
        raise ValueError(f"A family name may not contain '_' (its names are <name>_<param>), got {name!r}.")
    (_FAMILIES if family else _NAMED)[name] = factory


def available_duals() -> list[str]:
    """Registered names; families as ``<name>_<param>``."""
    return sorted(_NAMED) + [f"{f}_<param>" for f in sorted(_FAMILIES)]


register_dual("relu", _relu)
register_dual("erf", _erf)
register_dual("sine", _sine, family=True)
register_dual("hermite", _hermite_monomial, family=True)
for _name, _coeffs in _OPTIMAL.items():
    register_dual(_name, lambda c=_coeffs, n=_name: hermite_dual(c, name=n))


def dual_activation(activation: str | Sequence[float] | DualActivation, normalize: bool = False) -> DualActivation:
    """The :class:`DualActivation` for a name (see the module table), a list of normalized Hermite
    coefficients (``normalize=True`` rescales unnormalized ones), or a ready ``DualActivation``.

    Example:
        >>> relu = dual_activation("relu")
        >>> float(relu(torch.tensor(1.0, dtype=torch.float64)))
        1.0
        >>> dual_activation("opt3").regime()
        'singular kernel (beta=1)'
    """
    if isinstance(activation, DualActivation):
        return activation
    if isinstance(activation, str):
        key = activation.strip().lower()
        if key in _NAMED:
            return _NAMED[key]()
        family, _, param = key.partition("_")
        if param and family in _FAMILIES:
            return _FAMILIES[family](param)
        raise ValueError(
            f"Unknown dual activation {activation!r}. Known: {', '.join(available_duals())}, or a list of "
            "normalized Hermite coefficients. Add one with plugins.ntk.duals.register_dual(name, factory)."
        )
    if isinstance(activation, (Sequence, torch.Tensor)):
        return hermite_dual([float(c) for c in activation], normalize=normalize)
    raise TypeError(f"dual_activation takes a name, Hermite coefficients or a DualActivation, got {type(activation).__name__}.")
