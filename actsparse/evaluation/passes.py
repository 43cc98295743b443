"""The data passes of PPL-p% sparsity and the joint CETT search: one dense pass that records the
FFN sites' tensors at real tokens and calibrates thresholds (:func:`prepare_model`), then
truncated passes that score K threshold settings at once on a batch replicated K times
(:func:`truncated_pass`).

Under DDP (``torch.distributed`` initialized) every process passes its shard: losses and counts
are summed over processes and calibration rows gathered, so every process takes the same
decisions. Pads (per ``mask_fn``, default :func:`~actsparse.evaluation.lm_loss.batch_mask`) are
neither calibration rows nor counted entries.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import torch
from torch import nn

from actsparse.evaluation.calibration import Calibration
from actsparse.evaluation.lm_loss import LossFn, MaskFn, batch_mask, causal_lm_loss
from actsparse.evaluation.truncation import real_rows, truncate
from actsparse.metrics.functional.sparsity import sparsity_counts
from actsparse.plugins.sites import Site, ffn_sites
from actsparse.runtime import all_cat, all_sum, distributed

__all__ = ["DensePass", "PreparedModel", "dense_pass", "first_batches", "prepare_model", "truncated_pass"]


def first_batches(dataloader: Iterable, max_batches: int | None) -> Iterator[Any]:
    """The batches of ``dataloader``, at most ``max_batches`` of them (None: all)."""
    for i, batch in enumerate(dataloader):
        if max_batches is not None and i >= max_batches:
            break
        yield batch


class DensePass(NamedTuple):
    """What :func:`dense_pass` read (this process's data)."""

    loss_sum: torch.Tensor  # float64 [1]
    tokens: int
    rows: dict[str, torch.Tensor]  # site name -> x1 rows at real tokens (sampled with calibration_tokens)
    zero_counts: dict[str, torch.Tensor]  # site name -> float64 [exact zeros, entries] at real tokens
    per_batch: list[tuple[float, int]]  # (loss sum, tokens) of each batch


@dataclass
class PreparedModel:
    """A model made ready for truncated passes: its dense pass, calibration and data."""

    model: nn.Module
    sites: list[Site]
    dataloader: Iterable
    loss_fn: LossFn
    mask_fn: MaskFn
    max_batches: int | None
    dense_sum: float  # this process
    tokens: int  # this process
    dense_loss: float  # global mean
    total_tokens: float  # global
    per_batch: list[tuple[float, int]]
    calib: Calibration
    zero_local: torch.Tensor  # [sites, 2]: exact zeros, entries (real tokens)
    dense_seconds: float


def dense_pass(model: nn.Module, sites: Sequence[Site], dataloader: Iterable, loss_fn: LossFn,
               max_batches: int | None, calibration_tokens: int | None, generator: torch.Generator,
               mask_fn: MaskFn = batch_mask) -> DensePass:
    """One dense pass: loss per batch, the sites' ``x1`` rows and exact-zero counts at real tokens.

    ``calibration_tokens`` (None: every real token) samples about that many rows per site, spread
    over the batches when the dataloader's length is known, else trimmed at the end."""
    n_batches = max_batches if max_batches is not None else (len(dataloader) if hasattr(dataloader, "__len__") else None)
    per_batch = None
    if calibration_tokens is not None and n_batches:
        per_batch = max(1, math.ceil(calibration_tokens / n_batches))
    rows: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}
    zeros = {s.name: torch.zeros(2, dtype=torch.float64) for s in sites}
    current: dict[str, Any] = {"mask": None}

    def hook(site: Site, x1: torch.Tensor) -> None:
        flat = real_rows(x1.detach(), current["mask"])[0]
        counts = sparsity_counts(flat)
        zeros[site.name] += torch.tensor([float(counts.inactive), float(counts.entries)], dtype=torch.float64)
        if per_batch is not None and flat.shape[0] > per_batch:
            idx = torch.randperm(flat.shape[0], generator=generator)[:per_batch].sort().values
            flat = flat[idx.to(flat.device)]
        rows[site.name].append(flat.cpu() if flat.dtype in (torch.float32, torch.float64) else flat.float().cpu())

    losses: list[tuple[float, int]] = []
    handles = [s.register_hook(hook) for s in sites]
    try:
        for batch in first_batches(dataloader, max_batches):
            current["mask"] = mask_fn(batch)
            s, n = loss_fn(model, batch, 1)
            losses.append((float(s[0]), int(n)))
    finally:
        for h in handles:
            h.remove()
    loss = torch.tensor([sum(v for v, _ in losses)], dtype=torch.float64)
    tokens = sum(n for _, n in losses)
    if tokens == 0 and not distributed():
        raise ValueError("The dataloader gave no tokens to score; PPL-p% sparsity needs evaluation data.")
    cat = {}
    for name, parts in rows.items():
        r = torch.cat(parts) if parts else torch.zeros(0, 1)
        if calibration_tokens is not None and r.shape[0] > calibration_tokens:  # unknown length: trim here
            idx = torch.randperm(r.shape[0], generator=generator)[:calibration_tokens].sort().values
            r = r[idx]
        cat[name] = r
    return DensePass(loss, tokens, cat, zeros, losses)


