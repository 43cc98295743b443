"""GO-term prediction metrics (DESIGN §3, CAFA conventions): protein-centric ``fmax`` and ``smin``,
and micro/macro ``aupr``. Pure tensor functions: ``preds`` are scores in [0, 1] and ``targets``
0/1 (or bool), both ``[proteins, terms]``.

- ``fmax``: for each threshold t in 0.01, 0.02, …, 0.99 a term is predicted when its score is
  ``>= t``. Precision is averaged over the proteins with at least one predicted term at t,
  recall over the proteins with at least one true term; ``F(t) = 2pr / (p + r)`` and Fmax is the
  largest F over thresholds (0 when no threshold predicts anything).
- ``smin``: remaining uncertainty ``ru(t) = Σ_i Σ_{f ∈ T_i \\ P_i(t)} ic(f) / n`` and
  misinformation ``mi(t) = Σ_i Σ_{f ∈ P_i(t) \\ T_i} ic(f) / n`` over all n proteins;
  ``S(t) = sqrt(ru² + mi²)``, Smin is the smallest S over the same thresholds. Information content
  comes from a given table or from the label frequencies of ``targets``:
  ``ic(f) = -log2(count(f) / n)`` (terms with no annotation get 0).
- ``aupr``: average precision (area under the precision-recall curve as a step sum,
  ``Σ (R_k - R_{k-1}) P_k`` over distinct score thresholds, like scikit-learn's
  ``average_precision_score``) over all (protein, term) pairs (``micro``) or per term, averaged
  over the terms with at least one positive (``macro``).
"""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_THRESHOLDS", "aupr", "average_precision", "fmax", "information_content",
           "precision_recall_curve_go", "smin"]

# 0.01 … 0.99, in float64 so the comparison ``score >= t`` sees the exact decimal grid.
DEFAULT_THRESHOLDS = torch.arange(1, 100, dtype=torch.float64) / 100


