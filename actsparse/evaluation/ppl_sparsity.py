"""PPL-p% sparsity (Sparsing Law, DESIGN §4): the largest CETT target whose truncated model
keeps ``exp(loss_truncated − loss_dense) <= 1 + p/100``, and the fraction of neurons it drops.

Procedure (and its cost, DESIGN §5):

1. **One dense pass** over the data: the dense loss, and every FFN site's tensor ``x1`` at every
   real token (pads, per :func:`~actsparse.evaluation.lm_loss.batch_mask`, are skipped), as the
   reference code does (``calibration_tokens`` samples rows instead, for very large data).
2. Per-layer thresholds for any CETT target are **exact on all those tokens** (the smallest
   importance value whose mean CETT reaches the target, as
   :func:`~actsparse.metrics.functional.threshold_for_cett` defines it) at the cost of about one
   down projection of the data: a 2,048-row subsample brackets the threshold, and the mean CETT
   at every importance value inside the bracket comes from one matmul plus per-token prefix sums
   over the entries inside it (no data pass). Curves are cached, so nearby targets are free.
   The exploration phase (step 3) uses the subsample's thresholds alone.
3. **Truncated passes**: each evaluates ``candidates`` CETT targets at once (the batch is
   replicated, one replica per target, each site drops its weak neurons per replica). The
   targets are placed by interpolating ``log Δloss`` against ``log target`` between the closest
   accepted and rejected points (safeguarded by bisection), and the search stops when the
   bracket ``[accepted, rejected]`` is narrower than ``tol`` in CETT **and** than
   ``sparsity_tol`` in dropped fraction (the returned sparsity is within ``sparsity_tol`` of the
   boundary's).

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
    sparsity: float  # fraction of dropped (weak or zero) neurons over all sites and real tokens
    cett: float  # the accepted CETT target
    cett_rejected: float  # the smallest rejected target (cett_rejected - cett <= tol), 1.0 if none
    thresholds: dict[str, float]  # per-site epsilon at the accepted target
    site_sparsity: dict[str, float]
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


class _SiteThresholds:
    """Exact per-site thresholds for CETT targets on all calibration rows (module docstring, step 2)."""

    def __init__(self, rows: torch.Tensor, w_down: torch.Tensor, dtype: torch.dtype, generator: torch.Generator,
                 sample_rows: int = 2048, chunk_events: int = 1 << 16) -> None:
        self.x, self.w, self.imp, self.y = _prepare(rows, w_down, dtype)
        self.n = self.x.shape[0]
        self.chunk_events = chunk_events
        self.values: torch.Tensor | None = None  # all candidate values (direct bisection only)
        self.memo: dict[int, float] = {}
        self.curves: list[tuple[float, float, float, torch.Tensor, torch.Tensor]] = []
        self.sample = None
        self.spread: float | None = None
        if self.n > 2 * sample_rows:
            idx = torch.randperm(self.n, generator=generator)[:sample_rows].sort().values.to(self.x.device)
            s = (self.x[idx], self.w, self.imp[idx], self.y[idx])
            self.sample = (s, candidate_values(s[2]), {})
            self.fpc = math.sqrt(1 - sample_rows / self.n) / math.sqrt(sample_rows)

    # -- the subsample: brackets -------------------------------------------------------------
    def _sample_thresholds(self, targets: list[float]) -> list[float]:
        s, values, memo = self.sample
        t = _check_targets([min(max(v, 0.0), 1.0) for v in targets])
        return _bisect_thresholds(*s, t, values=values, memo=memo).tolist()

    def _sample_spread(self, eps: float) -> float:
        """Standard error of the subsample's mean CETT at ``eps`` (per-token spread / sqrt(n))."""
        x, w, imp, y = self.sample[0]
        per_token = _weak_sums(x, w, imp, torch.tensor([eps], dtype=x.dtype, device=x.device), y)[0].double()
        return float(per_token.std()) * self.fpc if per_token.numel() > 1 else 1.0

    # -- all rows: the exact curve inside a bracket ------------------------------------------
    def _curve(self, lo: float, hi: float):
        """Mean CETT over all rows at ``lo`` and at every importance value in ``(lo, hi]``."""
        x, w, imp, y = self.x, self.w, self.imp, self.y
        wt = w.t()
        inside = (imp > lo) & (imp <= hi)
        cum = inside.sum(1).cumsum(0).cpu()  # row chunks of about chunk_events entries
        total = int(cum[-1]) if cum.numel() else 0
        marks = (torch.arange(self.chunk_events, total + 1, self.chunk_events) if total >= self.chunk_events
                 else torch.zeros(0, dtype=cum.dtype))
        bounds = sorted({0, self.n, *torch.searchsorted(cum, marks, right=True).clamp(max=self.n).tolist()})
        c_lo = torch.zeros((), dtype=torch.float64)
        vs, ds = [], []
        for a, b in zip(bounds[:-1], bounds[1:]):
            if a == b:
                continue
            xs, ims, ys = x[a:b], imp[a:b], y[a:b].double()
            tail = ((xs * (ims <= lo)) @ wt).double()  # [r, d]
            c0 = torch.linalg.vector_norm(tail, dim=-1) / ys
            c_lo += c0.sum()
            r_idx, i_idx = inside[a:b].nonzero(as_tuple=True)  # row-major
            if r_idx.numel() == 0:
                continue
            v = ims[r_idx, i_idx]
            order = torch.argsort(v, stable=True)
            order = order[torch.argsort(r_idx[order], stable=True)]  # by row, then by value
            r_idx, i_idx, v = r_idx[order], i_idx[order], v[order]
            contrib = xs[r_idx, i_idx].double().unsqueeze(1) * wt[i_idx].double()  # [m, d]
            cs = contrib.cumsum(0)
            _, counts = torch.unique_consecutive(r_idx, return_counts=True)
            starts = torch.cumsum(counts, 0) - counts
            offset = torch.zeros(counts.numel(), cs.shape[1], dtype=cs.dtype, device=cs.device)
            offset[1:] = cs[starts[1:] - 1]
            prefix = tail[r_idx] + cs - offset.repeat_interleave(counts, 0)
            after = torch.linalg.vector_norm(prefix, dim=-1) / ys[r_idx]
            before = torch.empty_like(after)
            before[1:] = after[:-1]
            before[starts] = c0[r_idx[starts]]
            vs.append(v.double())
            ds.append(after - before)
        c_lo = float(c_lo) / self.n
        if vs:
            v = torch.cat(vs)
            d = torch.cat(ds) / self.n
            order = torch.argsort(v)
            v, cum = v[order], torch.cumsum(d[order], 0)
            u, counts = torch.unique_consecutive(v, return_counts=True)
            c_u = c_lo + cum[torch.cumsum(counts, 0) - 1]
        else:
            u = c_u = torch.zeros(0, dtype=torch.float64)
        curve = (lo, hi, c_lo, u.cpu(), c_u.cpu())
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
            if self.values is None:
                self.values = candidate_values(self.imp)
            return _bisect_thresholds(self.x, self.w, self.imp, self.y, _check_targets(targets),
                                      values=self.values, memo=self.memo).tolist()
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
            delta = widen * (4 * self.spread + 1e-4)
            e_lo, e_hi = self._sample_thresholds([lo_t - delta, hi_t + delta])
            if lo_t - delta <= 0:
                e_lo = 0.0
            if hi_t + delta >= 1:
                e_hi = float("inf")
            curve = self._curve(e_lo, e_hi)
            for t in todo:
                got = self._resolve(curve, t)
                if got is not None:
                    out[t] = got
            todo = [t for t in todo if t not in out]
            widen *= 3
        if todo:  # never seen in practice: fall back on the bisection over all rows
            if self.values is None:
                self.values = candidate_values(self.imp)
            for t, e in zip(todo, _bisect_thresholds(self.x, self.w, self.imp, self.y, _check_targets(todo),
                                                     values=self.values, memo=self.memo).tolist()):
                out[t] = e
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
        exploration phase) from the 2,048-row subsample of sites with more rows than 4,096."""
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
    return math.exp(delta) <= 1 + p / 100


def _interpolate(a: tuple[float, float], b: tuple[float, float], limit: float) -> float:
    """Where the line through a and b reaches ``limit``: log-log when both are positive, else linear."""
    (ta, ga), (tb, gb) = a, b
    if ta > 0 and ga > 0 and gb > 0 and tb != ta and ga != gb:
        gamma = (math.log(gb) - math.log(ga)) / (math.log(tb) - math.log(ta))
        if gamma > 0:
            return math.exp(math.log(ta) + (math.log(limit) - math.log(ga)) / gamma)
    if gb != ga:
        return ta + (limit - ga) * (tb - ta) / (gb - ga)
    return 0.5 * (ta + tb)


def _shifted_crossing(points: dict[float, float], t_a: float, g_a: float, limit: float) -> float | None:
    """Where the piecewise-linear curve through ``points`` (target -> Δloss on a data subset),
    shifted by ``g_a - curve(t_a)``, first reaches ``limit`` above ``t_a``; None if it does not."""
    pts = sorted(points.items())
    ts = [t for t, _ in pts]
    if len(pts) < 2 or not ts[0] <= t_a <= ts[-1]:
        return None
    j = max(i for i, t in enumerate(ts) if t <= t_a)
    if j + 1 < len(pts):
        (t0, g0), (t1, g1) = pts[j], pts[j + 1]
        g_sub = g0 + (g1 - g0) * (t_a - t0) / (t1 - t0) if t1 > t0 else g0
    else:
        g_sub = pts[j][1]
    shifted = limit - (g_a - g_sub)
    prev = (t_a, g_sub)
    for t, g in pts[j + 1:]:
        if g >= shifted:
            (t0, g0) = prev
            return t0 + (shifted - g0) * (t - t0) / (g - g0) if g > g0 else t
        prev = (t, g)
    return None


class _Search:
    """Bracketing search for the largest target with Δloss <= limit, on one data set.

    ``evaluate(targets) -> [Δloss]`` is one data pass. Each round places ``k`` candidates:
    around the crossing interpolated between the bracket ends (a window of spacing 0.9 tol);
    without a rejected point yet, upwards from the largest accepted one. ``narrow(lo, hi)`` is an
    extra stopping condition (the sparsity bracket); while it fails, the window shrinks with the
    bracket.
    """

    def __init__(self, evaluate, p: float, tol: float, k: int,
                 narrow: Callable[[float, float], bool] | None = None) -> None:
        self.evaluate, self.p, self.tol, self.k = evaluate, p, tol, k
        self.narrow = narrow
        self.limit = math.log1p(p / 100)
        self.points: dict[float, float] = {0.0: 0.0}
        self.rounds = 0
        self.expansions = 0
        self.step = 0.5  # first upward step: lo + 0.5·2 (no hint); set smaller after an exploration
        self.explored: dict[float, float] | None = None  # an exploration's points on a data subset
        self._last_move = (False, False)
        self.same_side = 0  # rounds in a row that moved the same bracket end (interpolation stalling)

    @property
    def lo(self) -> float:
        return max(t for t, g in self.points.items() if _accepted(g, self.p))

    @property
    def hi(self) -> float:
        rej = [t for t, g in self.points.items() if not _accepted(g, self.p) and t > self.lo]
        return min(rej) if rej else 1.0

    def _hi_known(self) -> bool:
        return self.hi in self.points

    def _crossing(self) -> float | None:
        lo, hi = self.lo, self.hi
        if not self._hi_known():
            return None
        return _interpolate((lo, self.points[lo]), (hi, self.points[hi]), self.limit)

    def candidates(self, hint: float | None) -> list[float]:
        lo, hi, tol, k = self.lo, self.hi, self.tol, self.k
        pred = self._crossing() if self._hi_known() else None
        if pred is not None and self.same_side >= 2 and hi - lo > 4 * tol:
            # the interpolation keeps landing on one side (a curved Δloss): bisect instead
            # (geometric midpoint: the crossing's scale is unknown)
            pred = math.sqrt(lo * hi) if lo > 0 else 0.5 * (lo + hi)
            self.same_side = 0
        g_lo = self.points[lo]
        if pred is None and hint is None and self.explored and lo > 0:
            # accepted points only: the exploration's curve, shifted to agree with this data at lo,
            # predicts the crossing; lean past it (a rejected point closes the bracket)
            pred = _shifted_crossing(self.explored, lo, g_lo, self.limit)
            if pred is not None:
                hint = pred = min(max(pred + 0.45 * tol, lo + tol), 1.0)
        if pred is None:
            pred = hint if hint is not None else min(1.0, max(4 * lo, 0.1))
            if hint is None and lo > 0:  # everything so far accepted: step up from lo, growing
                self.expansions += 1
                pred = min(1.0, lo + self.step * 2 ** self.expansions)
        pred = min(max(pred, lo), hi)
        if self._hi_known() or hint is not None:
            # a window of spacing 0.9 tol around the prediction; one candidate leans towards the
            # farther bracket end, so both ends keep moving (no one-sided regula falsi)
            if k > 1:
                cands = [pred + 0.9 * tol * (i - (k - 1) / 2) for i in range(k)]
            else:
                cands = [pred + (0.45 * tol if pred - lo < hi - pred else -0.45 * tol)]
        else:  # no rejected point yet: the prediction, and points up to the top
            cands = [pred] + [pred + (1.0 - pred) * (i + 1) / k for i in range(k - 1)]
        eps = min(tol / 8, (hi - lo) / 4)
        cands = sorted({round(min(max(c, lo + eps), hi - eps if self._hi_known() else hi), 12) for c in cands})
        cands = [c for c in cands if c not in self.points and lo < c <= hi]
        return cands[:k] or [round(0.5 * (lo + hi), 12)]

    def run(self, width: float, max_rounds: int, hint: float | None = None) -> None:
        while self.rounds < max_rounds:
            if self.lo >= 1.0:
                return
            if self._hi_known() and self.hi - self.lo <= width:
                if self.narrow is None or self.narrow(self.lo, self.hi):
                    return
                self.tol = min(self.tol, (self.hi - self.lo) / 2)
                if self.hi - self.lo < 1e-9:
                    return
            cands = self.candidates(hint)
            hint = None
            lo, hi = self.lo, self.hi
            for t, g in zip(cands, self.evaluate(cands)):
                self.points[t] = g
            self.rounds += 1
            moved = (self.lo != lo, self.hi != hi)
            self.same_side = self.same_side + 1 if moved[0] != moved[1] and moved == self._last_move else 1
            self._last_move = moved


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
        sparsity_tol: the final bracket is also at most this wide in dropped fraction (None: no
            such condition), so the returned sparsity is within it of the boundary's.
        candidates: CETT targets evaluated per truncated pass (batch replicated that many times).
        explore_fraction: share of the batches (every n-th) on which the crossing is located
            first, to within a few ``tol``; the final bracket is always on all the data.
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
        n_batches = all_sum(torch.tensor([float(len(per_batch))]))  # the largest shard decides the stride
        stride = max(1, round(1 / explore_fraction)) if float(n_batches) >= 2 * round(1 / explore_fraction) else 1

        # Phase 1: locate the crossing on every `stride`-th batch.
        hint = explored = None
        if stride > 1:
            sub = [(v, n) for i, (v, n) in enumerate(per_batch) if i % stride == 0]
            g_sub = all_sum(torch.tensor([sum(v for v, _ in sub), float(sum(n for _, n in sub))], dtype=torch.float64))
            sub_dense, sub_tokens = float(g_sub[0] / g_sub[1]), float(g_sub[1])

            def evaluate_sub(targets):
                loss, _ = _truncated_pass(prep, calib.thresholds(targets, exact=False), stride)
                cost["passes"] += 1
                cost["forwards"] += len(targets) * sub_tokens / total_tokens
                return [float(v) / sub_tokens - sub_dense for v in all_sum(loss)]

            explore = _Search(evaluate_sub, p, tol, candidates)
            explore.run(width=2 * tol, max_rounds=max_passes // 2)
            hint = explore._crossing() if explore._hi_known() else explore.lo
            explored = dict(explore.points)

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

        def narrow(lo: float, hi: float) -> bool:
            return sparsity_tol is None or (hi in records and sparsity_at(hi) - sparsity_at(lo) <= sparsity_tol)

        records[0.0] = {"loss_sum": prep.dense_sum, "local": prep.zero_local,
                        "global": all_sum(prep.zero_local.clone()), "eps": {s.name: 0.0 for s in sites}}
        search = _Search(evaluate_full, p, tol, candidates, narrow=narrow)
        if hint is not None:
            search.step = tol  # the crossing is near the hint: widen by 2, 4, 8 ... tol
            search.explored = explored
        search.run(width=tol, max_rounds=max_passes, hint=hint)
        lo, hi = search.lo, search.hi
        best = records[lo]
        g = best["global"]
        return PPLSparsityResult(
            p=float(p),
            sparsity=sparsity_at(lo),
            cett=lo,
            cett_rejected=hi,
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
                   "entries": float(best["local"][:, 1].sum())},
            sparsity_rejected=sparsity_at(hi) if hi in records else float("nan"),
        )
    finally:
        model.train(was_training)
