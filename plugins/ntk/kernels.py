"""Deep NNGP and NTK kernels of infinitely wide networks on the sphere (DESIGN §4).

For inputs on the unit sphere and ``xi = x . z``:  ``Sigma^0 = xi``, ``Sigma^{l+1} = a(Sigma^l)``,
``K^0 = xi``, ``K^{l+1} = a(Sigma^l) + K^l a'(Sigma^l)``. ``depth`` counts hidden layers
(activations): a network with ``depth`` activations and ``depth + 1`` weight matrices, no biases,
in NTK parametrization has NNGP ``Sigma^depth`` and NTK ``K^depth`` (``tests/models/test_ntk_hermite.py``
checks the latter against the empirical NTK of a wide random MLP).

Numerics (float64, any depth): the recursions run in the log domain (``log|value|`` and sign),
so the off-diagonal entries that decay like ``a'(0)^L`` (the optimal duals lose a factor 2–16
per layer) keep their ratios instead of underflowing to 0, and the NTK is carried divided by its
diagonal ``K^l(1) = 1 + a'(1) K^{l-1}(1)`` (which grows like ``a'(1)^L``, or ``L + 1`` for ReLU).
``ntk_kernel(..., normalize=True)`` returns that ratio ``K^L / K^L(1)`` (diagonal 1; the same
kernel regression predictor, which is scale invariant); ``normalize=False`` returns ``K^L`` itself
and raises when it would overflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch

from actsparse.plugins.ntk.duals import DualActivation, dual_activation, from_log, signed_logsumexp, to_log

Tensor = torch.Tensor
KINDS = ("ntk", "nngp")
SPHERE_TOLERANCE = 1e-6
# Cosines this close to +-1 are taken as exactly +-1: the fixed point xi = 1 of an optimal dual is
# repelling (a'(1) = 2), so the rounding error of a diagonal x . x = 1 - 2e-16 would grow 2x per layer.
SNAP_TO_ONE = 1e-13
_LOG_FLOAT64_MAX = math.log(torch.finfo(torch.float64).max)


def check_cosines(xi: Tensor, tol: float = SPHERE_TOLERANCE) -> Tensor:
    """``xi`` as float64, clamped to [-1, 1]; a clear error when it is not a matrix of cosines."""
    xi = torch.as_tensor(xi).to(torch.float64)
    if torch.isnan(xi).any():
        raise ValueError("xi contains NaN; it must hold cosines x . z of unit vectors.")
    if xi.numel() and xi.abs().max() > 1.0 + tol:
        raise ValueError(
            f"xi must hold cosines x . z of points on the unit sphere, in [-1, 1]; got max |xi| = "
            f"{float(xi.abs().max()):.6g}. Normalize the inputs first: sphere_gram(x, z, normalize=True)."
        )
    xi = xi.clamp(-1.0, 1.0)
    return torch.where(xi.abs() >= 1.0 - SNAP_TO_ONE, torch.sign(xi), xi)


def to_sphere(x: Tensor, normalize: bool = False, tol: float = SPHERE_TOLERANCE) -> Tensor:
    """Rows of ``x`` as float64 unit vectors; off-sphere rows are an error unless ``normalize=True``."""
    x = torch.as_tensor(x).to(torch.float64)
    if x.dim() != 2:
        raise ValueError(f"Expected points as a [n, d] matrix, got shape {tuple(x.shape)}.")
    norms = x.norm(dim=1)
    if normalize:
        if (norms == 0).any():
            raise ValueError("A zero vector has no direction on the sphere; remove it before normalizing.")
        return x / norms[:, None]
    if norms.numel() and (norms - 1.0).abs().max() > tol:
        worst = int((norms - 1.0).abs().argmax())
        raise ValueError(
            f"Inputs must lie on the unit sphere (the dual-activation kernels are defined there); row {worst} "
            f"has norm {float(norms[worst]):.6g}. Pass normalize=True to project x / |x|."
        )
    return x


def sphere_gram(x: Tensor, z: Tensor | None = None, normalize: bool = False) -> Tensor:
    """``xi = x z^T`` (float64, ``[n_x, n_z]``) for points on the unit sphere."""
    x = to_sphere(x, normalize)
    z = x if z is None else to_sphere(z, normalize)
    if x.shape[1] != z.shape[1]:
        raise ValueError(f"x and z have different dimensions: {x.shape[1]} and {z.shape[1]}.")
    return check_cosines(x @ z.T)


class KernelDepthOverflow(OverflowError):
    """The log-magnitude of a kernel entry left float64's range (super-exponentially decaying duals)."""

    def __init__(self, message: str, depth: int | None = None) -> None:
        super().__init__(message)
        self.depth = depth


@dataclass
class LogKernel:
    """A kernel matrix as ``sign * exp(logabs)`` (entries far below float64's range stay exact)."""

    logabs: Tensor
    sign: Tensor

    def value(self) -> Tensor:
        """The float64 values (tiny entries underflow to 0 here, not before)."""
        return from_log(self.logabs, self.sign)

    def row_scaled(self) -> Tensor:
        """Each row divided by its largest magnitude. A test point's kernel-regression score
        ``k(x)^T K^{-1} Y`` only changes by a positive factor, so its predicted class does not
        change, while rows whose entries are all below 1e-308 stay resolvable."""
        top = self.logabs.amax(-1, keepdim=True)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        return from_log(self.logabs - top, self.sign)


