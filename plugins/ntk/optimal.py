"""Consistent ("optimal") dual activations for any input dimension (Radhakrishnan, Belkin, Uhler).

A deep NNGP/NTK with a dual ``a`` such that ``0 < a'(0) < 1 < a'(1)`` tends to the singular kernel
``(1 - xi)^(-beta)`` with ``beta = log(1/a'(0)) / log a'(1)``; on the sphere in R^d that classifier
is consistent (Devroye's Hilbert kernel ``||x - z||^-(d-1)``) when ``beta = (d - 1)/2``. The
two-term duals ``a(xi) = c xi + (1 - c) xi^k`` have ``a'(0) = c`` and ``a'(1) = c + k(1 - c)``, so

    beta(c) = log(1/c) / log(c + k(1 - c)) = (d - 1)/2

fixes ``c`` for each degree ``k``; ``beta`` falls from infinity (c -> 0) to ``1/(k - 1)`` (c -> 1),
so a solution exists exactly when ``k > 1 + 2/(d - 1)``. The activation is the normalized Hermite
expansion ``phi = sqrt(c) h_1 + sqrt(1 - c) h_k`` (its dual is ``sum a_i^2 xi^i``).

The authors' ``2d_opt`` (``xi^7/2 + xi/2``) and ``3d_opt`` (``xi^3/2 + xi/2``) are the members
with ``c = 1/2``; the default degree is the one whose ``c`` is closest to 1/2, which gives those
two. Names: ``opt2`` (the authors' 2-d dual), ``optimal_<d>`` and ``optimal_<d>_<k>``.
"""

from __future__ import annotations

import math

from actsparse.plugins.ntk.duals import DualActivation, hermite_dual, register_dual

MAX_DEGREE = 64


def optimal_exponent(c: float, degree: int) -> float:
    """``beta = log(1/c) / log(c + k(1 - c))`` of the dual ``c xi + (1 - c) xi^k``."""
    return math.log(1.0 / c) / math.log(c + degree * (1.0 - c))


def optimal_coefficient(dim: int, degree: int) -> float:
    """The ``c`` in (0, 1) with ``beta(c) = (dim - 1)/2`` for ``a(xi) = c xi + (1 - c) xi^degree``
    (bisection to float64 precision; ``beta`` decreases strictly in ``c``)."""
    dim, degree = _check_dim(dim), int(degree)
    target = (dim - 1) / 2.0
    if degree < 2 or 1.0 / (degree - 1) >= target:
        least = math.floor(1 + 2.0 / (dim - 1)) + 1
        raise ValueError(
            f"No dual c xi + (1 - c) xi^{degree} is consistent in dimension {dim}: its beta is above "
            f"1/(k - 1) = {1.0 / max(degree - 1, 1e-300):.4g} for every c, and beta must be (d - 1)/2 = {target:g}. "
            f"Use a degree k >= {least}."
        )
    lo, hi = 1e-300, 1.0 - 1e-16  # beta(lo) > target > beta(hi)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if optimal_exponent(mid, degree) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-17:
            break
    return 0.5 * (lo + hi)


def default_degree(dim: int) -> int:
    """The degree ``k`` whose consistent ``c`` is closest to 1/2 (the authors' choice where one
    hits 1/2 exactly: k = 7 in 2-d, k = 3 in 3-d)."""
    dim = _check_dim(dim)
    least = math.floor(1 + 2.0 / (dim - 1)) + 1
    return min(range(max(2, least), MAX_DEGREE + 1), key=lambda k: abs(optimal_coefficient(dim, k) - 0.5))


def optimal_dual(dim: int, degree: int | None = None, name: str | None = None) -> DualActivation:
    """The consistent dual ``c xi + (1 - c) xi^k`` for data on the sphere in R^dim (``beta = (dim - 1)/2``).

    Example:
        >>> dual = optimal_dual(2)                     # the authors' 2d_opt: xi^7/2 + xi/2
        >>> [round(p, 12) for p in dual.poly]
        [0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]
        >>> round(dual.singular_exponent(), 12)
        0.5
    """
    dim = _check_dim(dim)
    k = default_degree(dim) if degree is None else int(degree)
    c = optimal_coefficient(dim, k)
    coeffs = [0.0] * (k + 1)
    coeffs[1], coeffs[k] = math.sqrt(c), math.sqrt(1.0 - c)
    return hermite_dual(coeffs, name=name or f"optimal_{dim}_{k}")


def _check_dim(dim: int) -> int:
    if int(dim) != dim or dim < 2:
        raise ValueError(f"The input dimension must be an integer >= 2 (the sphere in R^d has dimension d - 1), got {dim!r}.")
    return int(dim)


def _optimal_family(param: str) -> DualActivation:
    dim, _, degree = param.partition("_")
    if not dim.isdigit() or (degree and not degree.isdigit()):
        raise ValueError(f"optimal_<d> or optimal_<d>_<k> needs integers d >= 2 and k, got 'optimal_{param}' "
                         "(e.g. optimal_5 or optimal_2_7).")
    return optimal_dual(int(dim), int(degree) if degree else None,
                        name=f"optimal_{param}" if degree else f"optimal_{dim}")


def _opt2() -> DualActivation:
    """The authors' ``2d_opt``: ``xi^7/2 + xi/2`` (c = 1/2 exactly, so written out, not bisected)."""
    return hermite_dual([0.0, math.sqrt(0.5), 0.0, 0.0, 0.0, 0.0, 0.0, math.sqrt(0.5)], name="opt2")


register_dual("opt2", _opt2)
register_dual("optimal", _optimal_family, family=True)
