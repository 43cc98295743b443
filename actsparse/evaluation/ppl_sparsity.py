"""PPL-p% sparsity (Sparsing Law, DESIGN §4): the largest CETT target whose truncated model
keeps ``exp(loss_truncated − loss_dense) <= 1 + p/100``, and the fraction of neurons it drops.

Procedure (and its cost, DESIGN §5):

1. **One dense pass** over the data: the dense loss, and every FFN site's tensor ``x1`` at every
   real token (pads, per :func:`~actsparse.evaluation.lm_loss.batch_mask`, are skipped), as the
   reference code does (``calibration_tokens`` samples rows instead, for very large data).
2. Per-layer thresholds for any CETT target are **exact on all those tokens** (the smallest
   importance value whose mean CETT reaches the target, as
   :func:`~actsparse.metrics.functional.threshold_for_cett` defines it), without a data pass: a
   1,024-row subsample brackets the threshold, and the mean CETT at every importance value inside
   the bracket comes from three matmuls over all rows plus scalar sums per entry and per pair of
   entries of one row inside the bracket (the Gram matrix ``WᵀW`` expands the norms). Curves are
   cached, so nearby targets are free. The exploration (step 3) uses the subsample's thresholds.
3. **Exploration** on every ``1/explore_fraction``-th batch: a power-law (log-log) secant search
   locates the crossing of ``Δloss`` with ``log(1 + p/100)`` on that subset to within ``5·tol``.
   A subset's ``Δloss`` is far from the whole data's (batches differ by several times), but
   nearly proportional to it across targets, so the subset's curve is kept as a *shape*.
4. **Truncated passes on all the data**, one target each by default (``candidates``: up to K
   targets per pass, the batch replicated once per target): the first pass evaluates the subset's
   crossing (with K >= 2, that crossing ± 4%); then each round predicts the crossing from the
   shape scaled through the evaluated points next to it and places one target at the prediction
   (past it while no bracket exists; Illinois-damped when one end stays, as ``Δloss`` is rough at
   fine scales, with jumps), one target just past a bracket end that is already close, or (K >= 2)
   two targets around a settled prediction. It stops when the bracket ``[accepted, rejected]`` is
   narrower than ``tol`` in CETT **and** than ``2·sparsity_tol`` in dropped fraction. The dropped
   fraction grows with the target (up to wiggles below 1e-5: a later site's inputs depend on the
   truncation before it), so the boundary's lies between the ends' and their midpoint,
   which is returned as ``sparsity``, is within ``sparsity_tol`` of it (the accepted end's
   fraction is ``sparsity_accepted``; a bracket half as wide would guarantee the same of the
   accepted end for about one more pass). Cost over the nine cases of
   ``bench/ppl_sparsity_sweep.py``: 6.4–9.9 forwards in all (mean 7.5, median 6.75), 5.4–7.9 with
   the CETT bracket alone (``sparsity_tol=None``).

``passes`` counts data passes and ``forwards`` counts forwards in units of one dense forward
of the data (a pass with K replicas costs K); the benchmark ``bench/ppl_sparsity.py`` reports
wall time in units of one dense pass. A naive bisection pays one pass per step
(``log2(1/tol)`` ≈ 10 for ``tol = 1e-3``).

Under DDP (``torch.distributed`` initialized) every process passes its shard: losses and counts
are summed over processes, calibration rows are gathered, so every process takes the same
decisions and the result equals a single process on all the data.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from actsparse.evaluation.lm_loss import LossFn, MaskFn, batch_mask, causal_lm_loss
from actsparse.evaluation.truncation import ffn_sites, real_rows, truncate
from actsparse.metrics.functional.cett import (_bisect_thresholds, _check_targets, _prepare, _weak_sums,
                                               candidate_values)
from actsparse.metrics.functional.sparsity import count_active
from actsparse.runtime import all_cat, all_sum, distributed
from actsparse.plugins.sites import Site

__all__ = ["PPLSparsityResult", "ppl_p_sparsity"]


@dataclass
class PPLSparsityResult:
    """What :func:`ppl_p_sparsity` found (global values; ``local`` holds this process's sums)."""

    p: float
    # PPL-p% sparsity: the dropped (weak or zero) fraction over all sites and real tokens at the
    # boundary, to within sparsity_tol: the midpoint of the bracket ends' fractions (once closed)
    sparsity: float
    cett: float  # the accepted CETT target
    cett_rejected: float  # the smallest rejected target (cett_rejected - cett <= tol once closed), 1.0 if none
    thresholds: dict[str, float]  # per-site epsilon at the accepted target
    site_sparsity: dict[str, float]  # per-site dropped fraction at the accepted target
    ppl_dense: float
    ppl_truncated: float
    passes: int  # data passes (the dense one included)
    forwards: float  # forwards in units of one dense pass over all the data (K replicas count K)
    seconds: float
    dense_seconds: float
    history: list[tuple[float, float]] = field(default_factory=list)  # (target, ppl ratio), all data
    calibration_seconds: float = 0.0  # spent finding thresholds (no data pass)
    local: dict[str, float] = field(default_factory=dict)
    sparsity_rejected: float = float("nan")  # dropped fraction at cett_rejected (nan if never evaluated)
    sparsity_accepted: float = float("nan")  # dropped fraction at cett (what thresholds drop)

    @property
    def ppl_ratio(self) -> float:
        return self.ppl_truncated / self.ppl_dense

    @property
    def cost_in_dense_passes(self) -> float:
        return self.seconds / self.dense_seconds if self.dense_seconds > 0 else float("nan")


def _batches(dataloader: Iterable, max_batches: int | None):
    for i, batch in enumerate(dataloader):
        if max_batches is not None and i >= max_batches:
            break
        yield batch


def _cett_curve(x: torch.Tensor, w: torch.Tensor, imp: torch.Tensor, y: torch.Tensor, lo: float, hi: float,
                chunk_pairs: int):
    """Mean CETT over the rows of ``x`` at ``lo`` and at every importance value in ``(lo, hi]``:
    ``(c_lo, values [u], mean CETT at each value [u])``.

    Per row, adding the bracket's entries in order of importance, ``‖tail + Σ_{q<=k} x_q W_q‖²``
    grows by ``2 x_q a_q + x_q² G_qq + 2 x_q Σ_{p<q} x_p G_pq`` (``tail`` the row's output from the
    entries at or below ``lo``, ``a = tail·W``, ``G = WᵀW``): scalars per entry and per pair of
    entries in one row, instead of a ``d``-vector per entry."""
    n = x.shape[0]
    acc = torch.float64
    dev = x.device
    r_idx, i_idx = ((imp > lo) & (imp <= hi)).nonzero(as_tuple=True)  # row-major
    m = r_idx.numel()
    rows, counts = torch.unique_consecutive(r_idx, return_counts=True)
    tail = torch.where(imp <= lo, x, 0.0) @ w.t()  # [n, d]
    tail_sq = tail.double().square().sum(-1)
    c0 = tail_sq.sqrt() / y.double()
    c_lo = float(c0.sum()) / max(n, 1)
    if m == 0:
        empty = torch.zeros(0, dtype=acc)
        return c_lo, empty, empty
    v = imp[r_idx, i_idx]
    order = torch.argsort(v, stable=True)
    order = order[torch.argsort(r_idx[order], stable=True)]  # by row, then by importance
    r_idx, i_idx, v = r_idx[order], i_idx[order], v[order].double()
    xv = x[r_idx, i_idx].to(acc)
    a = (tail @ w)[r_idx, i_idx].to(acc)  # tail·W_q
    gram = (w.t() @ w).to(acc)  # [f, f]
    starts = torch.cumsum(counts, 0) - counts
    group = torch.repeat_interleave(torch.arange(rows.numel(), device=dev), counts)
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
    before_row = torch.zeros(rows.numel(), dtype=acc, device=dev)
    before_row[1:] = cs[starts[1:] - 1]
    after = (tail_sq[r_idx] + cs - before_row[group]).clamp_min(0).sqrt() / y[r_idx].double()
    before = torch.empty_like(after)
    before[1:] = after[:-1]
    before[starts] = c0[rows]
    d = (after - before) / n
    order = torch.argsort(v)
    v, cum = v[order], torch.cumsum(d[order], 0)
    u, ucounts = torch.unique_consecutive(v, return_counts=True)
    return c_lo, u.cpu(), (c_lo + cum[torch.cumsum(ucounts, 0) - 1]).cpu()


class _Bisection:
    """``threshold_for_cett``'s bisection on one set of rows, its candidate values computed once
    and its evaluations memoized across calls (later targets start from the tightest bracket)."""

    def __init__(self, x: torch.Tensor, w: torch.Tensor, imp: torch.Tensor, y: torch.Tensor) -> None:
        self.data = (x, w, imp, y)
        self.values: torch.Tensor | None = None
        self.memo: dict[int, float] = {}

    def __call__(self, targets: Sequence[float]) -> list[float]:
        if self.values is None:
            self.values = candidate_values(self.data[2])
        return _bisect_thresholds(*self.data, _check_targets(targets), values=self.values, memo=self.memo).tolist()


class _SiteThresholds:
    """Exact per-site thresholds for CETT targets on all calibration rows (module docstring, step 2)."""

    def __init__(self, rows: torch.Tensor, w_down: torch.Tensor, dtype: torch.dtype, generator: torch.Generator,
                 sample_rows: int = 1024, chunk_pairs: int = 1 << 22) -> None:
        self.x, self.w, self.imp, self.y = _prepare(rows, w_down, dtype)
        self.n = self.x.shape[0]
        self.chunk_pairs = chunk_pairs
        self.bisect_all = _Bisection(self.x, self.w, self.imp, self.y)  # few rows, or a bracket missed
        self.curves: list[tuple[float, float, float, torch.Tensor, torch.Tensor]] = []
        self.sample = None
        self.spread: float | None = None
        if self.n > 2 * sample_rows:
            idx = torch.randperm(self.n, generator=generator)[:sample_rows].sort().values.to(self.x.device)
            self.sample = (self.x[idx], self.w, self.imp[idx], self.y[idx])
            self.bisect_sample = _Bisection(*self.sample)
            self.fpc = math.sqrt(1 - sample_rows / self.n) / math.sqrt(sample_rows)

    # -- the subsample: brackets -------------------------------------------------------------
    def _sample_thresholds(self, targets: list[float]) -> list[float]:
        return self.bisect_sample([min(max(v, 0.0), 1.0) for v in targets])

    def _sample_spread(self, eps: float) -> float:
        """Standard error of the subsample's mean CETT at ``eps`` (per-token spread / sqrt(n))."""
        x, w, imp, y = self.sample
        per_token = _weak_sums(x, w, imp, torch.tensor([eps], dtype=x.dtype, device=x.device), y)[0].double()
        return float(per_token.std()) * self.fpc if per_token.numel() > 1 else 1.0

    # -- all rows: the exact curve inside a bracket ------------------------------------------
    def _curve(self, lo: float, hi: float):
        """Mean CETT over all rows at ``lo`` and at every importance value in ``(lo, hi]``."""
        c_lo, u, c_u = _cett_curve(self.x, self.w, self.imp, self.y, lo, hi, self.chunk_pairs)
        curve = (lo, hi, c_lo, u, c_u)
        self.curves.append(curve)
        return curve

    @staticmethod
    def _resolve(curve, t: float) -> float | None:
        lo, hi, c_lo, u, c_u = curve
        if t <= 0:
            return 0.0 if lo == 0 else None
        if c_lo >= t:
            return None
        hit = (c_u >= t).nonzero()
        if hit.numel():
            return float(u[int(hit[0])])
        return float("inf") if hi == float("inf") else None

    def thresholds(self, targets: list[float], exact: bool = True) -> list[float]:
        if not exact and self.sample is not None:  # the subsample's own thresholds (exploration)
            return self._sample_thresholds(targets)
        if self.sample is None:  # few rows: the bisection of threshold_for_cett on all of them
            return self.bisect_all(targets)
        out: dict[float, float] = {}
        for t in targets:
            for curve in reversed(self.curves):
                got = self._resolve(curve, t)
                if got is not None:
                    out[t] = got
                    break
        todo = [t for t in targets if t not in out]
        widen = 1.0
        for _ in range(8):
            if not todo:
                break
            lo_t, hi_t = min(todo), max(todo)
            if self.spread is None:  # the subsample's standard error, once (at the first targets)
                mid = self._sample_thresholds([0.5 * (lo_t + hi_t)])[0]
                self.spread = self._sample_spread(mid if math.isfinite(mid) else 0.0)
            # the search's later targets lie within a few percent of its first ones: cover them too
            delta = widen * (4 * self.spread + 1e-4)
            t_lo, t_hi = 0.95 * lo_t - delta, 1.05 * hi_t + delta
            e_lo, e_hi = self._sample_thresholds([t_lo, t_hi])
            if t_lo <= 0:
                e_lo = 0.0
            if t_hi >= 1:
                e_hi = float("inf")
            curve = self._curve(e_lo, e_hi)
            for t in todo:
                got = self._resolve(curve, t)
                if got is not None:
                    out[t] = got
            todo = [t for t in todo if t not in out]
            widen *= 3
        if todo:  # never seen in practice: fall back on the bisection over all rows
            out.update(zip(todo, self.bisect_all(todo)))
        return [out[t] for t in targets]


class _Calibration:
    """Per-site thresholds of any CETT target (cached)."""

    def __init__(self, sites: Sequence[Site], rows: dict[str, torch.Tensor], dtype: torch.dtype,
                 generator: torch.Generator) -> None:
        start = time.perf_counter()
        self.sites = {s.name: _SiteThresholds(rows[s.name], s.w_down.detach().clone(), dtype, generator)
                      for s in sites}
        self.seconds = time.perf_counter() - start
        self.cache: dict[float, dict[str, float]] = {}
        self.rough: dict[float, dict[str, float]] = {}

    def thresholds(self, targets: Sequence[float], exact: bool = True) -> list[dict[str, float]]:
        """Per-site thresholds of each target: exact on all rows, or (``exact=False``, for the
        exploration phase) from the 1,024-row subsample of sites with more rows than 2,048."""
        cache = self.cache if exact else self.rough
        new = sorted({t for t in targets if t not in cache})
        if new:
            _check_targets(new)
            start = time.perf_counter()
            per_site = {name: st.thresholds(new, exact) for name, st in self.sites.items()}
            self.seconds += time.perf_counter() - start
            for i, target in enumerate(new):
                cache[target] = {name: eps[i] for name, eps in per_site.items()}
        return [cache[t] for t in targets]


@dataclass
class _Prepared:
    """A model made ready for truncated passes: its dense pass, calibration and data."""

    model: nn.Module
    sites: list[Site]
    dataloader: Iterable
    loss_fn: LossFn
    mask_fn: MaskFn
    max_batches: int | None
    dense_sum: float  # this process
    tokens: int  # this process
    dense_loss: float  # global mean
    total_tokens: float  # global
    per_batch: list[tuple[float, int]]
    calib: _Calibration
    zero_local: torch.Tensor  # [sites, 2]: exact zeros, entries (real tokens)
    dense_seconds: float


def _dense_pass(model, sites, dataloader, loss_fn, max_batches, calibration_tokens, generator, mask_fn=batch_mask):
    """One dense pass: loss per batch, calibration rows and exact-zero counts at real tokens."""
    n_batches = max_batches if max_batches is not None else (len(dataloader) if hasattr(dataloader, "__len__") else None)
    per_batch = None
    if calibration_tokens is not None and n_batches:
        per_batch = max(1, math.ceil(calibration_tokens / n_batches))
    rows: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}
    zeros = {s.name: torch.zeros(2, dtype=torch.float64) for s in sites}
    current: dict[str, Any] = {"mask": None}

    def hook(site: Site, x1: torch.Tensor) -> None:
        flat = real_rows(x1.detach(), current["mask"])[0]
        zeros[site.name] += torch.tensor([flat.numel() - float(count_active(flat)), float(flat.numel())],
                                         dtype=torch.float64)
        if per_batch is not None and flat.shape[0] > per_batch:
            idx = torch.randperm(flat.shape[0], generator=generator)[:per_batch].sort().values
            flat = flat[idx.to(flat.device)]
        rows[site.name].append(flat.cpu() if flat.dtype in (torch.float32, torch.float64) else flat.float().cpu())

    losses: list[tuple[float, int]] = []
    handles = [s.register_hook(hook) for s in sites]
    try:
        for batch in _batches(dataloader, max_batches):
            current["mask"] = mask_fn(batch)
            s, n = loss_fn(model, batch, 1)
            losses.append((float(s[0]), int(n)))
    finally:
        for h in handles:
            h.remove()
    loss = torch.tensor([sum(v for v, _ in losses)], dtype=torch.float64)
    tokens = sum(n for _, n in losses)
    if tokens == 0 and not distributed():
        raise ValueError("The dataloader gave no tokens to score; PPL-p% sparsity needs evaluation data.")
    cat = {}
    for name, parts in rows.items():
        r = torch.cat(parts) if parts else torch.zeros(0, 1)
        if calibration_tokens is not None and r.shape[0] > calibration_tokens:  # unknown length: trim here
            idx = torch.randperm(r.shape[0], generator=generator)[:calibration_tokens].sort().values
            r = r[idx]
        cat[name] = r
    return loss, tokens, cat, zeros, losses