def _depth_list(depths: int | Iterable[int]) -> list[int]:
    values = [depths] if isinstance(depths, int) else list(depths)
    if not values or any(int(d) != d or d < 0 for d in values):
        raise ValueError(f"depths must be non-negative integers, got {depths!r}.")
    return sorted({int(d) for d in values})


def ntk_log_scale(depth: int, activation: str | Sequence[float] | DualActivation = "relu") -> float:
    """``log K^depth(1)``, the NTK's diagonal on the sphere (``log(depth + 1)`` for ReLU)."""
    dual = dual_activation(activation)
    log_slope = _log_slope_at_one(dual)
    log_c = 0.0
    for _ in range(int(depth)):
        log_c = _softplus(log_c + log_slope)  # log(1 + a'(1) K^l(1))
    return log_c


def _softplus(t: float) -> float:
    """``log(1 + e^t)`` without overflow."""
    return t + math.log1p(math.exp(-t)) if t > 0 else math.log1p(math.exp(t))


def _log_slope_at_one(dual: DualActivation) -> float:
    slope = dual.slope_at_one
    if not (math.isfinite(slope) and slope > 0):
        raise ValueError(
            f"The NTK recursion needs a finite positive a'(1); {dual.name!r} has a'(1) = {slope}. "
            "Use the NNGP (kind='nngp') for this dual."
        )
    return math.log(slope)


def kernel_path(
    xi: Tensor,
    depths: int | Iterable[int],
    activation: str | Sequence[float] | DualActivation = "relu",
    kind: str = "ntk",
) -> Iterator[tuple[int, LogKernel]]:
    """Run the recursion once up to ``max(depths)`` and yield ``(depth, LogKernel)`` at each
    requested depth: the NNGP ``Sigma^depth`` or the NTK divided by its diagonal,
    ``K^depth / K^depth(1)``. Batched over any shape of ``xi``; float64."""
    if kind not in KINDS:
        raise ValueError(f"Unknown kernel kind {kind!r}; choose 'ntk' or 'nngp'.")
    dual = dual_activation(activation)
    wanted = _depth_list(depths)
    xi = check_cosines(xi)
    sig_log, sig_sign = to_log(xi)
    k_log, k_sign = sig_log.clone(), sig_sign.clone()
    log_c, log_slope = 0.0, (_log_slope_at_one(dual) if kind == "ntk" else 0.0)
    for depth in range(wanted[-1] + 1):
        if depth == wanted[0]:
            wanted.pop(0)
            yield depth, (LogKernel(k_log, k_sign) if kind == "ntk" else LogKernel(sig_log, sig_sign))
            if not wanted:
                return
        a_log, a_sign = dual.log_value(sig_log, sig_sign)
        at_one = (sig_log == 0.0) & (sig_sign > 0)
        if kind == "ntk":
            d_log, d_sign = dual.log_derivative(sig_log, sig_sign)
            log_c_next = _softplus(log_c + log_slope)
            terms = torch.stack([a_log - log_c_next, k_log + d_log + (log_c - log_c_next)], -1)
            k_log, k_sign = signed_logsumexp(terms, torch.stack([a_sign, k_sign * d_sign], -1))
            # |K(x, z)| <= K(1); at xi = 1 exactly K^l = K^l(1) by definition (no rounding drift).
            k_log = torch.where(at_one, 0.0, k_log.clamp(max=0.0))
            k_sign = torch.where(at_one, 1.0, k_sign)
            log_c = log_c_next
        # a(1) = 1 exactly: keep the (possibly repelling) fixed point xi = 1 where it is.
        sig_log = torch.where(at_one, 0.0, a_log.clamp(max=0.0))
        sig_sign = torch.where(at_one, 1.0, a_sign)
        if bool(((sig_log == -math.inf) & (sig_sign != 0)).any()):
            raise KernelDepthOverflow(
                f"{dual.name!r}: log|Sigma^{depth + 1}| overflows float64 (entries below exp(-1.8e308)); "
                f"a'(0) = 0 makes log|Sigma| grow like p^depth. Its deep limit (1-NN) is reached long before "
                f"this depth; stop at depth {depth}.", depth=depth
            )


