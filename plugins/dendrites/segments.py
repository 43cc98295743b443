"""Active dendrites: a linear layer whose units are gated by dendritic segments that read a
context vector (Iyer et al. 2022, "Avoiding catastrophe: active dendrites enable multi-task
learning in dynamic environments"; DESIGN §4).

Each of the ``out_features`` units has ``num_segments`` segments, each a weight vector over
the ``context_dim`` context inputs with a fixed fraction of its weights pinned to zero
(``weight_sparsity``; the mask is a buffer, so pruned synapses stay pruned through training
and checkpoints). For context ``c`` the segment responses are ``d[u, j] = w[u, j] · c``; unit
``u`` is gated by the response of largest magnitude, sign kept (absolute-max gating):

    y_u = (W x + b)_u · sigmoid(d[u, j*]),   j* = argmax_j |d[u, j]|

The segment masks cover every context input: each unit's segments together connect to every
one of the ``context_dim`` inputs whenever ``num_segments · kept ≥ context_dim`` (with one-hot
task ids as context, every task reaches at least one segment of every unit; a mask drawn
independently per segment leaves some (unit, task) pairs with no segment that sees the task).
``ff_weight_sparsity`` pins a fixed fraction of each unit's feed-forward weights at zero (the
authors' networks use 50%).

The layer is a bare activation site (its output is the site tensor), so site recording and
the monitors see it; pair it with :class:`~actsparse.plugins.dendrites.kwinners.KWinners` for
sparse activity.
"""

from __future__ import annotations

import math

import torch
from actsparse.plugins.sites import register_activation_type
from torch import nn

__all__ = ["DendriticLayer", "covering_mask", "dendritic_gate", "kept_count"]


def dendritic_gate(responses: torch.Tensor) -> torch.Tensor:
    """``[..., units, segments]`` responses -> ``[..., units]``: per unit the response of
    largest magnitude (sign kept), the input of the sigmoid gate."""
    idx = responses.abs().argmax(dim=-1, keepdim=True)
    return responses.gather(-1, idx).squeeze(-1)


def kept_count(size: int, sparsity: float) -> int:
    """Weights kept of ``size`` at ``sparsity``: ``(1 − sparsity)·size`` rounded half up (2.5 -> 3),
    at least 1."""
    return max(1, math.floor((1 - sparsity) * size + 0.5))