def _prepare_model(model: nn.Module, dataloader: Iterable, *, loss_fn: LossFn | None = None,
                   mask_fn: MaskFn | None = None, sites=None, max_batches: int | None = None,
                   calibration_tokens: int | None = None, calibration_dtype: torch.dtype = torch.float32,
                   seed: int = 0) -> _Prepared:
    sites = ffn_sites(model, sites)
    loss_fn = loss_fn or causal_lm_loss
    mask_fn = mask_fn or batch_mask
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    dense_sum, tokens, rows, zero_counts, per_batch = _dense_pass(
        model, sites, dataloader, loss_fn, max_batches, calibration_tokens, generator, mask_fn)
    dense_seconds = time.perf_counter() - start
    glob = all_sum(torch.tensor([float(dense_sum), float(tokens)], dtype=torch.float64))
    rows = {name: all_cat(r) for name, r in rows.items()}
    calib = _Calibration(sites, rows, calibration_dtype, generator)
    return _Prepared(model=model, sites=sites, dataloader=dataloader, loss_fn=loss_fn, mask_fn=mask_fn,
                     max_batches=max_batches, dense_sum=float(dense_sum), tokens=int(tokens),
                     dense_loss=float(glob[0] / glob[1]), total_tokens=float(glob[1]), per_batch=per_batch,
                     calib=calib, zero_local=torch.stack([zero_counts[s.name] for s in sites]),
                     dense_seconds=dense_seconds)


