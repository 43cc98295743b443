"""Exact SDR theory of Ahmad & Hawkins (2016), "How do neurons operate on sparse distributed
representations?" (DESIGN §4): false matches of a dendritic segment, the union property,
robustness to noise and the optimal NMDA threshold.

Notation (the paper's): a population of ``n`` cells with ``a`` active; a dendritic segment
with ``s`` synapses fires when at least ``theta`` of them see active cells.

- Overlap set: the patterns of ``a`` active cells that share exactly ``b`` cells with the
  segment's ``s``: ``|Ω(n, a, s, b)| = C(s, b)·C(n − s, a − b)``.
- False match: ``P = Σ_{b=θ}^{min(s, a)} |Ω(n, a, s, b)| / C(n, a)`` (a hypergeometric tail).
- Union of ``m`` patterns on one segment: the segment then holds
  ``s_eff = round(n·(1 − (1 − s/n)^m))`` synapses, substituted for ``s`` (the paper's
  approximation; ``union_size="distribution"`` averages over the exact distribution of the
  union size instead).
- Noise: ``v = round(noise·a)`` of a stored pattern's active cells are replaced by cells
  outside it; the segment (``s`` synapses on the stored pattern, ``s ≤ a``) still fires when at
  most ``s − θ`` of its cells were removed:
  ``P_match = Σ_{b=0}^{s−θ} C(s, b)·C(a − s, v − b) / C(a, v)``.

Every function takes Python numbers, numpy arrays or torch tensors (broadcast together) and
returns a ``float`` for scalar input, else an array of the input's kind (numpy or torch).
Sums run in log space (``lgamma`` and logsumexp, float64), so they neither overflow nor
underflow for large populations (n = 20,000, a = 200, s up to a); ``log_*`` twins keep
probabilities far below 1e-308. ``method="exact"`` computes scalars with Python integers.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import torch

__all__ = [
    "false_match_probability",
    "log_false_match_probability",
    "union_false_match_probability",
    "log_union_false_match_probability",
    "union_synapse_count",
    "union_size_distribution",
    "overlap_set_size",
    "log_overlap_set_size",
    "match_probability_with_noise",
    "false_negative_probability",
    "noise_bits",
    "total_error",
    "optimal_threshold",
]

_DTYPE = torch.float64


# -- input handling ---------------------------------------------------------------------------

def _kind(*values: Any) -> str:
    if any(isinstance(v, torch.Tensor) for v in values):
        return "torch"
    if any(isinstance(v, (np.ndarray, list, tuple)) for v in values):
        return "numpy"
    return "scalar"


def _as_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", _DTYPE)
    return torch.as_tensor(np.asarray(value, dtype=np.float64))


def _integers(name: str, value: Any, minimum: int = 0) -> torch.Tensor:
    """``value`` as a float64 tensor of whole numbers >= ``minimum``, or a clear error."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got the bool {value!r}.")
    t = _as_tensor(value)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite integers, got {value!r}.")
    bad = t != torch.round(t)
    if bad.any():
        raise ValueError(
            f"{name} must be an integer (a count of cells or synapses), got {t[bad].flatten()[0].item()!r}; "
            "round it or pass whole numbers."
        )
    low = t < minimum
    if low.any():
        raise ValueError(f"{name} must be >= {minimum}, got {int(t[low].flatten()[0].item())}.")
    return t


def _require(condition: torch.Tensor, message: str, *pairs: tuple[str, torch.Tensor]) -> None:
    """Raise ``message`` (formatted with the first offending entry of each pair) where not ``condition``."""
    if bool(condition.all()):
        return
    where = ~condition
    shape = torch.broadcast_shapes(*(p[1].shape for p in pairs), where.shape)
    idx = where.expand(shape).flatten().nonzero()[0, 0].item()
    values = {name: int(t.expand(shape).flatten()[idx].item()) for name, t in pairs}
    raise ValueError(message.format(**values))


