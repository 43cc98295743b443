"""GO-term prediction metrics as torchmetrics: ``Fmax`` (with coverage), ``Smin`` and ``AUPR``.

The conventions are those of :mod:`actsparse.metrics.functional.go_terms` (annotated proteins only,
micro AUPR over terms with a positive, propagation up a GO graph when ``ancestors`` is given).
DDP: ``Fmax`` and ``Smin`` keep per-threshold sums (``dist_reduce_fx="sum"``; memory
``thresholds`` resp. ``thresholds x terms`` numbers, whatever the number of proteins), so under DDP
``compute()`` gives exactly the single-process value. ``AUPR`` needs every score at once and keeps
them in ``cat`` list states (``proteins x terms`` floats).
"""

from __future__ import annotations

from typing import Any

import torch
from actsparse.metrics.functional.go_ontology import ic_counts, ic_from_counts
from actsparse.metrics.functional.go_terms import (
    DEFAULT_THRESHOLDS,
    FmaxResult,
    aupr,
    check_go_inputs,
    fmax_from_sums,
    fmax_sums,
    smin_from_sums,
    smin_sums,
)
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

__all__ = ["AUPR", "Fmax", "Smin"]


class GOMetric(Metric):
    """Shared input handling: checks, the vocabulary size, propagation to ancestors."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, ancestors: torch.Tensor | None = None, thresholds: torch.Tensor | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ancestors = None if ancestors is None else torch.as_tensor(ancestors).bool()
        self.thresholds = DEFAULT_THRESHOLDS.clone() if thresholds is None else torch.as_tensor(thresholds, dtype=torch.float64)
        self.add_state("proteins", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self._terms: int | None = None

    def checked(self, preds: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``preds``: scores in [0, 1] (a sigmoid of logits); ``targets``: 0/1; both ``[proteins, terms]``."""
        name = f"{type(self).__name__}.update"
        preds, targets = torch.as_tensor(preds), torch.as_tensor(targets)
        if preds.shape != targets.shape or preds.dim() != 2:
            raise ValueError(f"{name}: preds and targets must both be [proteins, terms]; got "
                             f"{tuple(preds.shape)} and {tuple(targets.shape)}.")
        if self._terms is not None and self._terms != preds.shape[1]:
            raise ValueError(f"{name}: {preds.shape[1]} terms now, {self._terms} before; every update must score "
                             "the same GO-term vocabulary.")
        self._terms = preds.shape[1]
        ancestors = None if self.ancestors is None else self.ancestors.to(preds.device)
        preds, targets = check_go_inputs(preds.detach(), targets.detach(), name, ancestors)
        self.proteins += preds.shape[0]
        return preds, targets

    def require_updates(self) -> None:
        if float(self.proteins) == 0:
            raise RuntimeError(f"{type(self).__name__}.compute() was called before update(): no proteins yet.")


