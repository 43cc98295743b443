"""CETT (cumulative errors of tail truncation) and activation ratio (DESIGN §4).

For an FFN site with tensor ``x1`` (the input of the down projection) and down weight
``W_down [d, f]``, neuron ``i`` of a token outputs ``n_i = x1_i · W_down[:, i]`` and is *weak* at
threshold ``ε`` when ``|x1_i| · ‖W_down[:, i]‖₂ <= ε``. For one token,
``CETT(ε) = ‖Σ_{weak i} n_i‖₂ / ‖y‖₂`` with ``y = W_down x1``; :func:`cett` averages it over tokens.

A neuron is weak when its importance is at or below the threshold (``importance <= ε``; the one
counting rule of :mod:`actsparse.metrics.functional.sparsity`): at ``ε = 0`` exactly the zero
entries are weak, so the dropped fraction at ``ε = 0`` is the activation sparsity. (The papers
write ``< ε``; the two differ only for neurons whose importance equals ``ε`` exactly.)

Calibration (the threshold of a CETT target, exact on all rows) builds on a few public pieces:
:func:`cett_rows` (a site's rows made ready once), :func:`per_token_cett` (CETT of every row at
given thresholds), :func:`bisect_thresholds` (the bisection of :func:`threshold_for_cett`, with
candidate values and evaluations reusable across calls) and :func:`cett_curve` (the mean CETT at
*every* importance value inside a bracket in one go, for many targets at once; its
:meth:`CETTCurve.threshold` reads a target's threshold off it).
:mod:`actsparse.metrics.functional.cett_calibration` combines them into exact thresholds for many
rows and targets (:func:`~actsparse.metrics.functional.cett_calibration.calibrate_thresholds`).

Truncating a model (zeroing the weak neurons of its FFN sites) is a procedure:
:func:`actsparse.evaluation.truncate`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["CETTCurve", "CETTRows", "bisect_thresholds", "candidate_values", "cett", "cett_curve", "cett_rows",
           "check_cett_targets", "neuron_norms", "per_token_cett", "threshold_for_cett"]


def _check(x1: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    if w_down.dim() != 2:
        raise ValueError(f"w_down must be [d, f] (nn.Linear layout), got shape {tuple(w_down.shape)}.")
    if x1.shape[-1] != w_down.shape[1]:
        raise ValueError(
            f"x1's last dim ({x1.shape[-1]}) must equal w_down's second dim f={w_down.shape[1]}: "
            "pass w_down in nn.Linear layout [d, f] (site.w_down), not transposed."
        )
    return x1.reshape(-1, x1.shape[-1])


def neuron_norms(w_down: torch.Tensor) -> torch.Tensor:
    """``‖W_down[:, i]‖₂`` for every neuron ``i`` (``[f]``); cache it, it only changes with the weights."""
    return torch.linalg.vector_norm(w_down, dim=0)


class CETTRows(NamedTuple):
    """A site's rows made ready for CETT (:func:`cett_rows`), computed once per set of rows."""

    x: torch.Tensor  # [n, f], the site tensor's rows in the arithmetic dtype
    w: torch.Tensor  # [d, f], the down weight in the same dtype and device
    importance: torch.Tensor  # [n, f], |x_i|·‖W_down[:, i]‖₂
    y_norm: torch.Tensor  # [n], ‖y‖₂ per row; +inf where y = 0 (such a row has CETT 0, not 0/0)

    def subset(self, idx: torch.Tensor) -> "CETTRows":
        """The rows ``idx`` (same weight)."""
        return CETTRows(self.x[idx], self.w, self.importance[idx], self.y_norm[idx])


def cett_rows(x1: torch.Tensor, w_down: torch.Tensor, dtype: torch.dtype | None = None) -> CETTRows:
    """``x1`` ``[..., f]`` as rows with their importances and output norms, in ``dtype`` (None:
    float64 for float64 input, else float32), for :func:`per_token_cett` and the calibration."""
    x = _check(x1, w_down)
    dtype = dtype or torch.promote_types(x.dtype, torch.float64 if x.dtype == torch.float64 else torch.float32)
    x, w = x.to(dtype), w_down.to(device=x.device, dtype=dtype)
    importance = x.abs() * neuron_norms(w)
    y_norm = torch.linalg.vector_norm(x @ w.t(), dim=-1)
    # A token with y = 0 has no output to lose: its CETT is 0 (not 0/0).
    y_norm = torch.where(y_norm > 0, y_norm, torch.full_like(y_norm, float("inf")))
    return CETTRows(x, w, importance, y_norm)