def _truncated_pass(prep: _Prepared, settings: list[dict[str, float]], stride: int = 1):
    """Loss sums ``[K]`` and dropped/entries counts ``{site: [2, K]}`` (real tokens only) of one
    pass with K threshold settings (the batch replicated K times)."""
    k = len(settings)
    eps = {s.name: torch.tensor([st[s.name] for st in settings], dtype=torch.float64) for s in prep.sites}
    counted: dict[str, list[torch.Tensor]] = {}
    current: dict[str, Any] = {"mask": None}
    loss = torch.zeros(k, dtype=torch.float64)
    with truncate(prep.model, eps, prep.sites, counts=counted, count_mask=lambda: current["mask"]):
        for i, batch in enumerate(_batches(prep.dataloader, prep.max_batches)):
            if i % stride == 0:
                current["mask"] = prep.mask_fn(batch)
                s, _ = prep.loss_fn(prep.model, batch, k)
                loss += s.detach().cpu().double()
    counts = {s.name: torch.stack([c.cpu() for c in counted[s.name]]) if s.name in counted
              else torch.zeros(2, k, dtype=torch.float64) for s in prep.sites}
    return loss, counts


def _accepted(delta: float, p: float) -> bool:
    return delta <= math.log1p(p / 100)


def _power_law(points: Sequence[tuple[float, float]], t: float) -> float:
    """Δloss at ``t`` from evaluated ``(target, Δloss)`` points: a piecewise power law (log-log
    linear) between the two points around ``t``; below the first point, a power law through the
    origin; beyond the last, the end segment's (or the overall) exponent; linear in ``t`` where a
    segment is not positive and increasing (Δloss is rough at fine scales)."""
    pts = sorted((a, g) for a, g in points if a > 0)
    if not pts:
        return 0.0

    def exponent(a: tuple[float, float], b: tuple[float, float]) -> float | None:
        (ta, ga), (tb, gb) = a, b
        if ga > 0 and gb > ga and tb > ta:
            return min(max(math.log(gb / ga) / math.log(tb / ta), 0.5), 8.0)
        return None

    first, last = pts[0], pts[-1]
    overall = exponent(first, last) if len(pts) > 1 else None
    if t <= first[0]:
        gamma = (exponent(pts[0], pts[1]) if len(pts) > 1 else None) or overall or 2.0
        return max(first[1], 0.0) * (t / first[0]) ** gamma if t > 0 else 0.0
    if t >= last[0]:
        gamma = (exponent(pts[-2], pts[-1]) if len(pts) > 1 else None) or overall or 2.0
        return last[1] * (t / last[0]) ** gamma if last[1] > 0 else last[1] + (t - last[0]) * 1e-9
    j = next(i for i, (a, _) in enumerate(pts) if a >= t)
    a, b = pts[j - 1], pts[j]
    gamma = exponent(a, b)
    if gamma is not None:
        return a[1] * (t / a[0]) ** gamma
    return a[1] + (b[1] - a[1]) * (t - a[0]) / (b[0] - a[0])


