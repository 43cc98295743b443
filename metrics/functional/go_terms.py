"""GO-term prediction metrics with the field's conventions (CAFA; DeepFRI's evaluation code):
protein-centric ``fmax`` with its coverage, ``smin``, and micro/macro ``aupr``. Pure tensor
functions: ``preds`` are scores in [0, 1] and ``targets`` 0/1 (or bool), both ``[proteins, terms]``.

- Benchmark proteins are the *annotated* ones: a protein with no true term is left out of Fmax and
  Smin (CAFA evaluates only proteins with experimental annotations; DeepFRI's test sets hold only
  such proteins). Counting it in precision but not in recall, as this module once did, mixes two
  populations.
- ``fmax``: for each threshold t in 0.01, 0.02, …, 0.99 a term is predicted when its score is
  ``>= t``. Precision is averaged over the annotated proteins with at least one predicted term at
  t, recall over all annotated proteins (CAFA's full mode); ``F(t) = 2pr / (p + r)``; Fmax is the
  largest F (0 when no threshold predicts anything). Coverage: the fraction of annotated proteins
  with a prediction at Fmax's threshold (CAFA reports it beside Fmax).
- ``smin``: ``ru(t) = Σ_i Σ_{f ∈ T_i \\ P_i(t)} ic(f) / n``, ``mi(t) = Σ_i Σ_{f ∈ P_i(t) \\ T_i} ic(f) / n``
  over the n annotated proteins; ``S(t) = sqrt(ru² + mi²)``, Smin the smallest. Information content
  comes from a given table or from the evaluated annotations
  (:func:`~actsparse.metrics.functional.go_ontology.information_content`: conditional on the
  parents when a GO graph is given, else marginal).
- ``aupr``: average precision (``Σ (R_k - R_{k-1}) P_k`` over distinct scores, as scikit-learn's
  ``average_precision_score``) over the (protein, term) pairs of the terms with at least one
  positive (``micro``; DeepFRI drops the other columns, which only add negatives) or per such term,
  averaged (``macro``).
- ``ancestors`` (a bool ``[terms, terms]`` matrix from
  :func:`~actsparse.metrics.functional.go_ontology.ancestor_matrix`): predictions and labels are
  propagated to the ancestors first (CAFA's true-path rule); without it they are used as given.

The ``*_sums`` functions return the additive pieces (sums over proteins) that the torchmetrics
classes keep as ``dist_reduce_fx="sum"`` states.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from actsparse.metrics.functional.go_ontology import (
    ic_counts,
    ic_from_counts,
    propagate,
)

__all__ = ["DEFAULT_THRESHOLDS", "FmaxResult", "aupr", "average_precision", "fmax", "fmax_from_sums", "fmax_result",
           "fmax_sums", "precision_recall_curve_go", "smin", "smin_from_sums", "smin_sums"]

# 0.01 … 0.99, in float64 so the comparison ``score >= t`` sees the exact decimal grid.
DEFAULT_THRESHOLDS = torch.arange(1, 100, dtype=torch.float64) / 100


class FmaxResult(NamedTuple):
    fmax: torch.Tensor        # 0-dim float64
    threshold: torch.Tensor   # the threshold reaching it
    coverage: torch.Tensor    # fraction of annotated proteins with a prediction at that threshold


def check_go_inputs(preds: torch.Tensor, targets: torch.Tensor, name: str,
                    ancestors: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(preds float64, targets bool)`` after shape and label checks, propagated when ``ancestors`` is given."""
    preds, targets = torch.as_tensor(preds), torch.as_tensor(targets)
    if preds.dim() == 1:
        preds, targets = preds.unsqueeze(0), targets.reshape(1, -1)
    if preds.shape != targets.shape or preds.dim() != 2:
        raise ValueError(f"{name}: preds and targets must both be [proteins, terms]; got "
                         f"{tuple(preds.shape)} and {tuple(targets.shape)}.")
    if preds.numel() == 0:
        raise ValueError(f"{name}: no proteins or no terms (empty [proteins, terms] input).")
    if not (targets.dtype == torch.bool or bool(((targets == 0) | (targets == 1)).all())):
        raise ValueError(f"{name}: targets must be 0/1 labels (bool or numbers), one column per GO term.")
    preds, targets = preds.double(), targets.bool()
    if ancestors is not None:
        preds = propagate(preds, ancestors)
        targets = propagate(targets.to(torch.uint8), ancestors).bool()
    return preds, targets