class Fmax(GOMetric):
    """Protein-centric Fmax over thresholds 0.01 … 0.99 on the annotated proteins
    (:func:`~actsparse.metrics.functional.go_terms.fmax_result`). ``details=True``: ``compute()``
    returns the ``FmaxResult`` (fmax, threshold, coverage) instead of the value alone.

    Example:
        >>> metric = Fmax(details=True)
        >>> metric.update(torch.tensor([[0.9, 0.2, 0.6]]), torch.tensor([[1, 0, 0]]))
        >>> metric.update(torch.tensor([[0.1, 0.8, 0.3], [0.005, 0.002, 0.001]]), torch.tensor([[0, 1, 1], [1, 0, 0]]))
        >>> [round(float(v), 4) for v in metric.compute()]   # fmax, threshold, coverage
        [0.7059, 0.21, 0.6667]
    """

    higher_is_better = True

    def __init__(self, thresholds: torch.Tensor | None = None, ancestors: torch.Tensor | None = None,
                 details: bool = False, **kwargs: Any) -> None:
        super().__init__(ancestors, thresholds, **kwargs)
        self.details = details
        zeros = torch.zeros(len(self.thresholds), dtype=torch.float64)
        for name in ("precision", "covered", "recall"):
            self.add_state(name, default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("annotated", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        preds, targets = self.checked(preds, targets)
        sums = fmax_sums(preds, targets, self.thresholds)
        for name, value in sums.items():
            setattr(self, name, getattr(self, name) + value.to(getattr(self, name).device))

    def compute(self) -> torch.Tensor | FmaxResult:
        self.require_updates()
        sums = {"precision": self.precision, "covered": self.covered, "recall": self.recall, "annotated": self.annotated}
        result = fmax_from_sums(sums, self.thresholds)
        return result if self.details else result.fmax


class Smin(GOMetric):
    """Minimum semantic distance on the annotated proteins
    (:func:`~actsparse.metrics.functional.go_terms.smin`). Information content from ``ic`` (one
    value per term, e.g. from the training annotations) or, by default, from the annotations of
    every protein seen (on all processes): conditional on the parents when ``ancestors`` is given,
    else marginal. ``num_terms`` sizes the states (taken from ``ic`` or ``ancestors`` when given).

    Example:
        >>> metric = Smin(ic=torch.tensor([1.0, 2.0, 2.0]))
        >>> metric.update(torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.8, 0.3]]), torch.tensor([[1, 0, 0], [0, 1, 1]]))
        >>> metric.update(torch.tensor([[0.7, 0.1, 0.1], [0.8, 0.1, 0.2]]), torch.tensor([[1, 0, 0], [1, 0, 0]]))
        >>> metric.compute()
        tensor(0.5000, dtype=torch.float64)
    """

    higher_is_better = False

    def __init__(self, ic: torch.Tensor | None = None, thresholds: torch.Tensor | None = None,
                 ancestors: torch.Tensor | None = None, num_terms: int | None = None, **kwargs: Any) -> None:
        super().__init__(ancestors, thresholds, **kwargs)
        self.ic = None if ic is None else torch.as_tensor(ic, dtype=torch.float64)
        sizes = {n for n in (num_terms, None if self.ic is None else len(self.ic),
                             None if self.ancestors is None else self.ancestors.shape[0]) if n is not None}
        if len(sizes) != 1:
            raise ValueError(f"Smin needs the vocabulary size: give num_terms, ic or ancestors (consistent); got "
                             f"num_terms={num_terms}, {None if self.ic is None else len(self.ic)} ic values, "
                             f"ancestors for {None if self.ancestors is None else self.ancestors.shape[0]} terms.")
        (terms,) = sizes
        self._terms = terms
        self.add_state("missed", default=torch.zeros(len(self.thresholds), terms, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("extra", default=torch.zeros(len(self.thresholds), terms, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("annotated", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("term_counts", default=torch.zeros(terms, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("condition_counts", default=torch.zeros(terms, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        preds, targets = self.checked(preds, targets)
        sums = smin_sums(preds, targets, self.thresholds)
        self.missed += sums["missed"]
        self.extra += sums["extra"]
        self.annotated += sums["annotated"]
        annotated = targets[targets.any(1)].to(torch.uint8)
        if annotated.shape[0]:
            counts, conditions = ic_counts(annotated, None if self.ancestors is None else self.ancestors.to(preds.device))
            self.term_counts += counts
            self.condition_counts += conditions

    def compute(self) -> torch.Tensor:
        self.require_updates()
        ic = self.ic if self.ic is not None else ic_from_counts(self.term_counts, self.condition_counts)
        value, _ = smin_from_sums({"missed": self.missed, "extra": self.extra, "annotated": self.annotated}, ic,
                                  self.thresholds)
        return value


class AUPR(GOMetric):
    """Area under the precision-recall curve over the terms with a positive, ``average="micro"``
    (their protein-term pairs) or ``"macro"`` (mean over them);
    :func:`~actsparse.metrics.functional.go_terms.aupr`.

    Example:
        >>> metric = AUPR(average="macro")
        >>> metric.update(torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.8, 0.3]]), torch.tensor([[1, 0, 0], [0, 1, 1]]))
        >>> metric.compute()
        tensor(0.8333, dtype=torch.float64)
    """

    higher_is_better = True

    def __init__(self, average: str = "micro", ancestors: torch.Tensor | None = None, **kwargs: Any) -> None:
        if average not in ("micro", "macro"):
            raise ValueError(f"AUPR: average must be 'micro' or 'macro', got {average!r}.")
        super().__init__(ancestors, None, **kwargs)
        self.average = average
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        preds, targets = self.checked(preds, targets)   # propagated already
        self.preds.append(preds.float())
        self.targets.append(targets.to(torch.uint8))

    def compute(self) -> torch.Tensor:
        self.require_updates()
        return aupr(dim_zero_cat(self.preds), dim_zero_cat(self.targets), self.average)