def prepare_model(model: nn.Module, dataloader: Iterable, *, loss_fn: LossFn | None = None,
                  mask_fn: MaskFn | None = None, sites: Sequence[Site] | str | Sequence[str] | None = None,
                  max_batches: int | None = None, calibration_tokens: int | None = None,
                  calibration_dtype: torch.dtype = torch.float32, seed: int = 0) -> PreparedModel:
    """The dense pass over the data (all processes' rows gathered) and the per-site calibration
    built on it (:class:`~actsparse.evaluation.calibration.Calibration`); options as in
    :func:`~actsparse.evaluation.ppl_p_sparsity`.

    Raises:
        NoSitesError: the model has no FFN site with a down projection.
    """
    sites = ffn_sites(model, sites)
    loss_fn = loss_fn or causal_lm_loss
    mask_fn = mask_fn or batch_mask
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    dense_sum, tokens, rows, zero_counts, per_batch = dense_pass(
        model, sites, dataloader, loss_fn, max_batches, calibration_tokens, generator, mask_fn)
    dense_seconds = time.perf_counter() - start
    glob = all_sum(torch.tensor([float(dense_sum), float(tokens)], dtype=torch.float64))
    rows = {name: all_cat(r) for name, r in rows.items()}
    calib = Calibration(sites, rows, calibration_dtype, generator)
    return PreparedModel(model=model, sites=sites, dataloader=dataloader, loss_fn=loss_fn, mask_fn=mask_fn,
                         max_batches=max_batches, dense_sum=float(dense_sum), tokens=int(tokens),
                         dense_loss=float(glob[0] / glob[1]), total_tokens=float(glob[1]), per_batch=per_batch,
                         calib=calib, zero_local=torch.stack([zero_counts[s.name] for s in sites]),
                         dense_seconds=dense_seconds)


def truncated_pass(prep: PreparedModel, settings: list[dict[str, float]],
                   stride: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss sums ``[K]`` (this process) and dropped/entries counts ``{site: [2, K]}`` (real tokens
    only) of one pass with K threshold settings (the batch replicated K times), on every
    ``stride``-th batch."""
    k = len(settings)
    eps = {s.name: torch.tensor([st[s.name] for st in settings], dtype=torch.float64) for s in prep.sites}
    counted: dict[str, list[torch.Tensor]] = {}
    current: dict[str, Any] = {"mask": None}
    loss = torch.zeros(k, dtype=torch.float64)
    with truncate(prep.model, eps, prep.sites, counts=counted, count_mask=lambda: current["mask"]):
        for i, batch in enumerate(first_batches(prep.dataloader, prep.max_batches)):
            if i % stride == 0:
                current["mask"] = prep.mask_fn(batch)
                s, _ = prep.loss_fn(prep.model, batch, k)
                loss += s.detach().cpu().double()
    counts = {s.name: torch.stack([c.cpu() for c in counted[s.name]]) if s.name in counted
              else torch.zeros(2, k, dtype=torch.float64) for s in prep.sites}
    return loss, counts
