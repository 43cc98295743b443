"""Activation sparsity, activation ratio and dead neurons: the one counting rule of actsparse.

**The rule.** An entry of an activation tensor is *active* when its magnitude score is strictly
above the threshold, and *inactive* (sparse, weak, dead, dropped) otherwise:
``active ⇔ score > t``. The score is ``|x|``, or ``|x_i|·‖W_down[:, i]‖₂`` for CETT (DESIGN §4).
With the default ``t = 0``, inactive means exactly zero. An entry with ``score == t`` is inactive
everywhere: in these functions, the metric classes, the callbacks, site recordings, CETT and
PPL-p% truncation, so sparsity and activation ratio are exact complements.

**Rows and units.** :func:`as_rows` views an activation as ``[rows, units]``: an FFN tensor
``[..., f]`` has one row per token and ``f`` units (neurons); an output of 4+ dims (a CNN's
``[B, C, H, W]``) has one row per sample and ``C*H*W`` units.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "SparsityCounts",
    "activation_ratio",
    "activation_sparsity",
    "active_mask",
    "as_rows",
    "check_threshold",
    "count_active",
    "dead_neuron_rate",
    "dead_neurons",
    "sparsity_counts",
]

# float32 sums of 0/1 values are exact below 2**24 (per call); above, count in float64.
_EXACT_FLOAT32_COUNT = 2**24


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """View an activation tensor as ``[rows, units]`` (see the module docstring)."""
    if x.dim() >= 4:
        return x.flatten(1)
    if x.dim() <= 1:
        return x.reshape(1, -1)
    return x.reshape(-1, x.shape[-1])


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float; a clear error unless it is a magnitude (``>= 0``, not NaN)."""
    threshold = float(threshold)
    if not threshold >= 0:  # also NaN
        raise ValueError(f"threshold must be >= 0 (a magnitude), got {threshold}.")
    return threshold


def active_mask(x: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Bool mask of active entries: ``|x| > threshold``.

    Example:
        >>> active_mask(torch.tensor([-2.0, -0.5, 0.0, 0.5, 1.0]), threshold=0.5)
        tensor([ True, False, False, False,  True])
    """
    return x.abs() > check_threshold(threshold)


def count_active(x: torch.Tensor, threshold: float = 0.0, dim: int | None = None) -> torch.Tensor:
    """Active entries (``|x| > threshold``) in total, or along ``dim``, as exact integers in a
    float64 tensor. The counting kernel every sparsity measurement of actsparse uses.

    For ``threshold == 0``, ``sign().abs()`` then a sum is several times faster on CPU than
    ``(x != 0).sum()`` or ``count_nonzero``; NaN entries would poison it, as they poison training.

    Example:
        >>> count_active(torch.tensor([[0.0, 1.0], [-3.0, 0.0]]))
        tensor(2., dtype=torch.float64)
        >>> count_active(torch.tensor([[0.0, 1.0], [-3.0, 0.0]]), dim=0)
        tensor([1., 1.], dtype=torch.float64)
    """
    threshold = check_threshold(threshold)
    n = x.numel() if dim is None else x.shape[dim]
    dtype = torch.float32 if n < _EXACT_FLOAT32_COUNT else torch.float64
    ones = x.sign().abs_() if threshold == 0 else (x.abs() > threshold).to(dtype)
    return (ones.sum(dtype=dtype) if dim is None else ones.sum(dim, dtype=dtype)).double()


class SparsityCounts(NamedTuple):
    """The sums every sparsity measurement accumulates (:func:`sparsity_counts`); they add exactly
    across batches and processes."""

    inactive: torch.Tensor  # float64 0-dim: entries with |x| <= threshold
    entries: int
    unit_active: torch.Tensor | None  # float64 [units]: rows on which each unit was active (per_unit)


def sparsity_counts(x: torch.Tensor, threshold: float = 0.0, per_unit: bool = False) -> SparsityCounts:
    """Inactive entries of ``x`` and its number of entries, plus (``per_unit``) the active count
    of each unit over the rows of :func:`as_rows` — from one :func:`count_active` pass. The
    counting path of the metric classes, the site recordings and the PPL-p% dense pass.

    Example:
        >>> sparsity_counts(torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]), per_unit=True)
        SparsityCounts(inactive=tensor(4., dtype=torch.float64), entries=6, unit_active=tensor([1., 1., 0.], dtype=torch.float64))
    """
    if not per_unit:
        return SparsityCounts(x.numel() - count_active(x, threshold), x.numel(), None)
    rows = as_rows(x)
    unit_active = count_active(rows, threshold, dim=0)
    return SparsityCounts(rows.numel() - unit_active.sum(), rows.numel(), unit_active)


def activation_sparsity(x: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Fraction of inactive entries (``|x| <= threshold``) of ``x``, a float64 0-dim tensor.

    Example:
        >>> activation_sparsity(torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, 0.0]]))
        tensor(0.6667, dtype=torch.float64)
    """
    if x.numel() == 0:
        raise ValueError("activation_sparsity needs a non-empty tensor of activations.")
    counts = sparsity_counts(x, threshold)
    return counts.inactive / counts.entries


def activation_ratio(x: torch.Tensor, threshold: float = 0.0, w_down: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of active entries, ``1 − activation_sparsity`` (float64 0-dim tensor).

    With ``w_down`` (``[d, f]``, ``nn.Linear`` layout) the score of neuron ``i`` is its CETT
    importance ``|x_i|·‖W_down[:, i]‖₂`` (DESIGN §4): the ratio of neurons that are not weak.

    Example:
        >>> activation_ratio(torch.tensor([[0.0, 1.0, 0.0, 2.0]]))
        tensor(0.5000, dtype=torch.float64)
        >>> activation_ratio(torch.tensor([[1.0, 1.0]]), 1.0, w_down=torch.tensor([[1.0, 3.0]]))
        tensor(0.5000, dtype=torch.float64)
    """
    if x.numel() == 0:
        raise ValueError("activation_ratio needs a non-empty tensor of activations.")
    if w_down is None:
        return count_active(x, threshold) / x.numel()
    rows = x.reshape(-1, x.shape[-1])
    if w_down.dim() != 2 or w_down.shape[1] != rows.shape[1]:
        raise ValueError(f"w_down must be [d, f={rows.shape[1]}] (nn.Linear layout), got {tuple(w_down.shape)}.")
    norms = torch.linalg.vector_norm(w_down.to(device=rows.device, dtype=torch.float64), dim=0)
    return count_active(rows.double().abs() * norms, threshold) / rows.numel()


def dead_neuron_rate(activations: torch.Tensor) -> torch.Tensor:
    """Dynamic dead neuron rate (DESIGN §4): the fraction of (sample, neuron) outputs that are
    exactly zero — :func:`activation_sparsity` at threshold 0, under the name the DNR papers use.

    Example:
        >>> dead_neuron_rate(torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, 0.0]]))
        tensor(0.6667, dtype=torch.float64)
    """
    if activations.numel() == 0:
        raise ValueError("dead_neuron_rate needs a non-empty tensor of activations.")
    return activation_sparsity(activations, 0.0)


def dead_neurons(activations: torch.Tensor) -> torch.Tensor:
    """Which units are inactive on every row: a bool ``[units]`` mask (rows and units as in
    :func:`as_rows`).

    Example:
        >>> dead_neurons(torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, 0.0]]))
        tensor([False, False,  True])
    """
    if activations.numel() == 0:
        raise ValueError("dead_neurons needs a non-empty tensor of activations.")
    return sparsity_counts(activations, per_unit=True).unit_active == 0
