"""GO-term prediction metrics as torchmetrics: ``Fmax``, ``Smin`` and ``AUPR`` (micro or macro).

All three are protein-centric or need every score at once, so they keep the scores and labels
in list states with ``dist_reduce_fx="cat"``: under DDP ``compute()`` sees every process's
proteins and gives exactly the single-process value (memory: ``proteins x terms`` floats).
The definitions are those of :mod:`actsparse.metrics.functional.go_terms`.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from actsparse.metrics.functional.go_terms import aupr, fmax, smin

__all__ = ["AUPR", "Fmax", "Smin"]


class _GOMetric(Metric):
    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        """``preds``: scores in [0, 1] (apply a sigmoid to logits first); ``targets``: 0/1; both ``[proteins, terms]``."""
        preds, targets = torch.as_tensor(preds), torch.as_tensor(targets)
        if preds.shape != targets.shape or preds.dim() != 2:
            raise ValueError(f"{type(self).__name__}.update: preds and targets must both be [proteins, terms]; "
                             f"got {tuple(preds.shape)} and {tuple(targets.shape)}.")
        previous = self.preds[0] if isinstance(self.preds, list) and self.preds else None
        if previous is not None and previous.shape[1] != preds.shape[1]:
            raise ValueError(f"{type(self).__name__}.update: {preds.shape[1]} terms now, {previous.shape[1]} before; "
                             "every update must score the same GO-term vocabulary.")
        self.preds.append(preds.detach().float())
        self.targets.append(targets.detach().to(torch.uint8))

    def _gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        if (isinstance(self.preds, list) and not self.preds) or (isinstance(self.preds, torch.Tensor) and not self.preds.numel()):
            raise RuntimeError(f"{type(self).__name__}.compute() was called before update(): no proteins yet.")
        return dim_zero_cat(self.preds), dim_zero_cat(self.targets)


class Fmax(_GOMetric):
    """Protein-centric Fmax over thresholds 0.01 … 0.99 (DESIGN §3; :func:`~actsparse.metrics.functional.go_terms.fmax`).

    Example:
        >>> metric = Fmax()
        >>> metric.update(torch.tensor([[0.9, 0.2, 0.6]]), torch.tensor([[1, 0, 0]]))
        >>> metric.update(torch.tensor([[0.1, 0.8, 0.3]]), torch.tensor([[0, 1, 1]]))
        >>> metric.compute()
        tensor(0.8571, dtype=torch.float64)
    """

    higher_is_better = True

    def __init__(self, thresholds: torch.Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.thresholds = thresholds

    def compute(self) -> torch.Tensor:
        preds, targets = self._gathered()
        return fmax(preds, targets, self.thresholds)


class Smin(_GOMetric):
    """Minimum semantic distance (:func:`~actsparse.metrics.functional.go_terms.smin`); information
    content from ``ic`` (one value per term) or, by default, from the label frequencies of every
    protein seen (on all processes).

    Example:
        >>> metric = Smin(ic=torch.tensor([1.0, 2.0, 2.0]))
        >>> metric.update(torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.8, 0.3]]), torch.tensor([[1, 0, 0], [0, 1, 1]]))
        >>> metric.update(torch.tensor([[0.7, 0.1, 0.1], [0.8, 0.1, 0.2]]), torch.tensor([[1, 0, 0], [1, 0, 0]]))
        >>> metric.compute()
        tensor(0.5000, dtype=torch.float64)
    """

    higher_is_better = False

    def __init__(self, ic: torch.Tensor | None = None, thresholds: torch.Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ic = None if ic is None else torch.as_tensor(ic, dtype=torch.float64)
        self.thresholds = thresholds

    def compute(self) -> torch.Tensor:
        preds, targets = self._gathered()
        return smin(preds, targets, self.ic, self.thresholds)


class AUPR(_GOMetric):
    """Area under the precision-recall curve, ``average="micro"`` (all protein-term pairs) or
    ``"macro"`` (mean over terms with a positive); :func:`~actsparse.metrics.functional.go_terms.aupr`.

    Example:
        >>> metric = AUPR(average="macro")
        >>> metric.update(torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.8, 0.3]]), torch.tensor([[1, 0, 0], [0, 1, 1]]))
        >>> metric.compute()
        tensor(0.8333, dtype=torch.float64)
    """

    higher_is_better = True

    def __init__(self, average: str = "micro", **kwargs: Any) -> None:
        if average not in ("micro", "macro"):
            raise ValueError(f"AUPR: average must be 'micro' or 'macro', got {average!r}.")
        super().__init__(**kwargs)
        self.average = average

    def compute(self) -> torch.Tensor:
        preds, targets = self._gathered()
        return aupr(preds, targets, self.average)
