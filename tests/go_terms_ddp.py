"""The worker of tests/metrics/test_protein_metrics.py's DDP test, in a light module: spawned processes
import only this (torch and actsparse.metrics), not the test module with Lightning."""

import torch

from actsparse.metrics.go_terms import AUPR, Fmax, Smin


def go_data():
    g = torch.Generator().manual_seed(5)
    targets = (torch.rand(37, 6, generator=g) < 0.3).float()
    targets[:, 0] = 1.0  # every protein annotated
    preds = (0.6 * targets + 0.6 * torch.rand(37, 6, generator=g)).clamp(0, 1)
    return preds, targets


def metric_values(parts):
    metrics = {"fmax": Fmax(), "smin": Smin(), "aupr_micro": AUPR("micro"), "aupr_macro": AUPR("macro")}
    for preds, targets in parts:
        for metric in metrics.values():
            metric.update(preds, targets)
    return {name: float(metric.compute()) for name, metric in metrics.items()}


def worker(rank, world):
    """Uneven shards (rank 0 gets 13 proteins in two updates, rank 1 the rest): compute() must
    see every process's proteins."""
    preds, targets = go_data()
    if rank == 0:
        parts = [(preds[:5], targets[:5]), (preds[5:13], targets[5:13])]
    else:
        parts = [(preds[13:], targets[13:])]
    return metric_values(parts)
