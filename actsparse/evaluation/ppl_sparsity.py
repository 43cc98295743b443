"""PPL-p% sparsity (Sparsing Law, DESIGN §4): the largest CETT target whose truncated model
keeps ``exp(loss_truncated − loss_dense) <= 1 + p/100``, and the fraction of neurons it drops.

Procedure (and its cost, DESIGN §5):

1. **One dense pass** over the data: the dense loss, and a calibration sample of every FFN
   site's tensor ``x1`` (``calibration_tokens`` rows per site, spread over the batches).
2. Per-layer thresholds for any CETT target come from the calibration sample alone (vectorized
   bisection, :func:`actsparse.metrics.functional.cett.threshold_for_cett`; no data pass);
   per-neuron down-projection norms are computed once.
3. **Truncated passes**: each evaluates ``candidates`` CETT targets at once (the batch is
   replicated, one replica per target, each site drops its weak neurons per replica). The
   targets are placed by interpolating ``log Δloss`` against ``log target`` between the closest
   accepted and rejected points (safeguarded by bisection), and the search stops when the
   bracket ``[accepted, rejected]`` is narrower than ``tol``.

``passes`` counts data passes and ``forwards`` counts forwards in units of one dense forward
of the data (a pass with K replicas costs K); the benchmark ``bench/ppl_sparsity.py`` reports
wall time in units of one dense pass. A naive bisection pays one pass per step
(``log2(1/tol)`` ≈ 10 for ``tol = 1e-3``).

Under DDP (``torch.distributed`` initialized) every process passes its shard: losses and counts
are summed over processes, calibration samples are gathered, so every process takes the same
decisions and the result equals a single process on all the data.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from actsparse.evaluation.lm_loss import LossFn, causal_lm_loss
from actsparse.evaluation.truncation import ffn_sites, truncate
from actsparse.metrics.functional.cett import _bisect_thresholds, _check_targets, _prepare, candidate_values
from actsparse.metrics.functional.sparsity import count_active
from actsparse.runtime import all_cat, all_sum, distributed
from actsparse.plugins.sites import Site

__all__ = ["PPLSparsityResult", "ppl_p_sparsity"]


@dataclass
class PPLSparsityResult:
    """What :func:`ppl_p_sparsity` found (global values; ``local`` holds this process's sums)."""

    p: float
    sparsity: float  # fraction of dropped (weak or zero) neurons over all sites and tokens
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


class _Calibration:
    """The calibration sample of each site and the thresholds of any CETT target (cached)."""

    def __init__(self, sites: Sequence[Site], rows: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
        self.sites = sites
        self.prepared = {s.name: _prepare(rows[s.name], s.w_down.detach(), dtype) for s in sites}
        self.values = {name: candidate_values(prep[2]) for name, prep in self.prepared.items()}
        self.memo: dict[str, dict[int, float]] = {name: {} for name in self.prepared}
        self.seconds = 0.0
        self.cache: dict[float, dict[str, float]] = {}

    def thresholds(self, targets: Sequence[float]) -> list[dict[str, float]]:
        new = sorted({t for t in targets if t not in self.cache})
        if new:
            t = _check_targets(new)
            start = time.perf_counter()
            per_site = {name: _bisect_thresholds(*prep, t, values=self.values[name], memo=self.memo[name]).tolist()
                        for name, prep in self.prepared.items()}
            self.seconds += time.perf_counter() - start
            for i, target in enumerate(new):
                self.cache[target] = {name: eps[i] for name, eps in per_site.items()}
        return [self.cache[t] for t in targets]


def _dense_pass(model, sites, dataloader, loss_fn, max_batches, calibration_tokens, generator):
    n_batches = max_batches if max_batches is not None else (len(dataloader) if hasattr(dataloader, "__len__") else None)
    per_batch = None
    if calibration_tokens is not None and n_batches:
        per_batch = max(1, math.ceil(calibration_tokens / n_batches))
    rows: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}
    zeros = {s.name: torch.zeros(2, dtype=torch.float64) for s in sites}

    def hook(site: Site, x1: torch.Tensor) -> None:
        flat = x1.detach().reshape(-1, x1.shape[-1])
        zeros[site.name] += torch.tensor([flat.numel() - float(count_active(flat)), float(flat.numel())],
                                         dtype=torch.float64)
        if per_batch is not None and flat.shape[0] > per_batch:
            idx = torch.randperm(flat.shape[0], generator=generator)[:per_batch].sort().values
            flat = flat[idx.to(flat.device)]
        rows[site.name].append(flat.cpu() if flat.dtype in (torch.float32, torch.float64) else flat.float().cpu())

    per_batch_loss: list[tuple[float, int]] = []
    handles = [s.register_hook(hook) for s in sites]
    try:
        for batch in _batches(dataloader, max_batches):
            s, n = loss_fn(model, batch, 1)
            per_batch_loss.append((float(s[0]), int(n)))
    finally:
        for h in handles:
            h.remove()
    loss = torch.tensor([sum(v for v, _ in per_batch_loss)], dtype=torch.float64)
    tokens = sum(n for _, n in per_batch_loss)
    if tokens == 0 and not distributed():
        raise ValueError("The dataloader gave no tokens to score; PPL-p% sparsity needs evaluation data.")
    cat = {}
    for name, parts in rows.items():
        r = torch.cat(parts) if parts else torch.zeros(0, 1)
        if calibration_tokens is not None and r.shape[0] > calibration_tokens:  # unknown length: trim here
            idx = torch.randperm(r.shape[0], generator=generator)[:calibration_tokens].sort().values
            r = r[idx]
        cat[name] = r
    return loss, tokens, cat, zeros, per_batch_loss


def _truncated_pass(model, sites, dataloader, loss_fn, max_batches, settings: list[dict[str, float]], stride: int = 1):
    k = len(settings)
    eps = {s.name: torch.tensor([st[s.name] for st in settings], dtype=torch.float64) for s in sites}
    counts: dict[str, list[torch.Tensor]] = {}
    loss = torch.zeros(k, dtype=torch.float64)
    with truncate(model, eps, sites, counts):
        for i, batch in enumerate(_batches(dataloader, max_batches)):
            if i % stride == 0:
                s, _ = loss_fn(model, batch, k)
                loss += s.detach().cpu().double()
    site_counts = {name: torch.stack([c[0].cpu(), c[1].cpu()]) for name, c in counts.items()}  # [2, K]
    return loss, site_counts


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


class _Search:
    """Bracketing search for the largest target with Δloss <= limit, on one data set.

    ``evaluate(targets) -> [Δloss]`` is one data pass. Each round places ``k`` candidates:
    around the crossing interpolated between the bracket ends (a window of spacing 0.9 tol);
    without a rejected point yet, upwards from the largest accepted one.
    """

    def __init__(self, evaluate, p: float, tol: float, k: int) -> None:
        self.evaluate, self.p, self.tol, self.k = evaluate, p, tol, k
        self.limit = math.log1p(p / 100)
        self.points: dict[float, float] = {0.0: 0.0}
        self.rounds = 0
        self.expansions = 0
        self.step = 0.5  # first upward step: lo + 0.5·2 (no hint); set smaller after an exploration

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
        eps = tol / 8
        cands = sorted({round(min(max(c, lo + eps), hi - eps if self._hi_known() else hi), 12) for c in cands})
        cands = [c for c in cands if c not in self.points and lo < c <= hi]
        return cands[:k] or [round(0.5 * (lo + hi), 12)]

    def run(self, width: float, max_rounds: int, hint: float | None = None) -> None:
        while self.rounds < max_rounds:
            if self._hi_known() and self.hi - self.lo <= width:
                return
            if self.lo >= 1.0:
                return
            cands = self.candidates(hint)
            hint = None
            for t, g in zip(cands, self.evaluate(cands)):
                self.points[t] = g
            self.rounds += 1


@torch.no_grad()
def ppl_p_sparsity(
    model: nn.Module,
    dataloader: Iterable,
    p: float = 1.0,
    *,
    tol: float = 1e-3,
    candidates: int = 1,
    explore_fraction: float = 0.125,
    calibration_tokens: int | None = 1024,
    loss_fn: LossFn | None = None,
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
        candidates: CETT targets evaluated per truncated pass (batch replicated that many times).
        explore_fraction: share of the batches (every n-th) on which the crossing is located
            first, to within a few ``tol``; the final bracket is always on all the data.
            1.0 disables the exploration phase.
        calibration_tokens: rows of ``x1`` per site used to find thresholds (None: all tokens).
        loss_fn: ``(model, batch, repeats) -> (loss_sum [repeats], tokens)``;
            default :func:`~actsparse.evaluation.lm_loss.causal_lm_loss`.
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
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}.")
    if not 0 < explore_fraction <= 1:
        raise ValueError(f"explore_fraction must be in (0, 1], got {explore_fraction}.")
    sites = ffn_sites(model, sites)
    loss_fn = loss_fn or causal_lm_loss
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    try:
        dense_sum, tokens, rows, zero_counts, per_batch = _dense_pass(
            model, sites, dataloader, loss_fn, max_batches, calibration_tokens, generator)
        dense_seconds = time.perf_counter() - start
        local = {"dense_loss_sum": float(dense_sum), "tokens": float(tokens)}
        glob = all_sum(torch.tensor([float(dense_sum), float(tokens)], dtype=torch.float64))
        dense_loss, total_tokens = float(glob[0] / glob[1]), float(glob[1])
        rows = {name: all_cat(r) for name, r in rows.items()}
        calib = _Calibration(sites, rows, calibration_dtype)
        cost = {"passes": 1, "forwards": 1.0}
        n_batches = all_sum(torch.tensor([float(len(per_batch))]))  # the largest shard decides the stride
        stride = max(1, round(1 / explore_fraction)) if float(n_batches) >= 2 * round(1 / explore_fraction) else 1

        # Phase 1: locate the crossing on every `stride`-th batch.
        hint = None
        if stride > 1:
            sub = [(v, n) for i, (v, n) in enumerate(per_batch) if i % stride == 0]
            g_sub = all_sum(torch.tensor([sum(v for v, _ in sub), float(sum(n for _, n in sub))], dtype=torch.float64))
            sub_dense, sub_tokens = float(g_sub[0] / g_sub[1]), float(g_sub[1])

            def evaluate_sub(targets):
                loss, _ = _truncated_pass(model, sites, dataloader, loss_fn, max_batches,
                                          calib.thresholds(targets), stride)
                cost["passes"] += 1
                cost["forwards"] += len(targets) * sub_tokens / total_tokens
                return [float(v) / sub_tokens - sub_dense for v in all_sum(loss)]

            explore = _Search(evaluate_sub, p, tol, candidates)
            explore.run(width=2 * tol, max_rounds=max_passes // 2)
            hint = explore._crossing() if explore._hi_known() else explore.lo

        # Phase 2: the bracket on all the data.
        records: dict[float, dict[str, Any]] = {}

        def evaluate_full(targets):
            settings = calib.thresholds(targets)
            loss, counts = _truncated_pass(model, sites, dataloader, loss_fn, max_batches, settings)
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

        zero_local = torch.stack([zero_counts[s.name] for s in sites])  # [sites, 2]
        records[0.0] = {"loss_sum": float(dense_sum), "local": zero_local, "global": all_sum(zero_local.clone()),
                        "eps": {s.name: 0.0 for s in sites}}
        search = _Search(evaluate_full, p, tol, candidates)
        if hint is not None:
            search.step = tol  # the crossing is near the hint: widen by 2, 4, 8 ... tol
        search.run(width=tol, max_rounds=max_passes, hint=hint)
        lo, hi = search.lo, search.hi
        best = records[lo]
        g = best["global"]
        return PPLSparsityResult(
            p=float(p),
            sparsity=float(g[:, 0].sum() / g[:, 1].sum()),
            cett=lo,
            cett_rejected=hi,
            thresholds={name: float(e) for name, e in best["eps"].items()},
            site_sparsity={s.name: float(g[i, 0] / g[i, 1]) for i, s in enumerate(sites)},
            ppl_dense=math.exp(dense_loss),
            ppl_truncated=math.exp(dense_loss + search.points[lo]),
            passes=cost["passes"],
            forwards=cost["forwards"],
            seconds=time.perf_counter() - start,
            dense_seconds=dense_seconds,
            history=sorted((t, math.exp(g_)) for t, g_ in search.points.items()),
            calibration_seconds=calib.seconds,
            local={**local, "truncated_loss_sum": best["loss_sum"], "dropped": float(best["local"][:, 0].sum()),
                   "entries": float(best["local"][:, 1].sum())},
        )
    finally:
        model.train(was_training)