def _check_nast(n, a, s, theta=None):
    n, a, s = _integers("n", n, 1), _integers("a", a), _integers("s", s)
    _require(a <= n, "a={a} active cells cannot exceed the population n={n}; use a <= n.", ("a", a), ("n", n))
    _require(s <= n, "s={s} synapses cannot exceed the population n={n}; use s <= n.", ("s", s), ("n", n))
    if theta is None:
        return n, a, s
    theta = _integers("theta", theta)
    _require(theta <= s, "theta={theta} exceeds the segment's s={s} synapses, so it could never fire; "
             "use theta <= s.", ("theta", theta), ("s", s))
    return n, a, s, theta


def _out(result: torch.Tensor, kind: str, like: torch.Tensor | None = None):
    if kind == "scalar":
        return float(result.reshape(-1)[0]) if result.numel() == 1 else result.numpy()
    if kind == "torch":
        return result
    return result.numpy()


_TABLE_LIMIT = 10_000_000  # log-factorial table up to this size; lgamma beyond
_log_factorials = torch.zeros(1, dtype=_DTYPE)


def _log_factorial(x: torch.Tensor) -> torch.Tensor:
    """log(x!) for whole numbers x >= 0 (float64): a cached lgamma table, looked up (faster
    than lgamma on every term of a large grid); lgamma itself beyond the table's limit."""
    global _log_factorials
    top = int(x.max().item()) if x.numel() else 0
    if top >= _TABLE_LIMIT:
        return torch.lgamma(x.to(_DTYPE) + 1)
    if top >= _log_factorials.numel():
        size = max(top + 1, 2 * _log_factorials.numel(), 1024)
        _log_factorials = torch.lgamma(torch.arange(size, dtype=_DTYPE) + 1)
    return _log_factorials[x.long()]


