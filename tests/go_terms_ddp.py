"""The worker of tests/metrics/test_protein_metrics.py's DDP test, in a light module: spawned processes
import only this (torch and actsparse.metrics), not the test module with Lightning."""

import torch
from actsparse.metrics.functional.go_ontology import ancestor_matrix
from actsparse.metrics.go_terms import AUPR, Fmax, Smin

PARENTS = [[4], [4], [5], [5], [], []]  # four leaves under two roots, like the synthetic terms


def go_data():
    g = torch.Generator().manual_seed(5)
    targets = (torch.rand(37, 6, generator=g) < 0.3).float()
    targets[:, 0] = 1.0
    targets[[3, 20, 30]] = 0.0  # three unannotated proteins: left out of Fmax and Smin
    preds = (0.6 * targets + 0.6 * torch.rand(37, 6, generator=g)).clamp(0, 1)
    return preds, targets


def metric_values(parts, graph: bool = False):
    ancestors = ancestor_matrix(PARENTS) if graph else None
    metrics = {"fmax": Fmax(ancestors=ancestors, details=True), "smin": Smin(ancestors=ancestors, num_terms=6),
               "aupr_micro": AUPR("micro", ancestors), "aupr_macro": AUPR("macro", ancestors)}
    for preds, targets in parts:
        for metric in metrics.values():
            metric.update(preds, targets)
    values = {}
    for name, metric in metrics.items():
        value = metric.compute()
        if name == "fmax":
            values["fmax"], values["coverage"] = float(value.fmax), float(value.coverage)
        else:
            values[name] = float(value)
    return values


def worker(rank, world):
    """Uneven shards (rank 0 gets 13 proteins in two updates, rank 1 the rest): compute() must
    see every process's proteins, with and without a GO graph."""
    preds, targets = go_data()
    if rank == 0:
        parts = [(preds[:5], targets[:5]), (preds[5:13], targets[5:13])]
    else:
        parts = [(preds[13:], targets[13:])]
    return {"flat": metric_values(parts), "graph": metric_values(parts, graph=True)}
