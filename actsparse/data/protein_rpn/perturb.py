"""Perturbed views of residue graphs for contrastive training (ProteinRPN's InfoNCE term):
Gaussian noise on the Cα coordinates (contacts recomputed from the moved atoms) and random
dropout of contacts. Both work on a single graph or on a ``Batch``; features are unchanged."""

from __future__ import annotations

import torch
from torch_geometric.data import Data

from actsparse.data.protein_rpn.graph import radius_edges

__all__ = ["coordinate_noise", "edge_dropout", "perturbed_view"]


def _radius(data: Data, radius: float | None) -> float:
    if radius is not None:
        return float(radius)
    r = getattr(data, "radius", None)
    if r is None:
        raise ValueError("coordinate_noise needs the contact radius: pass radius= or build graphs with residue_graph().")
    r = torch.as_tensor(r, dtype=torch.float32).reshape(-1)
    return float(r[0])


def coordinate_noise(data: Data, sigma: float = 0.5, radius: float | None = None,
                     generator: torch.Generator | None = None) -> Data:
    """A copy of ``data`` whose Cα positions moved by ``N(0, sigma²)`` Å per axis and whose contacts
    (and distances) are recomputed at the graph's radius.

    Example:
        >>> from torch_geometric.data import Data
        >>> g = Data(x=torch.ones(3, 1), pos=torch.tensor([[0., 0, 0], [4, 0, 0], [30, 0, 0]]), radius=5.0)
        >>> coordinate_noise(g, sigma=0.0).edge_index.tolist()
        [[0, 1], [1, 0]]
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 Å, got {sigma}.")
    out = data.clone()
    noise = torch.randn(out.pos.shape, generator=generator, dtype=out.pos.dtype) if sigma > 0 else 0.0
    out.pos = out.pos + sigma * (noise.to(out.pos.device) if sigma > 0 else 0.0)
    out.edge_index, out.edge_attr = radius_edges(out.pos, _radius(data, radius), getattr(out, "batch", None))
    return out


def edge_dropout(data: Data, p: float = 0.1, generator: torch.Generator | None = None) -> Data:
    """A copy of ``data`` without a random fraction ``p`` of its contacts; a contact and its
    reverse are dropped together, so the graph stays undirected."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"edge dropout p must be in [0, 1), got {p}.")
    out = data.clone()
    src, dst = out.edge_index
    n = int(out.num_nodes)
    # one coin per undirected pair, shared by both directions
    lo, hi = torch.minimum(src, dst), torch.maximum(src, dst)
    pair = lo * n + hi
    unique, inverse = torch.unique(pair, return_inverse=True)
    keep_pair = torch.rand(unique.shape[0], generator=generator) >= p
    keep = keep_pair.to(src.device)[inverse]
    out.edge_index = out.edge_index[:, keep]
    if getattr(out, "edge_attr", None) is not None:
        out.edge_attr = out.edge_attr[keep]
    return out


def perturbed_view(data: Data, sigma: float = 0.5, p: float = 0.1, generator: torch.Generator | None = None) -> Data:
    """Coordinate noise, then edge dropout: the second view of ProteinRPN's InfoNCE pair."""
    return edge_dropout(coordinate_noise(data, sigma, generator=generator), p, generator=generator)
