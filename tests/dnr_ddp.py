"""The worker of tests/callbacks/test_dnr.py's DDP test, in a light module: spawned processes import only
this (torch and actsparse.metrics), not the test module with Lightning."""

import torch

from actsparse.metrics import DeadNeuronRate


def ddp_data():
    g = torch.Generator().manual_seed(5)
    a = torch.relu(torch.randn(37, 6, generator=g) - 0.3)
    a[:, 2] = 0  # dead everywhere
    a[:20, 4] = 0  # dead on rank 0's rows only: alive globally
    b = torch.relu(torch.randn(37, 3, 2, 2, generator=g))
    return a, b


def metric_on(parts):
    metric = DeadNeuronRate(["a", "b"])
    for a, b in parts:
        metric.update({"a": a, "b": b})
    values = {f"dnr/{k}": float(v) for k, v in metric.compute().items()}
    values.update({f"dead/{k}": float(v) for k, v in metric.dead_neurons().items()})
    inactive, entries = metric.totals()  # the summed counts a step window is made of
    values.update({f"window/{k}": float(v) for k, v in metric.value_of(inactive, entries).items()})
    values.update({"inactive/a": float(inactive[0]), "entries/a": float(entries[0])})
    return values


def worker(rank, world):
    a, b = ddp_data()
    part = (a[:20], b[:20]) if rank == 0 else (a[20:], b[20:])  # uneven shards
    return metric_on([part])