def _solve(model: Callable[[float], float], limit: float, lo: float, hi: float) -> float:
    """The t in [lo, hi] where the increasing model first reaches ``limit`` (bisection on the model)."""
    if model(hi) <= limit:
        return hi
    if model(lo) >= limit:
        return lo
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if model(mid) < limit else (lo, mid)
    return 0.5 * (lo + hi)


class _Search:
    """Bracketing search for the largest target with Δloss <= limit on one data set (module
    docstring, step 3).

    ``evaluate(targets) -> [Δloss]`` is one data pass with ``len(targets)`` replicas. Each round
    predicts the crossing: a piecewise power law through the evaluated points, or, given
    ``shape`` (the ``(target, Δloss)`` points of an exploration on a data subset), that curve
    scaled to pass through the evaluated points next to the crossing (the subset's Δloss is
    nearly proportional to the whole data's). While one bracket end stays and the other keeps
    moving, the staying end counts closer to the limit (Illinois rule), so predictions land past
    the crossing instead of creeping up on it. Then it places:

    - with a shape and nothing evaluated yet, two targets at the subset's crossing ± 4%;
    - without a bracket, one target past the prediction (further each round it falls short);
    - one target just past a bracket end that already lies within the final width of the
      prediction (one pass closes the bracket);
    - two targets at the prediction ± half the final width, once the prediction has settled
      (moved by less than a third of that width in the last round);
    - otherwise one target at the prediction.

    The final width is ``tol`` in target, and, when ``sparsity`` (target -> dropped fraction,
    for evaluated targets) is given, the target width over which the dropped fraction grows by
    ``sparsity_width`` (slope from the evaluated points next to the crossing); the search stops
    when the bracket ``[accepted, rejected]`` is within both.
    """

    def __init__(self, evaluate: Callable[[list[float]], list[float]], p: float, tol: float, max_k: int = 2,
                 shape: dict[float, float] | None = None, sparsity: Callable[[float], float] | None = None,
                 sparsity_width: float | None = None, start: float = 0.1) -> None:
        self.evaluate, self.p, self.tol, self.max_k = evaluate, p, tol, max(1, max_k)
        self.limit = math.log1p(p / 100)
        self.shape = sorted(shape.items()) if shape else None
        self.sparsity, self.sparsity_width = sparsity, sparsity_width
        self.start = start
        self.first_spread = 0.04  # relative half-width of the first pass around an explored crossing
        self.points: dict[float, float] = {0.0: 0.0}
        self.rounds = 0
        self.last_prediction: float | None = None
        self.same_end = 0  # rounds in a row that moved the same bracket end
        self.moved_lo = False

    @property
    def lo(self) -> float:
        return max(t for t, g in self.points.items() if _accepted(g, self.p))

    @property
    def hi(self) -> float | None:
        rejected = [t for t, g in self.points.items() if not _accepted(g, self.p) and t > self.lo]
        return min(rejected) if rejected else None

    def _sparsity_slope(self, near: float) -> float | None:
        """d(dropped fraction)/d(target) between the two evaluated targets nearest ``near``."""
        evaluated = [t for t in self.points if t > 0]  # (from t = 0 it would be the mean slope)
        if self.sparsity is None or len(evaluated) < 2:
            return None
        a, b = sorted(sorted(evaluated, key=lambda t: abs(t - near))[:2])
        slope = (self.sparsity(b) - self.sparsity(a)) / (b - a)
        return slope if slope > 0 else None

    def width(self, near: float) -> float:
        """The final bracket width (in target) around ``near``."""
        slope = self._sparsity_slope(near)
        if slope is None or self.sparsity_width is None:
            return self.tol
        return min(self.tol, self.sparsity_width / slope)

    def closed(self) -> bool:
        lo, hi = self.lo, self.hi
        if lo >= 1.0:
            return True
        if hi is None or hi - lo > self.tol:
            return False
        return (self.sparsity is None or self.sparsity_width is None
                or self.sparsity(hi) - self.sparsity(lo) <= self.sparsity_width)

    def predict(self) -> float:
        """The crossing of Δloss with the limit, predicted from the points (and the shape)."""
        lo, hi = self.lo, self.hi
        top = 1.0 if hi is None else hi
        points = dict(self.points)
        if hi is not None and lo > 0 and self.same_end >= 2:
            # Illinois: the end that stays while the other keeps moving counts closer to the
            # limit, so the next prediction lands past the crossing (no one-sided creeping)
            stale = hi if self.moved_lo else lo
            points[stale] = self.limit + (points[stale] - self.limit) * 0.5 ** (self.same_end - 1)
        evaluated = [(t, g) for t, g in points.items() if t > 0]
        if not evaluated and self.shape is None:
            return min(self.start, top)
        if self.shape is None:
            return _solve(lambda t: _power_law(evaluated, t), self.limit, lo, top)
        shape = self.shape

        def subset(t: float) -> float:
            return _power_law(shape, t)

        # anchors: the bracket ends (those evaluated), else the points nearest the last prediction
        reach = 2 * max(t for t, _ in shape)  # anchors far outside the explored range mislead
        anchors = [t for t in (lo, hi) if t is not None and 0 < t and (t == lo or t <= reach)]
        if len(anchors) < 2:
            near = self.last_prediction if self.last_prediction is not None else lo
            others = sorted((t for t, _ in evaluated if t <= reach and t not in anchors), key=lambda t: abs(t - near))
            anchors = sorted({*anchors, *others[:2 - len(anchors)]})
        ratios = [(t, points[t] / subset(t)) for t in anchors if subset(t) > 0]
        if not ratios:
            return _solve(subset, self.limit, lo, top)
        if len(ratios) == 1:
            return _solve(lambda t: ratios[0][1] * subset(t), self.limit, lo, top)
        (ta, ra), (tb, rb) = ratios[0], ratios[-1]

        def scaled(t: float) -> float:
            w = min(max((t - ta) / (tb - ta), 0.0), 1.0)
            return (ra + (rb - ra) * w) * subset(t)

        return _solve(scaled, self.limit, lo, top)

    def candidates(self) -> list[float]:
        lo, hi = self.lo, self.hi
        pred = self.predict()
        w = self.width(pred)
        moved = abs(pred - self.last_prediction) if self.last_prediction is not None else float("inf")
        self.last_prediction = pred
        def lean(distance: float) -> float:  # further each round the predictions keep falling short
            return min(max(distance, w), 0.05 * pred) * 2 ** self.same_end

        if lo == 0 and hi is None:  # nothing evaluated near the crossing yet
            if self.shape is not None and self.max_k >= 2 and len(self.points) == 1:
                # the subset's crossing misses the data's by a few percent either way: bracket it
                cands = [pred * (1 - self.first_spread), pred * (1 + self.first_spread)]
            else:
                cands = [pred]
        elif hi is None:  # accepted points only: step past the prediction to get a bracket
            close = pred - lo < 0.6 * w and self.same_end < 2
            cands = [lo + 0.9 * w] if close else [pred + lean(pred - lo)]
        elif lo == 0:  # rejected points only
            close = hi - pred < 0.6 * w and self.same_end < 2
            cands = [hi - 0.9 * w] if close else [pred - lean(hi - pred)]
        else:
            span = hi - lo
            if span <= 2 * w:  # one point closes it: both halves within the width
                cands = [min(max(pred, hi - 0.95 * w), lo + 0.95 * w)]
            elif pred - lo < 0.6 * w:
                cands = [lo + 0.9 * w]
            elif hi - pred < 0.6 * w:
                cands = [hi - 0.9 * w]
            elif moved < w / 3 and self.max_k >= 2:  # the prediction has settled: close it in one pass
                cands = [pred - 0.45 * w, pred + 0.45 * w]
            else:
                cands = [min(max(pred, lo + 0.02 * span), hi - 0.02 * span)]
        top = 1.0 if hi is None else hi
        margin = min(w / 8, (top - lo) / 4)
        cands = sorted({round(min(max(c, lo + margin), top - margin if hi is not None else top), 12) for c in cands})
        cands = [c for c in cands if c not in self.points and lo < c <= top]
        return cands or [round(0.5 * (lo + top), 12)]

    def warn_if_open(self, caller: str, max_rounds: int) -> None:
        """A warning when the bracket is still open after the search (its passes ran out), pointing at
        the caller of ``caller`` (both callers are wrapped in ``torch.no_grad``)."""
        if not self.closed():
            warnings.warn(f"{caller}: the bracket was not closed in max_passes={max_rounds} passes; the result is "
                          f"the largest accepted target found ({self.lo:.6g}), and cett_rejected is 1.0 if no "
                          "target was rejected. Raise max_passes or loosen the tolerances.", stacklevel=4)

    def run(self, max_rounds: int) -> None:
        """Search until the bracket is closed, at most ``max_rounds`` passes."""
        while self.rounds < max_rounds and not self.closed():
            lo = self.lo
            cands = self.candidates()
            if all(c in self.points for c in cands):
                return  # the bracket is below the targets' resolution (1e-12): nothing new to evaluate
            for t, g in zip(cands, self.evaluate(cands)):
                self.points[t] = g
            self.rounds += 1
            moved_lo = self.lo != lo
            self.same_end = self.same_end + 1 if moved_lo == self.moved_lo else 1
            self.moved_lo = moved_lo


