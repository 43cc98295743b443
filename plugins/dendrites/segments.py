"""Active dendrites: a linear layer whose units are gated by dendritic segments that read a
context vector (Iyer et al. 2022, "Avoiding catastrophe: active dendrites enable multi-task
learning in dynamic environments"; DESIGN §4).

Each of the ``out_features`` units has ``num_segments`` segments, each a weight vector over
the ``context_dim`` context inputs with a fixed fraction of its weights pinned to zero
(``weight_sparsity``; the mask is a buffer, so pruned synapses stay pruned through training
and checkpoints). For context ``c`` the segment responses are ``d[u, j] = w[u, j] · c``; unit
``u`` is gated by the response of largest magnitude, sign kept (absolute-max gating):

    y_u = (W x + b)_u · sigmoid(d[u, j*]),   j* = argmax_j |d[u, j]|

The layer is a bare activation site (its output is the site tensor), so site recording and
the monitors see it; pair it with :class:`~actsparse.plugins.dendrites.kwinners.KWinners` for
sparse activity.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from actsparse.plugins.sites import register_activation_type

__all__ = ["DendriticLayer", "dendritic_gate"]


def dendritic_gate(responses: torch.Tensor) -> torch.Tensor:
    """``[..., units, segments]`` responses -> ``[..., units]``: per unit the response of
    largest magnitude (sign kept), the input of the sigmoid gate."""
    idx = responses.abs().argmax(dim=-1, keepdim=True)
    return responses.gather(-1, idx).squeeze(-1)


class DendriticLayer(nn.Module):
    """``nn.Linear(in_features, out_features)`` gated per unit by its strongest dendritic segment.

    Args:
        num_segments: segments per unit.
        context_dim: size of the context vector passed to :meth:`forward`.
        weight_sparsity: fraction of each segment's context weights fixed at zero (0 <= . < 1);
            every segment keeps ``round((1 − weight_sparsity)·context_dim)`` weights (at least 1).
        seed: seeds the sparsity mask (None: drawn from torch's global generator).

    Example:
        >>> layer = DendriticLayer(6, 4, num_segments=3, context_dim=5, weight_sparsity=0.4)
        >>> layer(torch.randn(2, 6), torch.randn(2, 5)).shape
        torch.Size([2, 4])
        >>> int(layer.segment_mask.sum(-1).unique())  # 3 of 5 context weights per segment
        3
    """

    def __init__(self, in_features: int, out_features: int, num_segments: int, context_dim: int,
                 weight_sparsity: float = 0.5, bias: bool = True, seed: int | None = None) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features),
                        ("num_segments", num_segments), ("context_dim", context_dim)):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"DendriticLayer: {name} must be a positive integer, got {v!r}.")
        if not 0 <= weight_sparsity < 1:
            raise ValueError(f"weight_sparsity must be in [0, 1) (fraction of zero segment weights), got {weight_sparsity}.")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.num_segments, self.context_dim = int(num_segments), int(context_dim)
        self.weight_sparsity = float(weight_sparsity)
        self.linear = nn.Linear(self.in_features, self.out_features, bias=bias)
        self.segment_weights = nn.Parameter(torch.empty(self.out_features, self.num_segments, self.context_dim))
        keep = max(1, round((1 - self.weight_sparsity) * self.context_dim))
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        scores = torch.rand(self.out_features, self.num_segments, self.context_dim, generator=generator)
        mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, scores.topk(keep, dim=-1).indices, True)
        self.register_buffer("segment_mask", mask)
        bound = 1 / math.sqrt(keep)  # fan-in of a segment is its kept weights
        with torch.no_grad():
            self.segment_weights.uniform_(-bound, bound).mul_(mask)

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
        return self.linear(x) * torch.sigmoid(dendritic_gate(self.segment_responses(context)))

    def num_effective_parameters(self) -> int:
        """Trainable weights that can be nonzero (pruned segment synapses excluded)."""
        linear = sum(p.numel() for p in self.linear.parameters())
        return linear + int(self.segment_mask.sum())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, num_segments={self.num_segments}, "
                f"context_dim={self.context_dim}, weight_sparsity={self.weight_sparsity}")


register_activation_type(DendriticLayer)
