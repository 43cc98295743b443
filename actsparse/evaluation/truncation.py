"""Truncation: zero the weak neurons of a model's FFN sites (the surgery behind CETT curves
and PPL-p% sparsity), through the site hooks of :mod:`actsparse.plugins.sites`."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from actsparse.metrics.functional.cett import neuron_norms
from actsparse.plugins.sites import Site, ffn_sites

__all__ = ["real_rows", "truncate"]


def real_rows(x1: torch.Tensor, mask: torch.Tensor | None, repeats: int = 1) -> torch.Tensor:
    """``x1`` as ``[repeats, rows, f]``, keeping the real (unpadded) positions only (``mask`` [B, T]
    of one replica; None keeps every row)."""
    view = x1.reshape(repeats, -1, x1.shape[-1])
    if mask is None:
        return view
    m = mask.reshape(-1).to(x1.device)
    if m.numel() != view.shape[1]:
        raise ValueError(
            f"The batch mask has {m.numel()} positions but the FFN site tensor has {view.shape[1]} rows per "
            f"replica (shape {tuple(x1.shape)}); pass mask_fn= for this batch layout (or mask_fn=lambda b: None).")
    return view[:, m.bool()]


@contextlib.contextmanager
def truncate(model: nn.Module, thresholds: Mapping[str, float | torch.Tensor],
             sites: Sequence[Site] | None = None, counts: dict | None = None,
             count_mask: Callable[[], torch.Tensor | None] | None = None) -> Iterator[None]:
    """Zero the weak neurons of the FFN sites inside a ``with`` block.

    ``thresholds`` maps site names to ``ε`` — a float, or a ``[K]`` tensor to run K settings at
    once on a batch replicated K times along dim 0 (replica ``k`` uses ``ε[k]``). Dropped are the
    neurons with ``|x1_i|·‖W_down[:, i]‖₂ <= ε`` (exact zeros included: the one counting rule). When ``counts`` is a dict, it
    accumulates ``counts[name] = [dropped [K], entries [K]]`` per site; ``count_mask()``, when
    given, returns the current batch's ``[B, T]`` mask of real positions (None: all), and only
    those are counted (pads are not neurons of the data).

    Example:
        >>> from actsparse.models import TinyLM
        >>> lm = TinyLM(d_model=16, n_layers=1, n_heads=2)
        >>> x = torch.randint(0, 256, (1, 8))
        >>> with truncate(lm, {"blocks.0.ffn": float("inf")}):   # drop every neuron
        ...     out = lm(x)
        >>> out.shape
        torch.Size([1, 8, 256])
    """
    sites = ffn_sites(model) if sites is None else list(sites)
    unknown = sorted(set(thresholds) - {s.name for s in sites})
    if unknown:
        raise KeyError(f"No FFN site named {unknown}; sites are {[s.name for s in sites]}.")
    norms = {s.name: neuron_norms(s.w_down.detach()) for s in sites if s.name in thresholds}

    def hook(site: Site, x1: torch.Tensor) -> torch.Tensor:
        eps = thresholds[site.name]  # a Python float is float64: as_tensor would round it to float32 first
        eps = (eps if torch.is_tensor(eps) else torch.tensor(eps, dtype=torch.float64)).to(x1.device).reshape(-1)
        k = eps.numel()
        if x1.shape[0] % k:
            raise ValueError(f"{k} thresholds need a batch replicated {k} times; got batch {x1.shape[0]}.")
        view = x1.reshape(k, -1, x1.shape[-1])
        score = view.abs() * norms[site.name].to(x1.dtype)
        dropped = score <= eps.to(x1.dtype).view(k, 1, 1)
        if counts is not None:
            counted = real_rows(dropped, count_mask() if count_mask else None, k)
            d = counted.sum(dim=(1, 2)).double()
            n = torch.full_like(d, float(counted.shape[1] * counted.shape[2]))
            prev = counts.get(site.name)
            counts[site.name] = [d, n] if prev is None else [prev[0] + d, prev[1] + n]
        return view.masked_fill(dropped, 0).reshape(x1.shape)

    handles = [s.register_hook(hook) for s in sites if s.name in thresholds]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