def _thresholds(thresholds: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    t = DEFAULT_THRESHOLDS if thresholds is None else torch.as_tensor(thresholds, dtype=torch.float64)
    return t.to(device).reshape(-1)


def fmax_sums(preds: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor | None = None
              ) -> dict[str, torch.Tensor]:
    """Per threshold, over the annotated proteins of a (checked, propagated) batch: ``precision``
    (sum of per-protein precision over proteins with a prediction), ``covered`` (their number),
    ``recall`` (sum of per-protein recall); and ``annotated`` (their number). All float64 sums."""
    t = _thresholds(thresholds, preds.device)
    annotated = targets.any(1)
    preds, targets = preds[annotated], targets[annotated]
    true_counts = targets.sum(1).double()
    sums = {"precision": torch.zeros_like(t), "covered": torch.zeros_like(t), "recall": torch.zeros_like(t),
            "annotated": torch.tensor(float(annotated.sum()), dtype=torch.float64, device=preds.device)}
    for k, tk in enumerate(t):  # one threshold at a time: [proteins, terms] memory
        predicted = preds >= tk
        n_pred = predicted.sum(1).double()
        tp = (predicted & targets).sum(1).double()
        has_pred = n_pred > 0
        sums["precision"][k] = (tp[has_pred] / n_pred[has_pred]).sum()
        sums["covered"][k] = has_pred.sum()
        sums["recall"][k] = (tp / true_counts).sum()
    return sums


def fmax_from_sums(sums: dict[str, torch.Tensor], thresholds: torch.Tensor | None = None) -> FmaxResult:
    """Fmax, its threshold and coverage from :func:`fmax_sums` (added over batches or processes)."""
    if float(sums["annotated"]) == 0:
        raise ValueError("fmax: no protein has a true term; recall is undefined. Evaluate annotated proteins.")
    t = _thresholds(thresholds, sums["recall"].device)
    precision = torch.where(sums["covered"] > 0, sums["precision"] / sums["covered"].clamp_min(1), torch.zeros_like(t))
    recall = sums["recall"] / sums["annotated"]
    denom = precision + recall
    f = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-300), torch.zeros_like(denom))
    best = int(torch.argmax(f))
    return FmaxResult(f[best], t[best], sums["covered"][best] / sums["annotated"])


def fmax_result(preds: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor | None = None,
                ancestors: torch.Tensor | None = None) -> FmaxResult:
    """``(fmax, threshold, coverage)``; see the module docstring.

    Example:
        >>> preds = torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.8, 0.3], [0.005, 0.002, 0.001]])
        >>> targets = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 0, 0]])
        >>> r = fmax_result(preds, targets)  # the third never reaches 0.01: p = (1/2 + 1)/2, r = (1 + 1 + 0)/3
        >>> round(float(r.fmax), 4), round(float(r.coverage), 4)
        (0.7059, 0.6667)
    """
    preds, targets = check_go_inputs(preds, targets, "fmax", ancestors)
    return fmax_from_sums(fmax_sums(preds, targets, thresholds), thresholds)


def fmax(preds: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor | None = None,
         return_threshold: bool = False, ancestors: torch.Tensor | None = None
         ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Protein-centric maximum F-measure over thresholds, a float64 0-dim tensor; proteins without
    a true term are left out (see the module docstring; :func:`fmax_result` adds the coverage).

    Example:
        >>> preds = torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.8, 0.3], [0.7, 0.7, 0.7]])
        >>> targets = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 0]])  # the third is not annotated
        >>> fmax(preds, targets)  # best at t in (0.2, 0.3]: p = (1/2 + 1)/2, r = (1 + 1)/2
        tensor(0.8571, dtype=torch.float64)
    """
    result = fmax_result(preds, targets, thresholds, ancestors)
    return (result.fmax, result.threshold) if return_threshold else result.fmax


def precision_recall_curve_go(preds: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor | None = None,
                              ancestors: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Protein-centric ``(precision, recall, covered)`` per threshold over the annotated proteins;
    ``precision`` is NaN where no protein has a prediction, ``covered`` counts those that have one."""
    preds, targets = check_go_inputs(preds, targets, "precision_recall_curve_go", ancestors)
    sums = fmax_sums(preds, targets, thresholds)
    if float(sums["annotated"]) == 0:
        raise ValueError("fmax: no protein has a true term; recall is undefined. Evaluate annotated proteins.")
    precision = torch.where(sums["covered"] > 0, sums["precision"] / sums["covered"].clamp_min(1),
                            torch.full_like(sums["covered"], float("nan")))
    return precision, sums["recall"] / sums["annotated"], sums["covered"]


def smin_sums(preds: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor | None = None
              ) -> dict[str, torch.Tensor]:
    """Per threshold and term, over the annotated proteins of a (checked, propagated) batch:
    ``missed`` (true, not predicted) and ``extra`` (predicted, not true) counts ``[thresholds, terms]``,
    and ``annotated`` (their number). All float64 sums."""
    t = _thresholds(thresholds, preds.device)
    annotated = targets.any(1)
    preds, targets = preds[annotated], targets[annotated]
    missed = torch.zeros(len(t), preds.shape[1], dtype=torch.float64, device=preds.device)
    extra = torch.zeros_like(missed)
    for k, tk in enumerate(t):
        predicted = preds >= tk
        missed[k] = (targets & ~predicted).sum(0)
        extra[k] = (predicted & ~targets).sum(0)
    return {"missed": missed, "extra": extra,
            "annotated": torch.tensor(float(annotated.sum()), dtype=torch.float64, device=preds.device)}


