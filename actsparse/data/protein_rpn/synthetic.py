"""Synthetic protein-like chains with planted functional motifs: the embedded default data set
(nothing downloaded), where the functional residues and the GO-like labels are known, so region
localization can be measured.

Each chain is a string of secondary-structure segments (helix 8-16, strand 4-8, coil 3-7
residues) whose backbone (N, CA, C, O) is built from ideal bond geometry and segment-typical
φ/ψ angles (helix -57°/-47°, strand -120°/+130°, coil sampled around PPII/turn regions) by
NeRF. Secondary structure is then assigned by DSSP like for real files.

Motifs: ``num_motifs`` types (default 4), each 3 key residues (fixed amino acids at fixed
offsets; the motifs' residue sets are disjoint, drawn from functional-site-like amino acids, which
the background sequence never uses) that must sit in a helix or a coil segment; helical motifs
put their residues on one face (offsets like i, i+3, i+4), so they are close in space. Every
chain carries 1 or 2 motifs; its labels are the leaf term of each motif plus the parent term of
its group (``num_motifs // 2`` parents, two motifs each: a two-level GO-like hierarchy obeying the
true-path rule). Decoys: with probability 1/2 each absent motif's key residues are all present
too, but scattered one by one, so the composition of a chain does not tell its labels (a
logistic regression on composition is near chance); the residues must be together in space.
``data.site`` marks the planted key residues.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import Data

from actsparse.data.protein_rpn.graph import AMINO_ACIDS, residue_graph
from actsparse.data.protein_rpn.structure import ProteinChain

__all__ = ["Motif", "SyntheticChain", "background_probabilities", "build_backbone", "make_motifs", "plant_sequence",
           "synthetic_chain", "synthetic_dataset", "term_parents"]

# Ideal backbone geometry (Engh & Huber): bond lengths (Å) and angles (degrees).
_N_CA, _CA_C, _C_N, _C_O = 1.458, 1.525, 1.329, 1.231
_ANG_N_CA_C, _ANG_CA_C_N, _ANG_C_N_CA, _ANG_CA_C_O = 111.2, 116.2, 121.7, 120.5
_SS_ANGLES = {"H": (-57.0, -47.0), "E": (-120.0, 130.0)}
_COIL_CENTRES = [(-65.0, 145.0), (-90.0, 0.0), (60.0, 40.0), (-75.0, -20.0)]
_KEY_POOL = "CHDEKRSTYWNQ"  # functional-site-like residues; motifs draw disjoint sets from these
# Background amino-acid frequencies (roughly UniProt), motif residues excluded later.
_BACKGROUND = np.array([8.3, 1.4, 5.5, 6.7, 3.9, 7.1, 2.3, 5.9, 5.8, 9.7, 2.4, 4.1, 4.7, 3.9, 5.5, 6.6, 5.3, 6.9, 1.1, 2.9])


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # np.cross costs ~50 µs per call on 3-vectors; this is 10x faster and the hot loop of NeRF
    return np.array([u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]])


def _place(a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle: float, torsion: float) -> np.ndarray:
    """NeRF: the atom d with |cd| = bond, angle bcd = angle, torsion abcd = torsion (degrees)."""
    angle, torsion = np.radians(angle), np.radians(torsion)
    bc = c - b
    bc /= np.linalg.norm(bc)
    n = _cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = _cross(n, bc)
    d2 = np.array([-bond * np.cos(angle), bond * np.sin(angle) * np.cos(torsion), bond * np.sin(angle) * np.sin(torsion)])
    return c + d2[0] * bc + d2[1] * m + d2[2] * n


def build_backbone(phi: np.ndarray, psi: np.ndarray, omega: float = 180.0) -> np.ndarray:
    """Backbone ``[L, 4, 3]`` (N, CA, C, O) from φ/ψ (degrees) with ideal bonds and angles."""
    n_res = len(phi)
    bb = np.zeros((n_res, 4, 3))
    bb[0, 0] = [0.0, 0.0, 0.0]
    bb[0, 1] = [_N_CA, 0.0, 0.0]
    ang = np.radians(_ANG_N_CA_C)
    bb[0, 2] = bb[0, 1] + _CA_C * np.array([-np.cos(ang), np.sin(ang), 0.0])
    for i in range(1, n_res):
        bb[i, 0] = _place(bb[i - 1, 0], bb[i - 1, 1], bb[i - 1, 2], _C_N, _ANG_CA_C_N, psi[i - 1])
        bb[i, 1] = _place(bb[i - 1, 1], bb[i - 1, 2], bb[i, 0], _N_CA, _ANG_C_N_CA, omega)
        bb[i, 2] = _place(bb[i - 1, 2], bb[i, 0], bb[i, 1], _CA_C, _ANG_N_CA_C, phi[i])
    for i in range(n_res):
        # O lies in the peptide plane, opposite the next N (torsion N-CA-C-O = psi + 180)
        bb[i, 3] = _place(bb[i, 0], bb[i, 1], bb[i, 2], _C_O, _ANG_CA_C_O, psi[i] + 180.0)
    return bb.astype(np.float32)


@dataclass(frozen=True)
class Motif:
    """A planted functional motif: amino acids ``residues`` at ``offsets`` in a ``ss`` segment
    (``"H"`` helix or ``"C"`` coil), labelled with term ``term`` and parent term ``parent``."""

    residues: str
    offsets: tuple[int, ...]
    ss: str
    term: int
    parent: int

    @property
    def span(self) -> int:
        return max(self.offsets) + 1


def make_motifs(num_motifs: int = 4, seed: int = 0, residues_per_motif: int = 3) -> list[Motif]:
    """``num_motifs`` motif types (even, >= 2) with disjoint key residues, alternating helix and
    coil motifs, and their term and parent-term indices."""
    if num_motifs < 2 or num_motifs % 2:
        raise ValueError(f"num_motifs must be an even number >= 2, got {num_motifs}.")
    if num_motifs * residues_per_motif > len(_KEY_POOL):
        raise ValueError(f"{num_motifs} motifs x {residues_per_motif} residues need more than the "
                         f"{len(_KEY_POOL)} functional-site-like amino acids ({_KEY_POOL}); use fewer.")
    rng = np.random.default_rng(10_000 + seed)
    letters = list(rng.permutation(list(_KEY_POOL)))
    helix_faces = [(0, 3, 4, 7), (0, 4, 7, 11), (0, 3, 7, 10)]  # one face of the helix: close in space
    coil_offsets = [(0, 1, 3, 4), (0, 2, 3, 5), (0, 1, 2, 4)]
    motifs = []
    for k in range(num_motifs):
        ss = "H" if k % 2 == 0 else "C"
        offsets = (helix_faces if ss == "H" else coil_offsets)[k // 2 % 3][:residues_per_motif]
        residues = "".join(letters[k * residues_per_motif:(k + 1) * residues_per_motif])
        motifs.append(Motif(residues, tuple(offsets), ss, term=k, parent=num_motifs + k // 2))
    return motifs


@dataclass
class SyntheticChain:
    chain: ProteinChain
    labels: np.ndarray   # 0/1 per term (leaves then parents)
    site: np.ndarray     # 0/1 per residue: planted key residues
    motifs: list[int]    # motif types planted


def _segments(length: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    segments, total, previous = [], 0, "C"
    while total < length:
        kind = rng.choice(["H", "E", "C"], p=[0.45, 0.2, 0.35]) if previous == "C" else "C"
        size = {"H": rng.integers(8, 17), "E": rng.integers(4, 9), "C": rng.integers(3, 8)}[kind]
        size = int(min(size, length - total))
        segments.append((str(kind), size))
        total += size
        previous = str(kind)
    return segments


def synthetic_chain(index: int, motifs: list[Motif], rng: np.random.Generator,
                    min_length: int = 60, max_length: int = 140) -> SyntheticChain:
    """One chain with 1-2 planted motifs (see the module docstring)."""
    length = int(rng.integers(min_length, max_length + 1))
    for _ in range(100):
        segments = _segments(length, rng)
        chosen = list(rng.choice(len(motifs), size=int(rng.integers(1, 3)), replace=False))
        starts, spots = [], []
        for m in chosen:
            motif = motifs[m]
            fits = [(s, n) for s, n in _segment_starts(segments) if segments_kind(segments, s) == motif.ss
                    and n >= motif.span + 1 and all(abs(s - t) > 20 for t in starts)]
            if not fits:
                break
            s, n = fits[int(rng.integers(len(fits)))]
            start = s + int(rng.integers(0, n - motif.span))
            starts.append(s)
            spots.append((m, start))
        if len(spots) == len(chosen):
            break
    else:
        raise RuntimeError("could not place motifs; increase min_length")
    phi, psi, kinds = [], [], []
    for kind, size in segments:
        for _ in range(size):
            if kind == "C":
                centre = _COIL_CENTRES[int(rng.integers(len(_COIL_CENTRES)))]
                angles = (centre[0] + rng.normal(0, 15), centre[1] + rng.normal(0, 15))
            else:
                base = _SS_ANGLES[kind]
                angles = (base[0] + rng.normal(0, 4), base[1] + rng.normal(0, 4))
            phi.append(angles[0])
            psi.append(angles[1])
            kinds.append(kind)
    seq, site, labels = plant_sequence(length, motifs, spots, rng)
    backbone = build_backbone(np.array(phi), np.array(psi))
    chain = ProteinChain(name=f"synthetic_{index:05d}", chain="A", sequence="".join(seq), backbone=backbone,
                         residue_ids=[str(i + 1) for i in range(length)], source="synthetic")
    return SyntheticChain(chain, labels, site, [int(m) for m, _ in spots])


def background_probabilities(motifs: list[Motif]) -> np.ndarray:
    """Amino-acid probabilities (order of ``AMINO_ACIDS``) of the background sequence: roughly
    UniProt's, without any motif's key residues."""
    key = set("".join(m.residues for m in motifs))
    background = np.array([0.0 if a in key else f for a, f in zip(AMINO_ACIDS, _BACKGROUND)])
    return background / background.sum()


def plant_sequence(length: int, motifs: list[Motif], spots: list[tuple[int, int]], rng: np.random.Generator
                   ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A background sequence with motif ``m``'s key residues at ``start + offsets`` for each
    ``(m, start)`` of ``spots``, and decoys; returns ``(sequence, site, labels)``."""
    seq = list(rng.choice(list(AMINO_ACIDS), size=length, p=background_probabilities(motifs)))
    site = np.zeros(length, dtype=np.float32)
    labels = np.zeros(len(motifs) + len(motifs) // 2, dtype=np.float32)
    for m, start in spots:
        motif = motifs[m]
        for aa, off in zip(motif.residues, motif.offsets):
            seq[start + off] = aa
            site[start + off] = 1.0
        labels[motif.term] = labels[motif.parent] = 1.0
    # decoys: with probability 1/2, every key residue of an absent motif, each at its own random
    # place, so the composition of a chain does not tell which motifs it carries
    chosen = {m for m, _ in spots}
    free = [i for i in range(length) if site[i] == 0]
    for m, motif in enumerate(motifs):
        if m in chosen or rng.random() < 0.5:
            continue
        for aa in motif.residues:
            seq[free[int(rng.integers(len(free)))]] = aa
    return seq, site, labels


def term_parents(num_motifs: int) -> list[list[int]]:
    """The GO-like graph of the synthetic terms: each leaf ``motif_k`` has the parent ``group_{k // 2}``
    (indices: leaves 0..num_motifs-1, then the groups); the groups are roots.

    Example:
        >>> term_parents(4)
        [[4], [4], [5], [5], [], []]
    """
    return [[num_motifs + k // 2] for k in range(num_motifs)] + [[] for _ in range(num_motifs // 2)]


def _segment_starts(segments: list[tuple[str, int]]) -> list[tuple[int, int]]:
    out, pos = [], 0
    for _, size in segments:
        out.append((pos, size))
        pos += size
    return out


def segments_kind(segments: list[tuple[str, int]], start: int) -> str:
    pos = 0
    for kind, size in segments:
        if pos == start:
            return kind
        pos += size
    return ""


def synthetic_dataset(num_proteins: int = 300, num_motifs: int = 4, seed: int = 0, radius: float = 10.0,
                      min_length: int = 60, max_length: int = 140) -> tuple[list[Data], list[str]]:
    """``(graphs, term names)``: residue graphs with ``y`` ``[1, terms]`` and ``site`` set.

    Example:
        >>> graphs, terms = synthetic_dataset(num_proteins=2, num_motifs=2, seed=0)
        >>> len(graphs), terms, graphs[0].y.shape
        (2, ['motif_0', 'motif_1', 'group_0'], torch.Size([1, 3]))
    """
    if num_proteins < 1:
        raise ValueError(f"num_proteins must be >= 1, got {num_proteins}.")
    motifs = make_motifs(num_motifs, seed)
    rng = np.random.default_rng(seed)
    graphs = []
    for i in range(num_proteins):
        item = synthetic_chain(i, motifs, rng, min_length, max_length)
        g = residue_graph(item.chain, radius=radius, site=item.site)
        g.y = torch.from_numpy(item.labels).unsqueeze(0)
        graphs.append(g)
    names = [f"motif_{k}" for k in range(num_motifs)] + [f"group_{j}" for j in range(num_motifs // 2)]
    return graphs, names
