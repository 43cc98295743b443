"""Sequence-identity clusters and a split by cluster (issue 25): no test chain shares more than ``threshold``
sequence identity with any training chain, so a model cannot score by recognising a near copy of a training chain.

    identity_clusters(["MKV...", "MKI...", "GSH..."], threshold=0.3)   # [0, 0, 1]
    train, val, test = identity_split(sequences, threshold=0.3, val_fraction=0.2, test_fraction=0.2, seed=0)

Identity is CD-HIT's: identical aligned residues over the length of the shorter chain, from a global alignment with
free end gaps (Biopython ``PairwiseAligner``, BLOSUM62, gap open -10 / extend -0.5, EMBOSS needle's defaults), so a
fragment of a chain is 100% identical to it. Unrelated sequences reach about 20% this way (the alignment's gaps
line up chance matches): thresholds below ~0.25 merge unrelated chains.

Clusters are single-linkage, built greedily: each chain (longest first) is aligned to the chains already placed
and joins, merging them, every cluster holding a chain it matches at >= ``threshold``. CD-HIT's representative-only
comparison is faster but can leave two chains above the threshold in different clusters, which a split must not.
The cost is one alignment per pair of chains not yet in one cluster (about 1 ms for two 300-residue chains):
minutes for a few thousand chains; larger sets want MMseqs2/CD-HIT clusters computed outside.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from Bio.Align import PairwiseAligner, substitution_matrices

__all__ = ["identity_aligner", "identity_clusters", "identity_split", "sequence_identity"]

log = logging.getLogger(__name__)


def identity_aligner() -> PairwiseAligner:
    """The global aligner ``sequence_identity`` uses: BLOSUM62, gaps -10/-0.5, end gaps free."""
    aligner = PairwiseAligner(mode="global")
    aligner.substitution_matrix = substitution_matrices.load("BLOSUM62")
    aligner.open_gap_score, aligner.extend_gap_score = -10.0, -0.5
    # free end gaps: a domain or a fragment aligns to its full-length chain without paying for the overhang
    aligner.end_insertion_score = aligner.end_deletion_score = 0.0
    return aligner


def _clean(sequence: str) -> str:
    # BLOSUM62 has no score for non-standard letters other than B, Z, X, *: map every other letter to X
    return "".join(c if c in "ACDEFGHIKLMNPQRSTVWYBZX" else "X" for c in sequence.upper())


def sequence_identity(a: str, b: str, aligner: PairwiseAligner | None = None) -> float:
    """Identical aligned residues (unknown ``X`` never counts) / length of the shorter sequence (0 when either is empty).

    >>> sequence_identity("MKTAYIAKQR", "MKTAYIAKQR"), sequence_identity("MKTAYIAKQR", "MKTAWIAKQR")
    (1.0, 0.9)
    >>> sequence_identity("MKTAYIAKQRQISFVKSHFSRQ", "AKQRQISFVK")   # a fragment
    1.0
    """
    a, b = _clean(a), _clean(b)
    if not a or not b:
        return 0.0
    alignment = (aligner or identity_aligner()).align(a, b)[0]
    # identical aligned pairs, an unknown residue (X) matching nothing: chains of unknowns are not near copies
    same = sum(a[i + k] == b[j + k] != "X" for (i, i_end), (j, _) in zip(*alignment.aligned) for k in range(i_end - i))
    return same / min(len(a), len(b))


def identity_clusters(sequences: Sequence[str], threshold: float) -> list[int]:
    """Single-linkage cluster of each sequence at ``threshold`` identity (``sequence_identity``), numbered from 0
    in order of each cluster's longest member; two sequences at >= ``threshold`` always share a cluster."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"identity threshold must be in (0, 1] (a fraction, e.g. 0.3 for 30%), got {threshold}.")
    aligner = identity_aligner()
    parent = list(range(len(sequences)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    order = sorted(range(len(sequences)), key=lambda i: (-len(sequences[i]), i))
    for n, i in enumerate(order):
        for j in order[:n]:
            if root(i) != root(j) and sequence_identity(sequences[i], sequences[j], aligner) >= threshold:
                parent[root(j)] = root(i)
    numbers: dict[int, int] = {}
    for i in order:
        numbers.setdefault(root(i), len(numbers))
    return [numbers[root(i)] for i in range(len(sequences))]


def identity_split(sequences: Sequence[str], threshold: float, val_fraction: float, test_fraction: float,
                   seed: int = 0) -> tuple[list[int], list[int], list[int]]:
    """Indices of the (train, val, test) chains: whole identity clusters, in a seeded random order, fill the test
    set until it holds ``test_fraction`` of the chains, then the validation set, the rest train. No chain of one set
    is at >= ``threshold`` identity to a chain of another. Cluster sizes make the fractions approximate; a
    cluster larger than the test or validation share goes wherever it falls, and an empty training set is an error."""
    clusters = identity_clusters(sequences, threshold)
    members: dict[int, list[int]] = {}
    for i, c in enumerate(clusters):
        members.setdefault(c, []).append(i)
    order = torch.randperm(len(members), generator=torch.Generator().manual_seed(seed)).tolist()
    n = len(sequences)
    targets = (round(test_fraction * n), round(val_fraction * n))
    test: list[int] = []
    val: list[int] = []
    train: list[int] = []
    for c in order:
        if len(test) < targets[0]:
            test += members[c]
        elif len(val) < targets[1]:
            val += members[c]
        else:
            train += members[c]
    if not train:
        raise ValueError(f"the identity split left no training chain: {len(members)} clusters at identity {threshold} "
                         f"for {n} chains; raise the threshold or lower val_fraction/test_fraction.")
    log.info("identity split at %.2f: %d clusters; %d train / %d val / %d test chains", threshold, len(members),
             len(train), len(val), len(test))
    return sorted(train), sorted(val), sorted(test)