def _check(preds: torch.Tensor, targets: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
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
    return preds.double(), targets.bool()


def _thresholds(thresholds: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    t = DEFAULT_THRESHOLDS if thresholds is None else torch.as_tensor(thresholds, dtype=torch.float64)
    return t.to(device).reshape(-1)


def precision_recall_curve_go(preds: torch.Tensor, targets: torch.Tensor,
                              thresholds: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Protein-centric ``(precision, recall, covered)`` at each threshold (CAFA definition; see
    the module docstring). ``precision[t]`` is NaN where no protein has a prediction; ``covered``
    is the number of proteins with at least one prediction."""
    preds, targets = _check(preds, targets, "precision_recall_curve_go")
    t = _thresholds(thresholds, preds.device)
    true_counts = targets.sum(1).double()
    annotated = true_counts > 0
    if not bool(annotated.any()):
        raise ValueError("fmax: no protein has a true term; recall is undefined. Pass annotated proteins only.")
    precision = torch.full_like(t, float("nan"))
    recall = torch.zeros_like(t)
    covered = torch.zeros_like(t)
    # One threshold at a time: [proteins, terms] memory, whatever the number of thresholds.
    for k, tk in enumerate(t):
        predicted = preds >= tk
        n_pred = predicted.sum(1).double()
        tp = (predicted & targets).sum(1).double()
        has_pred = n_pred > 0
        covered[k] = has_pred.sum()
        if bool(has_pred.any()):
            precision[k] = (tp[has_pred] / n_pred[has_pred]).mean()
        recall[k] = (tp[annotated] / true_counts[annotated]).mean()
    return precision, recall, covered


def fmax(preds: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor | None = None,
         return_threshold: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Protein-centric maximum F-measure over thresholds (CAFA; DESIGN §3), a float64 0-dim tensor.

    Example:
        >>> preds = torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.8, 0.3]])
        >>> targets = torch.tensor([[1, 0, 0], [0, 1, 1]])
        >>> fmax(preds, targets)  # best at t in (0.2, 0.3]: p = (1/2 + 1)/2, r = (1 + 1)/2
        tensor(0.8571, dtype=torch.float64)
    """
    precision, recall, _ = precision_recall_curve_go(preds, targets, thresholds)
    p = torch.nan_to_num(precision, nan=0.0)
    denom = p + recall
    f = torch.where(denom > 0, 2 * p * recall / denom.clamp_min(1e-300), torch.zeros_like(denom))
    best = int(torch.argmax(f))
    if return_threshold:
        return f[best], _thresholds(thresholds, f.device)[best]
    return f[best]


def information_content(targets: torch.Tensor) -> torch.Tensor:
    """``ic(f) = -log2(count(f) / n)`` from the label frequencies of ``targets`` ``[n, terms]``;
    terms never annotated get 0 (no evidence to price them; pass your own table to charge them).

    Example:
        >>> information_content(torch.tensor([[1, 0, 1], [1, 0, 0], [1, 0, 0], [1, 1, 0]]))
        tensor([0., 2., 2.], dtype=torch.float64)
    """
    targets = torch.as_tensor(targets)
    if targets.dim() != 2 or targets.shape[0] == 0:
        raise ValueError(f"information_content needs targets [proteins, terms] with proteins; got {tuple(targets.shape)}.")
    counts = targets.bool().sum(0).double()
    freq = counts / targets.shape[0]
    # log2(1/freq) rather than -log2(freq): a term on every protein gets 0, not -0
    return torch.where(counts > 0, torch.log2(1.0 / freq.clamp_min(1e-300)), torch.zeros_like(freq))


def smin(preds: torch.Tensor, targets: torch.Tensor, ic: torch.Tensor | None = None,
         thresholds: torch.Tensor | None = None, return_threshold: bool = False
         ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Minimum semantic distance over thresholds (CAFA), a float64 0-dim tensor. ``ic`` is one
    information content per term; default :func:`information_content` of ``targets``.

    Example:
        >>> preds = torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.8, 0.3], [0.7, 0.1, 0.1], [0.8, 0.1, 0.2]])
        >>> targets = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 0, 0], [1, 0, 0]])
        >>> smin(preds, targets, ic=torch.tensor([1.0, 2.0, 2.0]))  # best at t in (0.2, 0.3]: ru = 0, mi = 2/4
        tensor(0.5000, dtype=torch.float64)
    """
    preds, targets = _check(preds, targets, "smin")
    table = information_content(targets) if ic is None else torch.as_tensor(ic, dtype=torch.float64).to(preds.device)
    if table.shape != (preds.shape[1],):
        raise ValueError(f"smin: ic must have one value per term ({preds.shape[1]}), got shape {tuple(table.shape)}.")
    if bool((table < 0).any()) or not bool(torch.isfinite(table).all()):
        raise ValueError("smin: information content must be finite and >= 0.")
    t = _thresholds(thresholds, preds.device)
    n = preds.shape[0]
    s = torch.empty_like(t)
    for k, tk in enumerate(t):
        predicted = preds >= tk
        ru = ((targets & ~predicted).double() @ table).sum() / n
        mi = ((predicted & ~targets).double() @ table).sum() / n
        s[k] = torch.sqrt(ru * ru + mi * mi)
    best = int(torch.argmin(s))
    return (s[best], t[best]) if return_threshold else s[best]


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


def aupr(preds: torch.Tensor, targets: torch.Tensor, average: str = "micro") -> torch.Tensor:
    """Area under the precision-recall curve (average precision), ``micro`` over all
    (protein, term) pairs or ``macro`` over terms with at least one positive.

    Example:
        >>> preds = torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.8, 0.3]])
        >>> targets = torch.tensor([[1, 0, 0], [0, 1, 1]])
        >>> aupr(preds, targets, "micro"), aupr(preds, targets, "macro")
        (tensor(0.9167, dtype=torch.float64), tensor(0.8333, dtype=torch.float64))
    """
    preds, targets = _check(preds, targets, "aupr")
    if average == "micro":
        if not bool(targets.any()):
            raise ValueError("aupr(micro): no positive label at all; average precision is undefined.")
        return average_precision(preds.reshape(-1), targets.reshape(-1))
    if average == "macro":
        columns = [c for c in range(targets.shape[1]) if bool(targets[:, c].any())]
        if not columns:
            raise ValueError("aupr(macro): no term has a positive label; average precision is undefined.")
        return torch.stack([average_precision(preds[:, c], targets[:, c]) for c in columns]).mean()
    raise ValueError(f"aupr: average must be 'micro' or 'macro', got {average!r}.")
