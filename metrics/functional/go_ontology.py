"""The GO graph as the GO metrics need it: which terms are ancestors of which, predictions
propagated up the graph, and information content conditional on the parent terms.

A graph is given as ``parents``: for each term index, the indices of its direct parents within the
same vocabulary (is_a / part_of edges, as CAFA and DeepFRI use them). :func:`ancestor_matrix`
turns it into a bool ``[terms, terms]`` matrix ``A`` with ``A[i, j]`` true when j is i or one of
its ancestors, which is what :func:`propagate` and :func:`information_content` take.

Why propagate: a prediction of a term implies its ancestors (the true-path rule); CAFA scores a
method's predictions after raising every ancestor's score to the best score below it
(``score(j) = max over descendants i of score(i)``). Why conditional information content
(Clark & Radivojac 2013, the ``ia`` of CAFA's Smin): ``ic(f) = -log2 P(f | Pa(f))``, the
information f adds once its parents are known, estimated as
``count(proteins with f and all its parents) / count(proteins with all parents of f)``; a root's
condition is empty (all proteins). Without a graph the marginal ``-log2 P(f)`` is the only choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["ancestor_matrix", "information_content", "propagate"]


def ancestor_matrix(parents: Sequence[Sequence[int]]) -> torch.Tensor:
    """Bool ``[terms, terms]``: ``A[i, j]`` when term j is term i or an ancestor of it.

    Example:
        >>> ancestor_matrix([[], [0], [1]]).int()  # 2 -> 1 -> 0
        tensor([[1, 0, 0],
                [1, 1, 0],
                [1, 1, 1]], dtype=torch.int32)
    """
    n = len(parents)
    direct = torch.zeros(n, n, dtype=torch.bool)
    for i, ps in enumerate(parents):
        for p in ps:
            if not 0 <= int(p) < n:
                raise ValueError(f"ancestor_matrix: term {i} names parent {p}, outside the vocabulary of {n} terms.")
            if int(p) == i:
                raise ValueError(f"ancestor_matrix: term {i} is its own parent; a GO graph is acyclic.")
            direct[i, int(p)] = True
    closure = direct | torch.eye(n, dtype=torch.bool)
    for _ in range(max(n.bit_length(), 1)):  # squaring: paths of length 2^k after k rounds
        longer = (closure.float() @ closure.float()) > 0
        if torch.equal(longer, closure):
            break
        closure = longer
    if bool(((closure & closure.t()) & ~torch.eye(n, dtype=torch.bool)).any()):
        cycle = torch.nonzero((closure & closure.t()) & ~torch.eye(n, dtype=torch.bool))[0].tolist()
        raise ValueError(f"ancestor_matrix: terms {cycle[0]} and {cycle[1]} are each other's ancestors; "
                         "a GO graph is acyclic.")
    return closure


def _check_ancestors(ancestors: torch.Tensor, terms: int, name: str) -> torch.Tensor:
    ancestors = torch.as_tensor(ancestors).bool()
    if ancestors.shape != (terms, terms):
        raise ValueError(f"{name}: ancestors must be [terms, terms] = [{terms}, {terms}] (from ancestor_matrix), "
                         f"got {tuple(ancestors.shape)}.")
    if not bool(ancestors.diagonal().all()):
        raise ValueError(f"{name}: ancestors[i, i] must be true (a term counts as its own ancestor); "
                         "build it with ancestor_matrix(parents).")
    return ancestors


def propagate(scores: torch.Tensor, ancestors: torch.Tensor) -> torch.Tensor:
    """Scores ``[proteins, terms]`` raised up the graph: each term gets the largest score of
    itself and its descendants. 0/1 labels propagate the same way (the true-path rule).

    Example:
        >>> A = ancestor_matrix([[], [0], [0]])          # terms 1 and 2 are children of 0
        >>> propagate(torch.tensor([[0.2, 0.7, 0.4]]), A)
        tensor([[0.7000, 0.7000, 0.4000]])
    """
    scores = torch.as_tensor(scores)
    ancestors = _check_ancestors(ancestors, scores.shape[-1], "propagate").to(scores.device)
    # out[p, j] = max_i scores[p, i] over i with ancestors[i, j]; one term column at a time keeps
    # memory at [proteins, terms]
    low = torch.finfo(scores.dtype).min if scores.dtype.is_floating_point else torch.iinfo(scores.dtype).min
    out = torch.empty_like(scores)
    for j in range(scores.shape[-1]):
        below = ancestors[:, j]
        out[..., j] = scores[..., below].amax(-1) if bool(below.any()) else low
    return out


def information_content(targets: torch.Tensor, ancestors: torch.Tensor | None = None) -> torch.Tensor:
    """Information content per term from annotations ``[proteins, terms]`` (float64).

    With ``ancestors`` (from :func:`ancestor_matrix`): ``-log2 P(f | Pa(f))`` on the propagated
    annotations (see the module docstring); without: the marginal ``-log2 P(f)``. A term never
    annotated gets 0 (no evidence to price it; pass your own table to charge it).

    Example:
        >>> y = torch.tensor([[1, 1, 0], [1, 0, 1], [1, 0, 0], [0, 0, 0]])
        >>> information_content(y)                                  # marginal: 3/4, 1/4, 1/4
        tensor([0.4150, 2.0000, 2.0000], dtype=torch.float64)
        >>> information_content(y, ancestor_matrix([[], [0], [0]]))  # 1 and 2 given 0: 1/3
        tensor([0.4150, 1.5850, 1.5850], dtype=torch.float64)
    """
    targets = torch.as_tensor(targets)
    if targets.dim() != 2 or targets.shape[0] == 0:
        raise ValueError(f"information_content needs targets [proteins, terms] with proteins; got {tuple(targets.shape)}.")
    term_counts, condition_counts = ic_counts(targets, ancestors)
    return ic_from_counts(term_counts, condition_counts)


def ic_counts(targets: torch.Tensor, ancestors: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(count of proteins with f, count of proteins with every parent of f)`` per term, float64:
    the sums behind :func:`information_content`, additive over batches and processes. Without a
    graph the condition is empty (every protein)."""
    y = torch.as_tensor(targets).bool()
    if ancestors is None:
        return y.sum(0).double(), torch.full((y.shape[1],), float(y.shape[0]), dtype=torch.float64, device=y.device)
    ancestors = _check_ancestors(ancestors, y.shape[1], "information_content").to(y.device)
    y = propagate(y.to(torch.uint8), ancestors).bool()
    strict = ancestors & ~torch.eye(y.shape[1], dtype=torch.bool, device=y.device)
    # a protein has every strict ancestor of f when it misses none of them (all ancestors of the
    # parents are ancestors of f, and propagated labels carry them)
    missing = (~y).double() @ strict.t().double()   # [proteins, terms]: strict ancestors of f absent
    return y.sum(0).double(), (missing == 0).sum(0).double()


def ic_from_counts(term_counts: torch.Tensor, condition_counts: torch.Tensor) -> torch.Tensor:
    """``log2(condition / count)`` where the term was seen, else 0."""
    seen = term_counts > 0
    ratio = condition_counts / term_counts.clamp_min(1e-300)
    return torch.where(seen, torch.log2(ratio.clamp_min(1.0)), torch.zeros_like(ratio))