@dataclass
class KernelProfile:
    """A depth-L kernel as a function of xi, tabulated by the exact recursion on a grid and read
    back by piecewise-linear interpolation of ``log|K|`` in ``t = atanh(xi)`` (fine near xi = +-1,
    where deep kernels are singular or vanish). Linear interpolation of a monotone profile is
    monotone, so nearest-neighbour orderings survive; ``xi = 1`` is exact. Cost: grid size x depth,
    independent of the number of points (``kernel_profiles``)."""

    t: Tensor
    logabs: Tensor
    sign: Tensor

    def locate(self, xi: Tensor) -> "ProfilePoints":
        """Where ``xi`` falls on the grid: computed once, it serves every profile of the same grid
        (all depths of one :func:`kernel_profiles` call), so each further depth costs one gather."""
        xi = check_cosines(xi)
        tq = torch.atanh(xi.clamp(-1.0 + SNAP_TO_ONE, 1.0 - SNAP_TO_ONE))
        hi = torch.searchsorted(self.t, tq.reshape(-1)).clamp(1, self.t.numel() - 1).reshape(tq.shape)
        lo = hi - 1
        w = ((tq - self.t[lo]) / (self.t[hi] - self.t[lo])).clamp(0.0, 1.0)
        return ProfilePoints(self.t, lo, hi, w, xi >= 1.0)

    def __call__(self, xi: Tensor, points: "ProfilePoints | None" = None) -> LogKernel:
        """The kernel at ``xi``; pass ``points = profile.locate(xi)`` of any profile on the same
        grid to skip locating ``xi`` again."""
        if points is None:
            points = self.locate(xi)
        elif points.t is not self.t and not torch.equal(points.t, self.t):
            raise ValueError("points were located on another grid; call this profile's locate(xi).")
        lo, hi, w = points.lo, points.hi, points.w
        l0, l1, s0, s1 = self.logabs[lo], self.logabs[hi], self.sign[lo], self.sign[hi]
        logabs, sign = torch.lerp(l0, l1, w), s0.clone()
        # across a sign change or a zero (or an infinite log), interpolate the values instead
        other = (s0 != s1) | ~torch.isfinite(logabs)
        if bool(other.any()):
            w_o = w[other]
            logabs[other], sign[other] = to_log((1 - w_o) * from_log(l0[other], s0[other]) + w_o * from_log(l1[other], s1[other]))
        logabs[points.exact_one], sign[points.exact_one] = 0.0, 1.0
        return LogKernel(logabs, sign)


@dataclass
class ProfilePoints:
    """Positions of cosines on a profile grid (:meth:`KernelProfile.locate`)."""

    t: Tensor
    lo: Tensor
    hi: Tensor
    w: Tensor
    exact_one: Tensor


def kernel_profiles(
    depths: int | Iterable[int],
    activation: str | Sequence[float] | DualActivation = "relu",
    kind: str = "ntk",
    grid_size: int = 8192,
    allow_overflow: bool = False,
) -> dict[int, KernelProfile]:
    """:class:`KernelProfile` of the (normalized) NTK or the NNGP at each depth, from one pass of
    the recursion over ``grid_size`` values of xi spaced uniformly in ``t = atanh(xi)`` between
    ``-+(1 - SNAP_TO_ONE)`` (which the recursion takes as -+1). ``allow_overflow=True`` returns only
    the depths reached before a :class:`KernelDepthOverflow` (hermite_<k> past depth ~log_k(1e308))."""
    edge = math.atanh(1.0 - SNAP_TO_ONE)
    t = torch.linspace(-edge, edge, int(grid_size), dtype=torch.float64)
    xi = torch.tanh(t)
    profiles = {}
    try:
        for d, k in kernel_path(xi, depths, activation, kind):
            profiles[d] = KernelProfile(t, k.logabs.clone(), k.sign.clone())
    except KernelDepthOverflow:
        if not allow_overflow:
            raise
    return profiles


def nngp_kernel(xi: Tensor, depth: int, activation: str | Sequence[float] | DualActivation = "relu") -> Tensor:
    """``Sigma^depth`` (float64, the shape of ``xi``): the NNGP kernel of a depth-``depth`` network.

    Example:
        >>> xi = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
        >>> round(nngp_kernel(xi, 1, "opt3")[0, 1].item(), 12)   # 0.5^3/2 + 0.5/2
        0.3125
    """
    _, kernel = next(kernel_path(xi, int(depth), activation, kind="nngp"))
    return kernel.value()


def ntk_kernel(
    xi: Tensor,
    depth: int,
    activation: str | Sequence[float] | DualActivation = "relu",
    normalize: bool = False,
) -> Tensor:
    """``K^depth`` (float64): the NTK of a depth-``depth`` network; ``normalize=True`` divides by
    its diagonal ``K^depth(1)`` (always finite; use it for deep kernels: ``K^depth(1)`` grows like
    ``a'(1)^depth``, 2^depth for the optimal duals).

    Example:
        >>> xi = torch.tensor([0.0, 1.0], dtype=torch.float64)
        >>> ntk_kernel(xi, 1, "relu").tolist()   # a(0) + 0 * a'(0), a(1) + 1 * a'(1)
        [0.3183098861837907, 2.0]
    """
    _, kernel = next(kernel_path(xi, int(depth), activation, kind="ntk"))
    if normalize:
        return kernel.value()
    log_c = ntk_log_scale(int(depth), activation)
    if log_c > _LOG_FLOAT64_MAX:
        raise OverflowError(
            f"K^{depth}(1) = exp({log_c:.1f}) overflows float64 for {dual_activation(activation).name!r}. "
            "Pass normalize=True for K^depth / K^depth(1): the same kernel-regression predictor."
        )
    return kernel.value() * math.exp(log_c)
