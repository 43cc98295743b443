"""Motifs planted into real protein backbones: the synthetic task's labels and functional sites on
real geometry (helix packing, loops, contact density of solved structures) instead of ideal chains.

Each protein takes one backbone of ``backbone_dir`` (in turn, so every file is used), keeps its
coordinates and DSSP secondary structure, and gets a new sequence: background amino acids, 1-2
motifs of :func:`~actsparse.data.protein_rpn.synthetic.make_motifs` planted in a helix or coil
stretch of the kind each motif needs (helical motifs on one helix face), and decoys — the same
rules as the synthetic chains (:func:`~actsparse.data.protein_rpn.synthetic.plant_sequence`).
A few real backbones give many proteins: they differ in sequence, motifs and motif positions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

from actsparse.data.protein_rpn.dssp import SS_CLASSES, secondary_structure
from actsparse.data.protein_rpn.graph import residue_graph
from actsparse.data.protein_rpn.structure import ProteinChain, read_chain
from actsparse.data.protein_rpn.synthetic import Motif, make_motifs, plant_sequence

__all__ = ["motif_spots", "planted_dataset", "ss_runs"]

_HELIX, _COIL = SS_CLASSES.index("helix"), SS_CLASSES.index("coil")


def ss_runs(ss: np.ndarray) -> list[tuple[int, int, int]]:
    """``(start, length, class)`` of each run of equal secondary-structure class.

    Example:
        >>> ss_runs(np.array([0, 0, 1, 1, 1, 2]))
        [(0, 2, 0), (2, 3, 1), (5, 1, 2)]
    """
    runs, start = [], 0
    for i in range(1, len(ss) + 1):
        if i == len(ss) or ss[i] != ss[start]:
            runs.append((start, i - start, int(ss[start])))
            start = i
    return runs


def motif_spots(ss: np.ndarray, motifs: list[Motif], chosen: list[int], rng: np.random.Generator,
                min_gap: int = 20) -> list[tuple[int, int]] | None:
    """Where to plant each chosen motif: ``(motif, start)`` inside a run of its secondary
    structure long enough for it, runs at least ``min_gap`` residues apart; None when they do not fit."""
    runs = ss_runs(ss)
    spots, starts = [], []
    for m in chosen:
        want = _HELIX if motifs[m].ss == "H" else _COIL
        fits = [(s, n) for s, n, kind in runs if kind == want and n >= motifs[m].span + 1
                and all(abs(s - t) > min_gap for t in starts)]
        if not fits:
            return None
        s, n = fits[int(rng.integers(len(fits)))]
        starts.append(s)
        spots.append((m, s + int(rng.integers(0, n - motifs[m].span))))
    return spots


def planted_dataset(backbone_dir: str | Path, num_proteins: int = 300, num_motifs: int = 4, seed: int = 0,
                    radius: float = 10.0) -> tuple[list[Data], list[str]]:
    """``(graphs, term names)`` like :func:`~actsparse.data.protein_rpn.synthetic.synthetic_dataset`,
    on the real backbones of the structure files in ``backbone_dir``."""
    from actsparse.data.protein_rpn.datamodule import structure_files

    if num_proteins < 1:
        raise ValueError(f"num_proteins must be >= 1, got {num_proteins}.")
    motifs = make_motifs(num_motifs, seed)
    templates = []
    for path in structure_files(backbone_dir):
        chain = read_chain(path, missing_ca="skip")
        ss = secondary_structure(chain.backbone)
        if any(motif_spots(ss, motifs, [m], np.random.default_rng(0)) for m in range(num_motifs)):
            templates.append((chain, ss))
    if not templates:
        raise ValueError(f"no backbone in {backbone_dir} has a helix or coil stretch long enough for a motif.")
    rng = np.random.default_rng(seed)
    graphs = []
    for i in range(num_proteins):
        for attempt in range(200):
            chain, ss = templates[(i + attempt) % len(templates)]
            chosen = [int(m) for m in rng.choice(num_motifs, size=int(rng.integers(1, 3)), replace=False)]
            spots = motif_spots(ss, motifs, chosen, rng)
            if spots is not None:
                break
        else:
            raise RuntimeError(f"could not place motifs into the backbones of {backbone_dir}; use fewer motifs.")
        seq, site, labels = plant_sequence(len(chain), motifs, spots, rng)
        planted = ProteinChain(name=f"planted_{i:05d}_{chain.name}", chain=chain.chain, sequence="".join(seq),
                               backbone=chain.backbone, residue_ids=chain.residue_ids, source=chain.source)
        g = residue_graph(planted, radius=radius, ss=ss, site=site)
        g.y = torch.from_numpy(labels).unsqueeze(0)
        graphs.append(g)
    names = [f"motif_{k}" for k in range(num_motifs)] + [f"group_{j}" for j in range(num_motifs // 2)]
    return graphs, names