def smin_from_sums(sums: dict[str, torch.Tensor], ic: torch.Tensor, thresholds: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Smin, threshold)`` from :func:`smin_sums` and an information content per term."""
    n = float(sums["annotated"])
    if n == 0:
        raise ValueError("smin: no protein has a true term. Evaluate annotated proteins.")
    ic = torch.as_tensor(ic, dtype=torch.float64).to(sums["missed"].device)
    if ic.shape != (sums["missed"].shape[1],):
        raise ValueError(f"smin: ic must have one value per term ({sums['missed'].shape[1]}), got shape {tuple(ic.shape)}.")
    if bool((ic < 0).any()) or not bool(torch.isfinite(ic).all()):
        raise ValueError("smin: information content must be finite and >= 0.")
    t = _thresholds(thresholds, ic.device)
    ru, mi = sums["missed"] @ ic / n, sums["extra"] @ ic / n
    s = torch.sqrt(ru * ru + mi * mi)
    best = int(torch.argmin(s))
    return s[best], t[best]


def smin(preds: torch.Tensor, targets: torch.Tensor, ic: torch.Tensor | None = None,
         thresholds: torch.Tensor | None = None, return_threshold: bool = False,
         ancestors: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Minimum semantic distance over thresholds (CAFA), a float64 0-dim tensor, over the annotated
    proteins. ``ic`` is one information content per term; default: from ``targets`` (conditional
    on the parents when ``ancestors`` is given, else marginal).

    Example:
        >>> preds = torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.8, 0.3], [0.7, 0.1, 0.1], [0.8, 0.1, 0.2]])
        >>> targets = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 0, 0], [1, 0, 0]])
        >>> smin(preds, targets, ic=torch.tensor([1.0, 2.0, 2.0]))  # best at t in (0.2, 0.3]: ru = 0, mi = 2/4
        tensor(0.5000, dtype=torch.float64)
    """
    preds, targets = check_go_inputs(preds, targets, "smin", ancestors)
    if ic is None:
        annotated = targets[targets.any(1)]
        if annotated.shape[0] == 0:
            raise ValueError("smin: no protein has a true term. Evaluate annotated proteins.")
        ic = ic_from_counts(*ic_counts(annotated.to(torch.uint8), ancestors))
    value, threshold = smin_from_sums(smin_sums(preds, targets, thresholds), ic, thresholds)
    return (value, threshold) if return_threshold else value


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Average precision of one ranking (``Σ (R_k - R_{k-1}) P_k`` at each distinct score, ties
    counted together, as scikit-learn computes it). NaN when there is no positive.

    Example:
        >>> average_precision(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        tensor(0.8333, dtype=torch.float64)
    """
    scores = torch.as_tensor(scores).double().reshape(-1)
    labels = torch.as_tensor(labels).bool().reshape(-1)
    positives = labels.sum()
    if int(positives) == 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=scores.device)
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], labels[order].double()
    tp = torch.cumsum(y, 0)
    fp = torch.cumsum(1 - y, 0)
    # The last index of each run of equal scores is where that threshold's counts are complete.
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / positives
    steps = torch.diff(recall, prepend=recall.new_zeros(1))
    return (steps * precision).sum()


def aupr(preds: torch.Tensor, targets: torch.Tensor, average: str = "micro",
         ancestors: torch.Tensor | None = None) -> torch.Tensor:
    """Area under the precision-recall curve (average precision) over the terms with at least one
    positive: ``micro`` pools their (protein, term) pairs, ``macro`` averages them per term.

    Example:
        >>> preds = torch.tensor([[0.9, 0.2, 0.6, 0.95], [0.1, 0.8, 0.3, 0.9]])
        >>> targets = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0]])   # term 3 has no positive: left out
        >>> aupr(preds, targets, "micro"), aupr(preds, targets, "macro")
        (tensor(0.9167, dtype=torch.float64), tensor(0.8333, dtype=torch.float64))
    """
    if average not in ("micro", "macro"):
        raise ValueError(f"aupr: average must be 'micro' or 'macro', got {average!r}.")
    preds, targets = check_go_inputs(preds, targets, "aupr", ancestors)
    columns = targets.any(0)
    if not bool(columns.any()):
        raise ValueError(f"aupr({average}): no term has a positive label; average precision is undefined.")
    preds, targets = preds[:, columns], targets[:, columns]
    if average == "micro":
        return average_precision(preds.reshape(-1), targets.reshape(-1))
    return torch.stack([average_precision(preds[:, c], targets[:, c]) for c in range(targets.shape[1])]).mean()
