"""Residue graphs of protein chains as ``torch_geometric.data.Data``.

Nodes are residues. Features ``x`` (``NODE_FEATURES`` columns): amino-acid one-hot (20 + unknown),
DSSP class one-hot (coil, helix, strand), relative sequence position ``i / (L - 1)`` and 4 sin/cos
pairs of the absolute position (periods 4…64 residues). Edges: every pair of residues whose Cα
atoms are within ``radius`` Å (both directions, no self-loops), ``edge_attr`` their distance [E, 1].

Also kept: ``aa`` and ``ss`` (class indices), ``pos`` (Cα coordinates), ``name``, ``radius``; and
``site`` (0/1 per residue) when the functional residues are known (synthetic chains).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch_geometric.data import Data

from actsparse.data.protein_rpn.dssp import SS_CLASSES, secondary_structure
from actsparse.data.protein_rpn.structure import ProteinChain

__all__ = ["AMINO_ACIDS", "NODE_FEATURES", "encode_sequence", "load_graph", "node_features", "radius_edges", "residue_graph"]

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
_AA_INDEX = {a: i for i, a in enumerate(AMINO_ACIDS)}
_UNKNOWN = len(AMINO_ACIDS)
_PERIODS = (4.0, 8.0, 16.0, 64.0)
NODE_FEATURES = len(AMINO_ACIDS) + 1 + len(SS_CLASSES) + 1 + 2 * len(_PERIODS)


def encode_sequence(sequence: str) -> torch.Tensor:
    """Amino-acid indices (0-19 for the standard residues, 20 for anything else)."""
    return torch.tensor([_AA_INDEX.get(a, _UNKNOWN) for a in sequence.upper()], dtype=torch.long)


def node_features(aa: torch.Tensor, ss: torch.Tensor) -> torch.Tensor:
    """The ``[L, NODE_FEATURES]`` float features of a chain (see the module docstring)."""
    n = aa.shape[0]
    index = torch.arange(n, dtype=torch.float32)
    relative = (index / max(n - 1, 1)).unsqueeze(1)
    waves = [f(2 * math.pi * index / p) for p in _PERIODS for f in (torch.sin, torch.cos)]
    return torch.cat([
        torch.nn.functional.one_hot(aa, len(AMINO_ACIDS) + 1).float(),
        torch.nn.functional.one_hot(ss, len(SS_CLASSES)).float(),
        relative,
        torch.stack(waves, 1),
    ], 1)


def radius_edges(pos: torch.Tensor, radius: float, batch: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(edge_index [2, E], distance [E, 1])`` of all pairs within ``radius`` (same graph when
    ``batch`` is given), both directions, no self-loops. Dense per graph: fine for chains of a
    few thousand residues."""
    if batch is None:
        batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
    edges, dists = [], []
    counts = torch.bincount(batch) if batch.numel() else batch.new_zeros(0)
    start = 0
    for count in counts.tolist():
        p = pos[start: start + count]
        # the matmul form of cdist is off by ~1e-4 Å; the direct form decides the radius exactly
        d = torch.cdist(p, p, compute_mode="donot_use_mm_for_euclid_dist")
        close = d <= radius
        close.fill_diagonal_(False)
        src, dst = torch.nonzero(close, as_tuple=True)
        edges.append(torch.stack([src, dst]) + start)
        dists.append((p[src] - p[dst]).norm(dim=-1))
        start += count
    if not edges:
        return pos.new_zeros((2, 0), dtype=torch.long), pos.new_zeros((0, 1))
    return torch.cat(edges, 1), torch.cat(dists).unsqueeze(1)


def residue_graph(chain: ProteinChain, radius: float = 10.0, ss: np.ndarray | None = None,
                  site: np.ndarray | None = None) -> Data:
    """The residue graph of ``chain``: DSSP from its backbone (or the given ``ss``), Cα contacts
    within ``radius`` Å.

    Example:
        >>> import numpy as np
        >>> from actsparse.data.protein_rpn.structure import ProteinChain
        >>> ca = np.array([[0, 0, 0], [3.8, 0, 0], [7.6, 0, 0], [20, 0, 0]], dtype=np.float32)
        >>> bb = np.repeat(ca[:, None], 4, axis=1)  # a toy backbone (DSSP: all coil)
        >>> g = residue_graph(ProteinChain("toy", "A", "ACDX", bb), radius=5.0)
        >>> g.edge_index.tolist(), g.x.shape
        ([[0, 1, 1, 2], [1, 0, 2, 1]], torch.Size([4, 33]))
    """
    if radius <= 0:
        raise ValueError(f"radius must be > 0 Å, got {radius}.")
    aa = encode_sequence(chain.sequence)
    classes = secondary_structure(chain.backbone) if ss is None else np.asarray(ss, dtype=np.int64)
    if classes.shape != (len(chain),):
        raise ValueError(f"{chain.name}: {classes.shape} secondary-structure classes for {len(chain)} residues.")
    ss_t = torch.as_tensor(classes, dtype=torch.long)
    pos = torch.as_tensor(np.asarray(chain.ca, dtype=np.float32))
    edge_index, distance = radius_edges(pos, radius)
    data = Data(x=node_features(aa, ss_t), edge_index=edge_index, edge_attr=distance, pos=pos,
                aa=aa, ss=ss_t, name=chain.name, radius=float(radius))
    if site is not None:
        data.site = torch.as_tensor(np.asarray(site), dtype=torch.float32)
    return data


def load_graph(path, chain: str | None = None, radius: float = 10.0, cache=True, missing_ca: str = "error") -> Data:
    """The residue graph of a PDB/mmCIF file's chain, through the on-disk cache (``cache``: True
    for the default :class:`~actsparse.data.protein_rpn.cache.GraphCache`, a ``GraphCache``, or
    False). A file that fails to parse raises :class:`~actsparse.data.protein_rpn.structure.StructureError`
    and leaves nothing in the cache."""
    from actsparse.data.protein_rpn.cache import GraphCache
    from actsparse.data.protein_rpn.structure import read_chain

    def build() -> Data:
        return residue_graph(read_chain(path, chain=chain, missing_ca=missing_ca), radius=radius)

    if cache is False or cache is None:
        return build()
    store = cache if isinstance(cache, GraphCache) else GraphCache()
    return store.get_or_build(path, build, chain=chain, radius=float(radius), missing_ca=missing_ca)
