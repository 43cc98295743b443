"""PPL-p% sparsity (Sparsing Law, DESIGN §4): the largest CETT target whose truncated model
keeps ``exp(loss_truncated − loss_dense) <= 1 + p/100``, and the fraction of neurons it drops.

Procedure (and its cost, DESIGN §5); this module composes three public pieces: the passes
(:mod:`actsparse.evaluation.passes`: steps 1 and 4's data passes), the calibration
(:mod:`actsparse.evaluation.calibration` on :mod:`actsparse.metrics.functional.cett_calibration`: step 2) and
the search (:mod:`actsparse.evaluation.bracket_search`: steps 3-4).

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
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from actsparse.evaluation.bracket_search import BracketSearch
from actsparse.evaluation.lm_loss import LossFn, MaskFn
from actsparse.evaluation.passes import prepare_model, truncated_pass
from actsparse.plugins.sites import Site
from actsparse.runtime import all_sum

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
        prep = prepare_model(model, dataloader, loss_fn=loss_fn, mask_fn=mask_fn, sites=sites,
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
                loss, _ = truncated_pass(prep, calib.thresholds(targets, exact=False), stride)
                cost["passes"] += 1
                cost["forwards"] += len(targets) * sub_tokens / total_tokens
                return [float(v) / sub_tokens - sub_dense for v in all_sum(loss)]

            explore = BracketSearch(evaluate_sub, p, 5 * tol, max_k=1)
            explore.run(max_rounds=max_passes // 2)
            shape = dict(explore.points)

        # Phase 2: the bracket on all the data.
        records: dict[float, dict[str, Any]] = {}

        def evaluate_full(targets):
            settings = calib.thresholds(targets)
            loss, counts = truncated_pass(prep, settings)
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
        search = BracketSearch(evaluate_full, p, tol, max_k=candidates, shape=shape, sparsity=sparsity_at,
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