@torch.no_grad()
def ppl_p_sparsity(
    model: nn.Module,
    dataloader: Iterable,
    p: float = 1.0,
    *,
    tol: float = 1e-3,
    sparsity_tol: float | None = 1e-4,
    candidates: int = 1,
    explore_fraction: float = 0.125,
    calibration_tokens: int | None = None,
    loss_fn: LossFn | None = None,
    mask_fn: MaskFn | None = None,
    sites: Sequence[Site] | str | Sequence[str] | None = None,
    max_batches: int | None = None,
    max_passes: int = 40,
    calibration_dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> PPLSparsityResult:
    """PPL-p% sparsity of ``model`` on ``dataloader`` (see the module docstring).

    Args:
        model: a causal LM with FFN sites (actsparse's ``TinyLM``/``CausalLM``, Hugging Face
            ``*ForCausalLM``, ...); put into eval mode for the call.
        dataloader: evaluation batches, read several times (must give the same batches each time).
        p: allowed perplexity increase in percent (``> 0``).
        tol: width of the final bracket on the CETT target.
        sparsity_tol: the returned sparsity is within this of the boundary's: the final bracket is
            at most twice as wide in dropped fraction and its midpoint is returned (None: no such
            condition; the midpoint of the CETT bracket's fractions is returned all the same).
        candidates: at most this many CETT targets per truncated pass (batch replicated that many
            times); with two, the search closes a bracket around a settled prediction in one pass
            (fewer passes, more forwards: 7.79 against 7.46 on average in ``bench/ppl_sparsity_sweep.py``).
        explore_fraction: share of the batches (every n-th) on which the crossing is located
            first, to within ``5·tol``; the final bracket is always on all the data.
            1.0 disables the exploration phase.
        calibration_tokens: None (default, the reference): thresholds from ``x1`` at every real
            token; an int samples that many rows per site (faster, less accurate: about 1e-3 in
            sparsity at 1,024).
        loss_fn: ``(model, batch, repeats) -> (loss_sum [repeats], tokens)``;
            default :func:`~actsparse.evaluation.lm_loss.causal_lm_loss`.
        mask_fn: ``batch -> [B, T] bool mask of real tokens, or None``; default
            :func:`~actsparse.evaluation.lm_loss.batch_mask` (``attention_mask`` of a dict batch;
            targets ``!= -100`` of an ``(inputs, targets)`` batch). Pads are neither calibration
            rows nor counted entries.
        sites: restrict to these FFN sites (glob patterns or Site objects).
        max_passes: at most this many truncated passes on all the data (the exploration adds at
            most ``max_passes // 2`` on its subset); a bracket still open then gives a warning.

    Raises:
        ValueError: ``p <= 0``, ``tol`` outside (0, 1), no tokens.
        NoSitesError: the model has no FFN site with a down projection.

    Example:
        >>> from actsparse.models import TinyLM
        >>> _ = torch.manual_seed(0)
        >>> lm = TinyLM(d_model=32, n_layers=2, n_heads=2, activation="relu")
        >>> data = [torch.randint(0, 256, (4, 33)) for _ in range(2)]
        >>> r = ppl_p_sparsity(lm, data, p=1.0)
        >>> r.ppl_ratio <= 1.01, 0 <= r.cett <= 1, r.cett_rejected - r.cett <= 1e-3
        (True, True, True)
    """
    if not p > 0:
        raise ValueError(f"p must be > 0 (the allowed perplexity increase in percent), got {p}.")
    if not 0 < tol < 1:
        raise ValueError(f"tol must be in (0, 1), got {tol}.")
    if sparsity_tol is not None and not sparsity_tol > 0:
        raise ValueError(f"sparsity_tol must be > 0 or None, got {sparsity_tol}.")
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}.")
    if not 0 < explore_fraction <= 1:
        raise ValueError(f"explore_fraction must be in (0, 1], got {explore_fraction}.")
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        prep = _prepare_model(model, dataloader, loss_fn=loss_fn, mask_fn=mask_fn, sites=sites,
                              max_batches=max_batches, calibration_tokens=calibration_tokens,
                              calibration_dtype=calibration_dtype, seed=seed)
        sites, calib, per_batch = prep.sites, prep.calib, prep.per_batch
        dense_loss, total_tokens = prep.dense_loss, prep.total_tokens
        local = {"dense_loss_sum": prep.dense_sum, "tokens": float(prep.tokens)}
        cost = {"passes": 1, "forwards": 1.0}
        n_batches = all_sum(torch.tensor([float(len(per_batch))]))  # all shards' batches decide the stride
        stride = max(1, round(1 / explore_fraction)) if float(n_batches) >= 2 * round(1 / explore_fraction) else 1

        # Phase 1: the shape of Δloss near the crossing, on every `stride`-th batch.
        shape = None
        if stride > 1:
            sub = [(v, n) for i, (v, n) in enumerate(per_batch) if i % stride == 0]
            g_sub = all_sum(torch.tensor([sum(v for v, _ in sub), float(sum(n for _, n in sub))], dtype=torch.float64))
            sub_dense, sub_tokens = float(g_sub[0] / g_sub[1]), float(g_sub[1])

            def evaluate_sub(targets):
                loss, _ = _truncated_pass(prep, calib.thresholds(targets, exact=False), stride)
                cost["passes"] += 1
                cost["forwards"] += len(targets) * sub_tokens / total_tokens
                return [float(v) / sub_tokens - sub_dense for v in all_sum(loss)]

            explore = _Search(evaluate_sub, p, 5 * tol, max_k=1)
            explore.run(max_rounds=max_passes // 2)
            shape = dict(explore.points)

        # Phase 2: the bracket on all the data.
        records: dict[float, dict[str, Any]] = {}

        def evaluate_full(targets):
            settings = calib.thresholds(targets)
            loss, counts = _truncated_pass(prep, settings)
            cost["passes"] += 1
            cost["forwards"] += len(targets)
            gloss = all_sum(loss)
            out = []
            for i, t in enumerate(targets):
                local_counts = torch.stack([counts[s.name][:, i] for s in sites])  # [sites, 2]
                records[t] = {"loss_sum": float(loss[i]), "local": local_counts,
                              "global": all_sum(local_counts.clone()), "eps": settings[i]}
                out.append(float(gloss[i]) / total_tokens - dense_loss)
            return out

        def sparsity_at(t: float) -> float:
            g = records[t]["global"]
            return float(g[:, 0].sum() / g[:, 1].sum())

        records[0.0] = {"loss_sum": prep.dense_sum, "local": prep.zero_local,
                        "global": all_sum(prep.zero_local.clone()), "eps": {s.name: 0.0 for s in sites}}
        search = _Search(evaluate_full, p, tol, max_k=candidates, shape=shape, sparsity=sparsity_at,
                         sparsity_width=None if sparsity_tol is None else 2 * sparsity_tol)
        search.run(max_rounds=max_passes)
        search.warn_if_open("ppl_p_sparsity", max_passes)
        lo, hi = search.lo, search.hi
        best = records[lo]
        g = best["global"]
        ends = (lo, hi) if hi is not None and search.closed() else (lo, lo)
        rejected = records[ends[1]]["local"]
        return PPLSparsityResult(
            p=float(p),
            sparsity=0.5 * (sparsity_at(ends[0]) + sparsity_at(ends[1])),
            cett=lo,
            cett_rejected=1.0 if hi is None else hi,
            thresholds={name: float(e) for name, e in best["eps"].items()},
            site_sparsity={s.name: float(g[i, 0] / g[i, 1]) for i, s in enumerate(sites)},
            ppl_dense=math.exp(dense_loss),
            ppl_truncated=math.exp(dense_loss + search.points[lo]),
            passes=cost["passes"],
            forwards=cost["forwards"],
            seconds=time.perf_counter() - start,
            dense_seconds=prep.dense_seconds,
            history=sorted((t, math.exp(g_)) for t, g_ in search.points.items()),
            calibration_seconds=calib.seconds,
            local={**local, "truncated_loss_sum": best["loss_sum"], "dropped": float(best["local"][:, 0].sum()),
                   "entries": float(best["local"][:, 1].sum()), "dropped_rejected": float(rejected[:, 0].sum())},
            sparsity_rejected=sparsity_at(hi) if hi is not None else float("nan"),
            sparsity_accepted=sparsity_at(lo),
        )
    finally:
        model.train(was_training)