def per_token_cett(rows: CETTRows, eps: torch.Tensor) -> torch.Tensor:
    """CETT of every row at each threshold of ``eps`` (``[K]``): ``[K, rows]``, in the rows' dtype.

    Example:
        >>> per_token_cett(cett_rows(torch.tensor([[1.0, 0.1], [1.0, 1.0]]), torch.eye(2)), torch.tensor([0.5]))
        tensor([[0.0995, 0.0000]])
    """
    x, w, importance, y_norm = rows
    weak = importance.unsqueeze(0) <= eps.view(-1, 1, 1)  # [K, N, f]
    tail = torch.matmul(x.unsqueeze(0) * weak, w.t())  # [K, N, d]
    return torch.linalg.vector_norm(tail, dim=-1) / y_norm


def cett(x1: torch.Tensor, w_down: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ``‖Σ_{weak i} n_i‖₂ / ‖y‖₂`` at ``threshold`` (0-dim tensor).

    Computed in float64 whatever the input dtype (returned in ``x1``'s floating dtype), so
    float32 inputs give the float64 value rounded once. Tokens whose output ``y`` is zero count
    as CETT 0.

    Args:
        x1: site tensor ``[..., f]`` (tokens flattened).
        w_down: down projection weight ``[d, f]`` (``nn.Linear`` layout, ``site.w_down``).
        threshold: ``ε >= 0``; neuron ``i`` is weak when ``|x1_i|·‖W_down[:, i]‖₂ <= ε``.

    Example:
        >>> x1 = torch.tensor([[1.0, 0.1]])
        >>> w = torch.eye(2)
        >>> cett(x1, w, 0.5)   # the weak neuron carries 0.1 of an output of norm sqrt(1.01)
        tensor(0.0995)
    """
    if float(threshold) < 0:
        raise ValueError(f"threshold must be >= 0, got {float(threshold)}.")
    rows = cett_rows(x1, w_down, torch.float64)
    eps = torch.as_tensor(float(threshold), dtype=torch.float64, device=rows.x.device).view(1)
    out_dtype = x1.dtype if x1.is_floating_point() else torch.float32
    return per_token_cett(rows, eps)[0].mean().to(out_dtype)


def check_cett_targets(target) -> torch.Tensor:
    """``target`` (a float or a sequence) as a float64 ``[K]`` tensor; a clear error outside [0, 1]."""
    t = torch.as_tensor(target, dtype=torch.float64).reshape(-1)
    if t.numel() == 0 or bool(((t < 0) | (t > 1) | t.isnan()).any()):
        raise ValueError(f"CETT target must be in [0, 1], got {target!r}: CETT is a fraction of the output norm.")
    return t


def bisect_thresholds(rows: CETTRows, targets: torch.Tensor, chunk: int = 8192, values: torch.Tensor | None = None,
                      memo: dict[int, float] | None = None) -> torch.Tensor:
    """Vectorized bisection over the sorted importance values, one threshold per target
    (``targets`` from :func:`check_cett_targets`; float64 ``[K]`` result).

    Candidate thresholds are 0 and the distinct importance values ``0 = v_0 < v_1 < …`` plus
    ``+inf``; CETT only changes at them. For each target, the smallest candidate whose mean CETT
    reaches the target is returned (``v_0 = 0`` drops only zeros, CETT 0: a target of 0 gives 0). ``memo``
    (candidate index -> mean CETT) carries evaluations across calls: later targets start from
    the tightest bracket already known (a warm start for nearby targets); ``values`` are
    :func:`candidate_values` of ``rows.importance``, computed once by a caller that bisects often.
    """
    x, w, importance, y_norm = rows
    if values is None:
        values = candidate_values(importance)
    targets = targets.to(device=x.device, dtype=torch.float64)
    n = x.shape[0]

    memo = {} if memo is None else memo

    def mean_cett(idx: torch.Tensor) -> torch.Tensor:
        keys = idx.tolist()
        todo = sorted({i for i in keys if i not in memo})
        if todo:
            eps = values[torch.tensor(todo, device=values.device)]
            total = torch.zeros(len(todo), dtype=torch.float64, device=x.device)
            for s in range(0, n, chunk):
                part = CETTRows(x[s:s + chunk], w, importance[s:s + chunk], y_norm[s:s + chunk])
                total += per_token_cett(part, eps).sum(-1).double()
            memo.update(zip(todo, (total / max(n, 1)).tolist()))
        return torch.tensor([memo[i] for i in keys], dtype=torch.float64, device=x.device)

    top = values.numel() - 1
    met0 = mean_cett(torch.zeros(targets.numel(), dtype=torch.long)) >= targets  # only target 0
    known = sorted(memo.items())
    lo = torch.tensor([max([i for i, c in known if c < t] or [0]) for t in targets.tolist()], dtype=torch.long)
    hi = torch.tensor([min([i for i, c in known if c >= t and i > l] or [top]) for t, l in zip(targets.tolist(), lo.tolist())],
                      dtype=torch.long)
    # Invariant for the others: CETT(values[lo]) < target <= CETT(values[hi]) (the top is +inf:
    # every neuron weak, CETT 1 unless tokens have y = 0).
    while True:
        open_ = hi - lo > 1
        if not bool(open_.any()):
            break
        mid = torch.where(open_, (lo + hi) // 2, hi)
        ok = mean_cett(mid) >= targets
        hi = torch.where(open_ & ok, mid, hi)
        lo = torch.where(open_ & ~ok, mid, lo)
    return torch.where(met0, values[0].expand_as(hi), values[hi]).to(torch.float64)


def candidate_values(importance: torch.Tensor) -> torch.Tensor:
    """The thresholds at which CETT can change: 0 (drops only exact zeros, CETT 0), the sorted
    distinct importances, then ``+inf``."""
    values = torch.unique(torch.cat([importance.new_zeros(1), importance.reshape(-1)]))
    return torch.cat([values, values.new_tensor([float("inf")])])


def threshold_for_cett(x1: torch.Tensor, w_down: torch.Tensor, target, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The threshold ``ε`` whose mean CETT reaches ``target`` (bisection).

    CETT is a step function of ``ε`` (it changes only at the importance values
    ``|x1_i|·‖W_down[:, i]‖₂``), so "equals" means: the smallest such value ``ε`` with
    ``cett(x1, w_down, ε) >= target``; the next smaller candidate gives CETT below the target.
    ``+inf`` is returned when only dropping every neuron reaches the target.

    Args:
        target: a float in [0, 1] (0-dim result) or a sequence of them (one threshold each,
            solved together in one vectorized bisection).
        dtype: arithmetic of the search (float64 by default; float32 is faster, for large inputs).

    Example:
        >>> x1 = torch.tensor([[1.0, 0.1, 0.01]])
        >>> eps = threshold_for_cett(x1, torch.eye(3), 0.05)
        >>> round(float(eps), 6), float(cett(x1, torch.eye(3), eps)) >= 0.05   # drops the 0.1 and 0.01 neurons
        (0.1, True)
    """
    targets = check_cett_targets(target)
    eps = bisect_thresholds(cett_rows(x1, w_down, dtype), targets)
    return eps.reshape(()) if torch.as_tensor(target).dim() == 0 else eps


class CETTCurve(NamedTuple):
    """Mean CETT over a set of rows at ``lo`` and at every importance value in ``(lo, hi]``
    (:func:`cett_curve`): exact thresholds for every target whose crossing lies inside."""

    lo: float
    hi: float
    c_lo: float  # mean CETT at lo
    values: torch.Tensor  # the distinct importance values in (lo, hi], ascending (float64, CPU)
    cett: torch.Tensor  # mean CETT at each of them

    def threshold(self, target: float) -> float | None:
        """The smallest candidate threshold whose mean CETT reaches ``target`` (as
        :func:`threshold_for_cett` defines it), or None when the crossing is not inside the curve."""
        if target <= 0:
            return 0.0 if self.lo == 0 else None
        if self.c_lo >= target:
            return None
        hit = (self.cett >= target).nonzero()
        if hit.numel():
            return float(self.values[int(hit[0])])
        return float("inf") if self.hi == float("inf") else None


def cett_curve(rows: CETTRows, lo: float, hi: float, chunk_pairs: int = 1 << 22) -> CETTCurve:
    """Mean CETT over ``rows`` at ``lo`` and at every importance value in ``(lo, hi]``, exactly,
    without one matmul per value: cost grows with the entries inside the bracket, not with
    the candidate values (see :class:`CETTCurve`).

    Per row, adding the bracket's entries in order of importance, ``‖tail + Σ_{q<=k} x_q W_q‖²``
    grows by ``2 x_q a_q + x_q² G_qq + 2 x_q Σ_{p<q} x_p G_pq`` (``tail`` the row's output from the
    entries at or below ``lo``, ``a = tail·W``, ``G = WᵀW``): scalars per entry and per pair of
    entries in one row, instead of a ``d``-vector per entry; pairs are summed ``chunk_pairs`` at a time.

    Example:
        >>> rows = cett_rows(torch.tensor([[1.0, 0.1, 0.01]], dtype=torch.float64), torch.eye(3, dtype=torch.float64))
        >>> curve = cett_curve(rows, 0.0, float("inf"))
        >>> curve.values.tolist(), [round(c, 4) for c in curve.cett.tolist()]
        ([0.01, 0.1, 1.0], [0.0099, 0.1, 1.0])
        >>> curve.threshold(0.05)
        0.1
    """
    x, w, imp, y = rows
    n = x.shape[0]
    acc = torch.float64
    dev = x.device
    r_idx, i_idx = ((imp > lo) & (imp <= hi)).nonzero(as_tuple=True)  # row-major
    m = r_idx.numel()
    rows_, counts = torch.unique_consecutive(r_idx, return_counts=True)
    tail = torch.where(imp <= lo, x, 0.0) @ w.t()  # [n, d]
    tail_sq = tail.double().square().sum(-1)
    c0 = tail_sq.sqrt() / y.double()
    c_lo = float(c0.sum()) / max(n, 1)
    if m == 0:
        empty = torch.zeros(0, dtype=acc)
        return CETTCurve(lo, hi, c_lo, empty, empty)
    v = imp[r_idx, i_idx]
    order = torch.argsort(v, stable=True)
    order = order[torch.argsort(r_idx[order], stable=True)]  # by row, then by importance
    r_idx, i_idx, v = r_idx[order], i_idx[order], v[order].double()
    xv = x[r_idx, i_idx].to(acc)
    a = (tail @ w)[r_idx, i_idx].to(acc)  # tail·W_q
    gram = (w.t() @ w).to(acc)  # [f, f]
    starts = torch.cumsum(counts, 0) - counts
    group = torch.repeat_interleave(torch.arange(rows_.numel(), device=dev), counts)
    pos = torch.arange(m, device=dev) - starts[group]  # place of each entry in its row
    cross = torch.zeros(m, dtype=acc, device=dev)  # Σ_{p<q} x_p G_pq, in chunks of pairs
    pair_ends = torch.cumsum(pos, 0)
    q0 = 0
    while q0 < m:
        q1 = int(torch.searchsorted(pair_ends, pair_ends[q0] - pos[q0] + chunk_pairs, right=True))
        q1 = min(max(q1, q0 + 1), m)
        q_rep = torch.repeat_interleave(torch.arange(q0, q1, device=dev), pos[q0:q1])
        if q_rep.numel():
            first = torch.repeat_interleave(pair_ends[q0:q1] - pos[q0:q1], pos[q0:q1])
            p_rep = starts[group[q_rep]] + torch.arange(q_rep.numel(), device=dev) - (first - first[0])
            cross.index_add_(0, q_rep, xv[p_rep] * gram[i_idx[p_rep], i_idx[q_rep]])
        q0 = q1
    grow = xv * (2 * a + xv * gram[i_idx, i_idx] + 2 * cross)
    cs = torch.cumsum(grow, 0)
    before_row = torch.zeros(rows_.numel(), dtype=acc, device=dev)
    before_row[1:] = cs[starts[1:] - 1]
    after = (tail_sq[r_idx] + cs - before_row[group]).clamp_min(0).sqrt() / y[r_idx].double()
    before = torch.empty_like(after)
    before[1:] = after[:-1]
    before[starts] = c0[rows_]
    d = (after - before) / n
    order = torch.argsort(v)
    v, cum = v[order], torch.cumsum(d[order], 0)
    u, ucounts = torch.unique_consecutive(v, return_counts=True)
    return CETTCurve(lo, hi, c_lo, u.cpu(), (c_lo + cum[torch.cumsum(ucounts, 0) - 1]).cpu())