def _log_comb(n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """log C(n, k) for whole 0 <= k <= n (float64); -inf outside that range."""
    n, k = torch.broadcast_tensors(n, k)
    valid = (k >= 0) & (k <= n)
    nn_, kk = torch.where(valid, n, 0.0), torch.where(valid, k, 0.0)
    value = _log_factorial(nn_) - _log_factorial(kk) - _log_factorial(nn_ - kk)
    return torch.where(valid, value, -math.inf)


def _log_hypergeom_tail(total: torch.Tensor, marked: torch.Tensor, draws: torch.Tensor,
                        lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log Σ_{b=lo}^{hi} C(marked, b)·C(total − marked, draws − b) / C(total, draws), broadcast.

    Empty ranges give -inf (probability 0). The terms are sums of log-factorials looked up at
    integer indices, clamped into the valid range and masked afterwards."""
    total, marked, draws, lo, hi = torch.broadcast_tensors(total, marked, draws, lo, hi)
    first = torch.clamp(draws - (total - marked), min=0)  # smallest possible overlap
    last = torch.minimum(marked, draws)  # largest possible overlap
    lo, hi = torch.maximum(lo, first), torch.minimum(hi, last)
    width = int(torch.clamp(hi - lo + 1, min=0).max().item()) if hi.numel() else 0
    if width == 0:
        return torch.full(total.shape, -math.inf, dtype=_DTYPE)
    n, s, a = total.long().unsqueeze(-1), marked.long().unsqueeze(-1), draws.long().unsqueeze(-1)
    b = lo.long().unsqueeze(-1) + torch.arange(width)
    keep = b <= hi.long().unsqueeze(-1)
    b = torch.minimum(torch.maximum(b, first.long().unsqueeze(-1)), last.long().unsqueeze(-1))  # valid everywhere
    lf = _log_factorial
    terms = (lf(s) - lf(b) - lf(s - b)) + (lf(n - s) - lf(a - b) - lf(n - s - a + b))
    terms = torch.where(keep, terms, -math.inf)
    norm = lf(total.long()) - lf(draws.long()) - lf((total - draws).long())
    return torch.logsumexp(terms, dim=-1) - norm


# -- false matches ----------------------------------------------------------------------------

def log_false_match_probability(n, a, s, theta):
    """Natural log of :func:`false_match_probability` (finite far below 1e-308; -inf when 0)."""
    kind = _kind(n, a, s, theta)
    n, a, s, theta = _check_nast(n, a, s, theta)
    return _out(_log_hypergeom_tail(n, s, a, theta, s), kind)


def false_match_probability(n, a, s, theta, method: str = "log"):
    """Probability that a random pattern of ``a`` active cells out of ``n`` makes a segment of
    ``s`` synapses with threshold ``theta`` fire (at least ``theta`` of its cells active).

    ``method="log"`` (default) is vectorized over broadcast arrays; ``"exact"`` sums Python
    integers (scalars only) and rounds the exact fraction to a float once.

    Example:
        >>> f"{false_match_probability(10_000, 300, 24, 12):.6e}"  # the paper's notebook: 8.37584522709849e-13
        '8.375845e-13'
        >>> f"{false_match_probability(20_000, 200, 200, 40):.6e}"  # C(20000, 200) ~ 1e486 overflows a float
        '9.193445e-41'
        >>> round(log_false_match_probability(20_000, 200, 200, 200), 2)  # 1/C(20000, 200): below 1e-308
        -1116.47
    """
    if method == "exact":
        if _kind(n, a, s, theta) != "scalar":
            raise ValueError("method='exact' sums Python integers for one scalar set of parameters; "
                             "use the default method='log' for arrays.")
        _check_nast(n, a, s, theta)
        n, a, s, theta = (int(round(float(v))) for v in (n, a, s, theta))
        num = sum(math.comb(s, b) * math.comb(n - s, a - b) for b in range(theta, min(s, a) + 1))
        return float(Fraction(num, math.comb(n, a)))
    if method != "log":
        raise ValueError(f"method must be 'log' or 'exact', got {method!r}.")
    kind = _kind(n, a, s, theta)
    return _out(torch.exp(_as_tensor(log_false_match_probability(n, a, s, theta))), kind)


def log_overlap_set_size(n, a, s, b):
    """log |Ω(n, a, s, b)| = log(C(s, b)·C(n − s, a − b)), vectorized (-inf where empty)."""
    kind = _kind(n, a, s, b)
    n, a, s = _check_nast(n, a, s)
    b = _integers("b", b)
    return _out(_log_comb(s, b) + _log_comb(n - s, a - b), kind)


def overlap_set_size(n: int, a: int, s: int, b: int) -> int:
    """|Ω(n, a, s, b)|: how many patterns of ``a`` active cells out of ``n`` share exactly ``b``
    cells with a fixed set of ``s`` (an exact Python integer; see :func:`log_overlap_set_size`).

    Example:
        >>> overlap_set_size(10, 3, 4, 2)  # C(4, 2)·C(6, 1)
        36
    """
    _check_nast(n, a, s)
    _integers("b", b)
    n, a, s, b = (int(round(float(v))) for v in (n, a, s, b))
    if b > s or a - b > n - s or b > a:
        return 0
    return math.comb(s, b) * math.comb(n - s, a - b)


# -- unions -----------------------------------------------------------------------------------

def union_synapse_count(n, s, m):
    """``s_eff = round(n·(1 − (1 − s/n)^m))``: the expected number of distinct synapses when
    ``m`` patterns of ``s`` synapses each share one segment (DESIGN §4)."""
    kind = _kind(n, s, m)
    n, s, m = _integers("n", n, 1), _integers("s", s), _integers("m", m)
    _require(s <= n, "s={s} synapses cannot exceed the population n={n}; use s <= n.", ("s", s), ("n", n))
    # round half up, as the paper's code (Python 2 round); floor(x + 0.5)
    eff = torch.floor(n * (1 - torch.pow(1 - s / n, m)) + 0.5)
    return int(eff.item()) if kind == "scalar" and eff.numel() == 1 else _out(eff, kind)


def union_size_distribution(n: int, s: int, m: int) -> np.ndarray:
    """Exact distribution of the number of distinct cells in the union of ``m`` independent
    uniformly random ``s``-subsets of ``n`` cells: ``p[u] = P(|union| = u)``, ``u = 0..n``.

    Each new subset adds ``k`` new cells with probability C(n − u, k)·C(u, s − k)/C(n, s)
    (a Markov chain over the union size, computed in log space)."""
    n, s, m = (int(_integers(name, v, lo).item()) for name, v, lo in (("n", n, 1), ("s", s, 0), ("m", m, 0)))
    if s > n:
        raise ValueError(f"s={s} synapses cannot exceed the population n={n}; use s <= n.")
    size = min(n, s * m) + 1
    p = torch.zeros(size, dtype=_DTYPE)
    p[0] = 1.0
    if m == 0:
        return p.numpy()
    nt, st = torch.tensor(float(n), dtype=_DTYPE), torch.tensor(float(s), dtype=_DTYPE)
    k = torch.arange(s + 1, dtype=_DTYPE)
    for step in range(m):
        reach = min(n, s * step)
        u = torch.arange(reach + 1, dtype=_DTYPE).unsqueeze(1)  # current sizes
        log_t = _log_comb(nt - u, k) + _log_comb(u, st - k) - _log_comb(nt, st)  # [u, k]
        trans = torch.exp(log_t) * p[: reach + 1].unsqueeze(1)
        new = torch.zeros(size, dtype=_DTYPE)
        target = (u + k).long().clamp(max=size - 1)
        valid = torch.isfinite(log_t) & ((u + k) <= n)
        new.index_add_(0, target[valid], trans[valid])
        p = new
    return (p / p.sum()).numpy()


def log_union_false_match_probability(n, a, s, theta, m, union_size: str = "expected"):
    """Natural log of :func:`union_false_match_probability`."""
    kind = _kind(n, a, s, theta, m)
    n_, a_, s_ = _check_nast(n, a, s)
    theta_ = _integers("theta", theta)
    m_ = _integers("m", m, 1)
    _require(theta_ <= s_, "theta={theta} exceeds the segment's s={s} synapses per pattern; use theta <= s.",
             ("theta", theta_), ("s", s_))
    if union_size == "expected":
        s_eff = _as_tensor(union_synapse_count(n_, s_, m_))
        return _out(_log_hypergeom_tail(n_, s_eff, a_, theta_, s_eff), kind)
    if union_size != "distribution":
        raise ValueError(f"union_size must be 'expected' or 'distribution', got {union_size!r}.")
    grid = torch.broadcast_tensors(n_, a_, s_, theta_, m_)
    flat = [g.reshape(-1) for g in grid]
    out = torch.empty(flat[0].shape, dtype=_DTYPE)
    for i, (ni, ai, si, ti, mi) in enumerate(zip(*flat)):
        p = torch.as_tensor(union_size_distribution(int(ni), int(si), int(mi)))
        u = torch.arange(p.numel(), dtype=_DTYPE)
        log_fm = _log_hypergeom_tail(ni, u, ai, ti, u)
        out[i] = torch.logsumexp(torch.log(p) + log_fm, 0)
    return _out(out.reshape(grid[0].shape), kind)


def union_false_match_probability(n, a, s, theta, m, union_size: str = "expected"):
    """False-match probability of a segment storing the union of ``m`` patterns, ``s`` synapses
    each: :func:`false_match_probability` with ``s`` replaced by
    ``s_eff = round(n·(1 − (1 − s/n)^m))`` (the paper's union property, DESIGN §4).

    ``union_size="distribution"`` averages the false-match probability over the exact
    distribution of the union's size (:func:`union_size_distribution`) instead of plugging in
    its rounded mean; that is what a simulation of random segments measures.

    Example:
        >>> f"{union_false_match_probability(10_000, 200, 25, 15, 10):.6e}"  # paper code: 0.000127080441383853
        '1.270804e-04'
    """
    kind = _kind(n, a, s, theta, m)
    return _out(torch.exp(_as_tensor(log_union_false_match_probability(n, a, s, theta, m, union_size))), kind)


# -- noise ------------------------------------------------------------------------------------

def noise_bits(a, noise):
    """``v = round(noise·a)`` (half up): active cells replaced by noise for a noise fraction."""
    a_t = _integers("a", a)
    noise_t = _as_tensor(noise)
    if ((noise_t < 0) | (noise_t > 1)).any() or not torch.isfinite(noise_t).all():
        raise ValueError(f"noise must be a fraction of the active cells in [0, 1], got {noise!r}.")
    return torch.floor(noise_t * a_t + 0.5)


def _noise_setup(a, s, theta, noise):
    a_t, s_t, theta_t = _integers("a", a), _integers("s", s), _integers("theta", theta)
    _require(s_t <= a_t, "s={s} synapses cannot all sit on a stored pattern of a={a} active cells; use s <= a.",
             ("s", s_t), ("a", a_t))
    _require(theta_t <= s_t, "theta={theta} exceeds the segment's s={s} synapses; use theta <= s.",
             ("theta", theta_t), ("s", s_t))
    return a_t, s_t, theta_t, noise_bits(a_t, noise)


def false_negative_probability(a, s, theta, noise):
    """Probability that a segment of ``s`` synapses on a stored pattern of ``a`` active cells
    fails to fire (fewer than ``theta`` matches) when ``noise·a`` of the pattern's active cells
    are replaced by cells outside it; ``n`` does not enter. Equals ``1 − match_probability``,
    computed as its own tail so that small values keep their precision.

    Example:
        >>> f"{false_negative_probability(128, 30, 12, 0.5):.6e}"  # paper code: 0.0716985160403564
        '7.169852e-02'
    """
    kind = _kind(a, s, theta, noise)
    a_t, s_t, theta_t, v = _noise_setup(a, s, theta, noise)
    # b = synapses whose cell was switched off: fails when b >= s - theta + 1
    log_p = _log_hypergeom_tail(a_t, s_t, v, s_t - theta_t + 1, s_t)
    return _out(torch.exp(log_p), kind)


def match_probability_with_noise(a, s, theta, noise):
    """Probability that the segment still recognizes its stored pattern after ``noise·a`` of the
    pattern's ``a`` active cells are replaced by noise (see the module docstring)."""
    kind = _kind(a, s, theta, noise)
    a_t, s_t, theta_t, v = _noise_setup(a, s, theta, noise)
    log_p = _log_hypergeom_tail(a_t, s_t, v, torch.zeros_like(s_t), s_t - theta_t)
    return _out(torch.exp(log_p), kind)


def total_error(n, a, s, theta, noise, false_positive_weight: float = 1.0):
    """``false_positive_weight·P(false match) + P(false negative at this noise)``."""
    kind = _kind(n, a, s, theta, noise)
    fp = _as_tensor(false_match_probability(n, a, s, theta))
    fn = _as_tensor(false_negative_probability(a, s, theta, noise))
    return _out(false_positive_weight * fp + fn, kind)


def optimal_threshold(n, a, s, noise, false_positive_weight: float = 1.0):
    """The threshold ``θ ∈ 1..s`` minimizing :func:`total_error` for given ``n, a, s`` and noise
    fraction (the smallest such θ on ties). Returns an ``int`` for scalars, else an integer array.

    Example:
        >>> optimal_threshold(10_000, 128, 30, 0.3)
        8
    """
    kind = _kind(n, a, s, noise)
    n_t, a_t, s_t = _check_nast(n, a, s)
    _require(s_t >= 1, "s={s}: a segment needs at least one synapse.", ("s", s_t))
    _require(s_t <= a_t, "s={s} synapses cannot all sit on a stored pattern of a={a} active cells; use s <= a.",
             ("s", s_t), ("a", a_t))
    v = noise_bits(a_t, noise)
    n_t, a_t, s_t, v = torch.broadcast_tensors(n_t, a_t, s_t, v)
    thetas = torch.arange(1, int(s_t.max().item()) + 1, dtype=_DTYPE)
    ex = lambda t: t.unsqueeze(-1)  # noqa: E731 - broadcast against the θ axis
    log_fp = _log_hypergeom_tail(ex(n_t), ex(s_t), ex(a_t), thetas, ex(s_t)) + math.log(false_positive_weight)
    log_fn = _log_hypergeom_tail(ex(a_t), ex(s_t), ex(v), ex(s_t) - thetas + 1, ex(s_t))
    err = torch.logaddexp(log_fp, log_fn)  # compared in log space: both may be far below 1e-308
    err = torch.where(thetas <= ex(s_t), err, torch.tensor(math.inf, dtype=_DTYPE))
    best = (err.argmin(-1) + 1).to(torch.int64)
    if kind == "scalar":
        return int(best.reshape(-1)[0]) if best.numel() == 1 else best.numpy()
    return best if kind == "torch" else best.numpy()
