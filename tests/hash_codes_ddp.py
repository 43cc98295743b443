"""The worker of tests/metrics/test_hash_codes.py's DDP test, in a light module: spawned processes
import only this (torch and actsparse.metrics), not the test module with Lightning."""

import numpy as np
import torch

from actsparse.metrics.hash_codes import CodeCategorization, HashCodePurity, RedundancyRatio


def ddp_data():
    rng = np.random.default_rng(11)
    codes = torch.from_numpy(rng.random((250, 7)) < 0.5)
    labels = torch.from_numpy(rng.integers(0, 4, 250))
    test_codes = torch.from_numpy(rng.random((90, 7)) < 0.5)
    test_labels = torch.from_numpy(rng.integers(0, 4, 90))
    return codes, labels, test_codes, test_labels


def metrics_on(parts):
    r, p, c = RedundancyRatio(), HashCodePurity(), CodeCategorization(n_clusters=4, train_accuracy=True)
    for codes, labels, test_codes, test_labels in parts:
        r.update(codes)
        p.update(codes, labels)
        c.update(codes, labels, split="train")
        c.update(test_codes, test_labels, split="test")
    return {"redundancy": float(r.compute()), "purity": float(p.compute()),
            **{k: float(v) for k, v in c.compute().items()}}


def worker(rank, world):
    codes, labels, test_codes, test_labels = ddp_data()
    cut, test_cut = 103, 40  # uneven shards: gathering must handle different lengths
    if rank == 0:
        part = (codes[:cut], labels[:cut], test_codes[:test_cut], test_labels[:test_cut])
    else:
        part = (codes[cut:], labels[cut:], test_codes[test_cut:], test_labels[test_cut:])
    return metrics_on([part])
