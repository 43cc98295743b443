"""Weight operations behind iterative magnitude pruning and Activating-while-Pruning (AP,
DESIGN §4), on ``torch.nn.utils.prune`` masks.

A parameter is a ``(module, name)`` pair as in ``torch.nn.utils.prune``. Once pruned, the
module holds ``<name>_orig`` (the trained values, the same ``nn.Parameter`` object, so
optimizers keep working) and the buffer ``<name>_mask``; ``<name>`` is ``orig * mask``.
Every function here adds to the existing masks (pruned weights stay pruned).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn.utils import prune

Params = Sequence[tuple[nn.Module, str]]
PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def default_parameters(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The ``weight`` of every ``nn.Linear`` and ``nn.ConvNd`` of ``model``, in module order."""
    params = [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]
    if not params:
        raise ValueError(f"{type(model).__name__} has no nn.Linear or nn.Conv layer to prune; pass parameters=[(module, 'weight'), ...].")
    return params


def values(module: nn.Module, name: str) -> torch.Tensor:
    """The trained values of a parameter (``<name>_orig`` once pruned)."""
    return getattr(module, name + "_orig", None) if hasattr(module, name + "_orig") else getattr(module, name)


def mask(module: nn.Module, name: str) -> torch.Tensor:
    """The parameter's 0/1 mask (all ones when it was never pruned)."""
    current = getattr(module, name + "_mask", None)
    return current if current is not None else torch.ones_like(values(module, name))


def surviving(params: Params) -> int:
    """Weights not yet pruned, over all ``params``."""
    return int(sum(int(mask(m, n).sum()) for m, n in params))


def total(params: Params) -> int:
    return sum(values(m, n).numel() for m, n in params)


def magnitude_prune(params: Params, count: int) -> None:
    """Prune the ``count`` surviving weights of smallest ``|w|`` over all ``params`` (global)."""
    if count < 0 or count > surviving(params):
        raise ValueError(f"Cannot prune {count} weights: {surviving(params)} survive.")
    prune.global_unstructured(list(params), pruning_method=prune.L1Unstructured, amount=int(count))


@torch.no_grad()
def activating_prune(params: Params, start: Sequence[torch.Tensor], count: int) -> int:
    """AP's step: among the surviving *negative* weights, prune the ``count`` whose change
    since the round started, ``|w - w_start|``, is smallest (over all ``params``; ties go to
    the earlier parameter and index). ``start[i]`` holds the round-start values of ``params[i]``.

    Returns the number pruned: ``count``, or all surviving negative weights if fewer.

    Example:
        >>> layer = nn.Linear(3, 1, bias=False)
        >>> _ = layer.weight.data.copy_(torch.tensor([[-1.0, -2.0, 3.0]]))
        >>> activating_prune([(layer, "weight")], [torch.tensor([[-0.5, -2.1, 0.0]])], 1)
        1
        >>> layer.weight_mask
        tensor([[1., 0., 1.]])
    """
    if len(start) != len(params):
        raise ValueError(f"start has {len(start)} tensors for {len(params)} parameters.")
    scores, candidates = [], []
    for (module, name), w0 in zip(params, start):
        w = values(module, name).detach()
        if w0.shape != w.shape:
            raise ValueError(f"Round-start values of {type(module).__name__}.{name} have shape {tuple(w0.shape)}, the weight {tuple(w.shape)}.")
        alive = (mask(module, name) != 0) & (w < 0)
        candidates.append(alive.flatten())
        scores.append((w - w0.to(w.device)).abs().flatten().double())
    alive = torch.cat(candidates)
    score = torch.cat(scores).masked_fill(~alive, float("inf"))
    count = min(int(count), int(alive.sum()))
    if count == 0:
        return 0
    chosen = torch.zeros_like(alive)
    chosen[torch.sort(score, stable=True).indices[:count]] = True
    offset = 0
    for (module, name), cand in zip(params, candidates):
        n = cand.numel()
        drop = chosen[offset:offset + n].view_as(values(module, name))
        offset += n
        prune.custom_from_mask(module, name, mask=~drop)
    return count