def covering_mask(units: int, segments: int, size: int, keep: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``[units, segments, size]`` bool mask, ``keep`` True per segment, chosen at random so that the
    segments of every unit together cover all ``size`` inputs when ``segments · keep ≥ size``
    (otherwise they cover ``segments · keep`` distinct inputs, as many as they can).

    Each unit deals a random permutation of the inputs round-robin over its segments until every
    input has a segment (or the segments are full), then fills each segment's remaining places with
    random inputs it does not have yet.

    Example:
        >>> m = covering_mask(4, 5, 5, 1, torch.Generator().manual_seed(0))
        >>> bool(m.any(1).all()), m.sum(-1).unique().tolist()
        (True, [1])
    """
    if not 1 <= keep <= size:
        raise ValueError(f"keep must be in 1..{size}, got {keep}.")
    mask = torch.zeros(units, segments, size, dtype=torch.bool)
    dealt = min(size, segments * keep)
    for u in range(units):
        order = torch.randperm(size, generator=generator)
        for i in range(dealt):
            mask[u, i % segments, order[i]] = True
        scores = torch.rand(segments, size, generator=generator).masked_fill(mask[u], -1.0)
        for s in range(segments):
            missing = keep - int(mask[u, s].sum())
            if missing > 0:
                mask[u, s, scores[s].topk(missing).indices] = True
    return mask


class DendriticLayer(nn.Module):
    """``nn.Linear(in_features, out_features)`` gated per unit by its strongest dendritic segment.

    Args:
        num_segments: segments per unit.
        context_dim: size of the context vector passed to :meth:`forward`.
        weight_sparsity: fraction of each segment's context weights fixed at zero (0 <= . < 1);
            every segment keeps :func:`kept_count` ``(context_dim, weight_sparsity)`` weights, and
            the segments of a unit together see every context input (:func:`covering_mask`).
        ff_weight_sparsity: fraction of each unit's feed-forward weights fixed at zero (the
            authors' 0.5; default 0: dense).
        seed: seeds the sparsity masks (None: drawn from torch's global generator).

    Example:
        >>> layer = DendriticLayer(6, 4, num_segments=3, context_dim=5, weight_sparsity=0.4)
        >>> layer(torch.randn(2, 6), torch.randn(2, 5)).shape
        torch.Size([2, 4])
        >>> int(layer.segment_mask.sum(-1).unique())  # 3 of 5 context weights per segment
        3
    """

    def __init__(self, in_features: int, out_features: int, num_segments: int, context_dim: int,
                 weight_sparsity: float = 0.5, bias: bool = True, seed: int | None = None,
                 ff_weight_sparsity: float = 0.0) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features),
                        ("num_segments", num_segments), ("context_dim", context_dim)):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"DendriticLayer: {name} must be a positive integer, got {v!r}.")
        if not 0 <= weight_sparsity < 1:
            raise ValueError(f"weight_sparsity must be in [0, 1) (fraction of zero segment weights), got {weight_sparsity}.")
        if not 0 <= ff_weight_sparsity < 1:
            raise ValueError(f"ff_weight_sparsity must be in [0, 1) (fraction of zero feed-forward weights), "
                             f"got {ff_weight_sparsity}.")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.num_segments, self.context_dim = int(num_segments), int(context_dim)
        self.weight_sparsity, self.ff_weight_sparsity = float(weight_sparsity), float(ff_weight_sparsity)
        self.linear = nn.Linear(self.in_features, self.out_features, bias=bias)
        self.segment_weights = nn.Parameter(torch.empty(self.out_features, self.num_segments, self.context_dim))
        keep = kept_count(self.context_dim, self.weight_sparsity)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        mask = covering_mask(self.out_features, self.num_segments, self.context_dim, keep, generator)
        self.register_buffer("segment_mask", mask)
        bound = 1 / math.sqrt(keep)  # fan-in of a segment is its kept weights
        with torch.no_grad():
            self.segment_weights.uniform_(-bound, bound).mul_(mask)
        ff_mask = torch.ones(self.out_features, self.in_features, dtype=torch.bool)
        if self.ff_weight_sparsity > 0:  # each unit keeps the same number of random inputs
            ff_keep = kept_count(self.in_features, self.ff_weight_sparsity)
            scores = torch.rand(self.out_features, self.in_features, generator=generator)
            ff_mask = torch.zeros_like(ff_mask).scatter_(-1, scores.topk(ff_keep, dim=-1).indices, True)
            with torch.no_grad():  # the authors' sparse init: Kaiming bound over the kept fan-in
                self.linear.weight.uniform_(-1 / math.sqrt(ff_keep), 1 / math.sqrt(ff_keep)).mul_(ff_mask)
        self.register_buffer("ff_mask", ff_mask)

    @property
    def effective_segment_weights(self) -> torch.Tensor:
        """Segment weights with the pruned synapses zeroed (what the forward uses)."""
        return self.segment_weights * self.segment_mask

    def segment_responses(self, context: torch.Tensor) -> torch.Tensor:
        """``[batch, out_features, num_segments]`` responses to ``context [batch, context_dim]``."""
        if context.dim() != 2 or context.shape[1] != self.context_dim:
            raise ValueError(f"DendriticLayer expects context [batch, {self.context_dim}], got {tuple(context.shape)}.")
        return torch.einsum("bc,usc->bus", context, self.effective_segment_weights.to(context.dtype))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but context has {context.shape[0]}; pass one context per sample.")
        weight = self.linear.weight * self.ff_mask if self.ff_weight_sparsity > 0 else self.linear.weight
        feedforward = nn.functional.linear(x, weight, self.linear.bias)
        return feedforward * torch.sigmoid(dendritic_gate(self.segment_responses(context)))

    def num_effective_parameters(self) -> int:
        """Trainable weights that can be nonzero (pruned segment and feed-forward synapses excluded)."""
        bias = self.linear.bias.numel() if self.linear.bias is not None else 0
        return int(self.ff_mask.sum()) + bias + int(self.segment_mask.sum())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, num_segments={self.num_segments}, "
                f"context_dim={self.context_dim}, weight_sparsity={self.weight_sparsity}, "
                f"ff_weight_sparsity={self.ff_weight_sparsity}")


register_activation_type(DendriticLayer)
