"""Exact per-site CETT calibration for many targets and many rows: the thresholds of
:func:`~actsparse.metrics.functional.threshold_for_cett` (the smallest importance value whose mean
CETT over *all* rows reaches the target), without one matmul over all rows per bisection step.

A 1,024-row subsample brackets each threshold (widened by the subsample's standard error) and
:func:`~actsparse.metrics.functional.cett_curve` gives the mean CETT over all rows at every
importance value inside the bracket at once. Curves are kept, so nearby targets (a search's later
ones) cost nothing; sets of at most 2,048 rows use the bisection itself. PPL-p% sparsity calibrates
every FFN site this way (:class:`actsparse.evaluation.calibration.Calibration`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from actsparse.metrics.functional.cett import (CETTCurve, CETTRows, bisect_thresholds, candidate_values, cett_curve,
                                               cett_rows, check_cett_targets, per_token_cett)

__all__ = ["MemoBisection", "SiteCalibration", "calibrate_thresholds"]


class MemoBisection:
    """:func:`~actsparse.metrics.functional.bisect_thresholds` on one set of rows, its candidate
    values computed once and its evaluations memoized across calls (later targets start from the
    tightest bracket)."""

    def __init__(self, rows: CETTRows) -> None:
        self.rows = rows
        self.values: torch.Tensor | None = None
        self.memo: dict[int, float] = {}

    def __call__(self, targets: Sequence[float]) -> list[float]:
        if self.values is None:
            self.values = candidate_values(self.rows.importance)
        return bisect_thresholds(self.rows, check_cett_targets(targets), values=self.values, memo=self.memo).tolist()


class SiteCalibration:
    """Exact thresholds of CETT targets on all rows of one site (the module docstring).

    Args:
        rows: the site tensor's rows ``[n, f]`` (real tokens).
        w_down: the down weight ``[d, f]``.
        dtype: arithmetic of the calibration.
        generator: draws the subsample.
        sample_rows: subsample size; sites with at most twice as many rows bisect on all of them.
        chunk_pairs: pairs of entries summed at a time by the curve (memory bound).
    """

    def __init__(self, rows: torch.Tensor, w_down: torch.Tensor, dtype: torch.dtype, generator: torch.Generator,
                 sample_rows: int = 1024, chunk_pairs: int = 1 << 22) -> None:
        self.rows = cett_rows(rows, w_down, dtype)
        self.n = self.rows.x.shape[0]
        self.chunk_pairs = chunk_pairs
        self.bisect_all = MemoBisection(self.rows)  # few rows, or a bracket missed
        self.curves: list[CETTCurve] = []
        self.sample: CETTRows | None = None
        self.spread: float | None = None
        if self.n > 2 * sample_rows:
            idx = torch.randperm(self.n, generator=generator)[:sample_rows].sort().values.to(self.rows.x.device)
            self.sample = self.rows.subset(idx)
            self.bisect_sample = MemoBisection(self.sample)
            self.fpc = math.sqrt(1 - sample_rows / self.n) / math.sqrt(sample_rows)

    def _sample_thresholds(self, targets: list[float]) -> list[float]:
        return self.bisect_sample([min(max(v, 0.0), 1.0) for v in targets])

    def _sample_spread(self, eps: float) -> float:
        """Standard error of the subsample's mean CETT at ``eps`` (per-token spread / sqrt(n))."""
        x = self.sample.x
        per_token = per_token_cett(self.sample, torch.tensor([eps], dtype=x.dtype, device=x.device))[0].double()
        return float(per_token.std()) * self.fpc if per_token.numel() > 1 else 1.0

    def _curve(self, lo: float, hi: float) -> CETTCurve:
        curve = cett_curve(self.rows, lo, hi, self.chunk_pairs)
        self.curves.append(curve)
        return curve

    def thresholds(self, targets: list[float], exact: bool = True) -> list[float]:
        """One threshold per target: exact on all rows, or (``exact=False``) the subsample's own."""
        if not exact and self.sample is not None:  # the subsample's own thresholds (exploration)
            return self._sample_thresholds(targets)
        if self.sample is None:  # few rows: the bisection of threshold_for_cett on all of them
            return self.bisect_all(targets)
        out: dict[float, float] = {}
        for t in targets:
            for curve in reversed(self.curves):
                got = curve.threshold(t)
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
                got = curve.threshold(t)
                if got is not None:
                    out[t] = got
            todo = [t for t in todo if t not in out]
            widen *= 3
        if todo:  # never seen in practice: fall back on the bisection over all rows
            out.update(zip(todo, self.bisect_all(todo)))
        return [out[t] for t in targets]


def calibrate_thresholds(x1: torch.Tensor, w_down: torch.Tensor, targets, dtype: torch.dtype = torch.float64,
                         sample_rows: int = 1024, seed: int = 0) -> torch.Tensor:
    """The thresholds of :func:`~actsparse.metrics.functional.threshold_for_cett` for the CETT
    ``targets`` (a float or a sequence; float64 ``[K]``), exact on all rows of ``x1``, computed as
    the module docstring says: for many rows and targets, far fewer passes over the rows.

    Example:
        >>> from actsparse.metrics.functional import threshold_for_cett
        >>> g = torch.Generator().manual_seed(0)
        >>> x1 = torch.relu(torch.randn(5000, 16, generator=g, dtype=torch.float64))
        >>> w = torch.randn(8, 16, generator=g, dtype=torch.float64)
        >>> bool((calibrate_thresholds(x1, w, [0.1, 0.5]) == threshold_for_cett(x1, w, [0.1, 0.5])).all())
        True
    """
    t = check_cett_targets(targets).tolist()
    site = SiteCalibration(x1, w_down, dtype, torch.Generator().manual_seed(seed), sample_rows=sample_rows)
    return torch.tensor(site.thresholds(t), dtype=torch.float64)
