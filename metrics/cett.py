"""``CETT``: the mean cumulative error of tail truncation of an FFN site at a threshold (DESIGN §4)
as a torchmetrics ``Metric``, on :func:`actsparse.metrics.functional.cett.cett`."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric

from actsparse.metrics.functional.cett import cett_rows, per_token_cett

__all__ = ["CETT"]


class CETT(Metric):
    """Mean over tokens of ``‖Σ_{weak i} n_i‖₂ / ‖y‖₂`` at ``threshold``, streamed over batches
    (``update(x1, w_down)``; ``w_down`` ``[d, f]`` in ``nn.Linear`` layout, ``site.w_down``).
    Sums of per-token CETT (float64) and token counts reduce exactly over DDP processes.

    Example:
        >>> m = CETT(threshold=0.5)
        >>> m.update(torch.tensor([[1.0, 0.1]]), torch.eye(2))
        >>> m.update(torch.tensor([[1.0, 1.0]]), torch.eye(2))
        >>> m.compute()   # (0.0995 + 0) / 2
        tensor(0.0498, dtype=torch.float64)
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, threshold: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not float(threshold) >= 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}.")
        self.threshold = float(threshold)
        self.add_state("cett_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, x1: torch.Tensor, w_down: torch.Tensor) -> None:
        rows = cett_rows(x1.detach(), w_down.detach(), torch.float64)
        eps = torch.tensor([self.threshold], dtype=torch.float64, device=rows.x.device)
        per_token = per_token_cett(rows, eps)[0]
        self.cett_sum += per_token.sum().to(self.cett_sum.device)
        self.tokens += per_token.numel()

    def compute(self) -> torch.Tensor:
        if float(self.tokens) == 0:
            raise RuntimeError("CETT.compute() was called before update(): no tokens seen yet.")
        return self.cett_sum / self.tokens
