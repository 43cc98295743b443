"""Per-site thresholds of any CETT target for a model's FFN sites, exact on all calibration rows
and cached by target, without a data pass (PPL-p% sparsity's step 2,
:mod:`actsparse.evaluation.ppl_sparsity`): one
:class:`~actsparse.metrics.functional.cett_calibration.SiteCalibration` per site.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch

from actsparse.metrics.functional.cett import check_cett_targets
from actsparse.metrics.functional.cett_calibration import SiteCalibration
from actsparse.plugins.sites import Site

__all__ = ["Calibration"]


class Calibration:
    """Per-site thresholds of any CETT target, cached by target; ``seconds`` is the time spent."""

    def __init__(self, sites: Sequence[Site], rows: dict[str, torch.Tensor], dtype: torch.dtype,
                 generator: torch.Generator) -> None:
        start = time.perf_counter()
        self.sites = {s.name: SiteCalibration(rows[s.name], s.w_down.detach().clone(), dtype, generator)
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
            check_cett_targets(new)
            start = time.perf_counter()
            per_site = {name: st.thresholds(new, exact) for name, st in self.sites.items()}
            self.seconds += time.perf_counter() - start
            for i, target in enumerate(new):
                cache[target] = {name: eps[i] for name, eps in per_site.items()}
        return [cache[t] for t in targets]
