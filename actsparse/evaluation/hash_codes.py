"""Neural codes of a model: the binary pattern ``1[out > 0]`` of its hidden activation units per
sample (DESIGN §4), recorded through the activation sites and bit-packed with
:func:`actsparse.metrics.functional.hash_codes.pack_codes`."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from actsparse.metrics.functional.hash_codes import NeuralCodes, pack_codes, unpack_codes, varying_units
from actsparse.plugins.recording import record

__all__ = ["neural_codes"]


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        y = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
        return batch[0], y
    raise TypeError(
        f"neural_codes reads batches of a tensor x or a tuple (x, y, ...); got {type(batch).__name__}. "
        "Pass forward=... to map a custom batch to the model call, or a tensor of inputs."
    )


def _batches(data: Any, batch_size: int) -> Iterable[Any]:
    if isinstance(data, torch.Tensor):
        return (data[i : i + batch_size] for i in range(0, len(data), batch_size))
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, torch.Tensor) for d in data):
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"Got {len(x)} inputs but {len(y)} labels.")
        return ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size))
    return data


@torch.no_grad()
def neural_codes(
    model: nn.Module,
    data: Any,
    sites: Any = None,
    drop_constant: bool | torch.Tensor = True,
    max_samples: int | None = None,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> NeuralCodes:
    """Neural codes of ``data`` through ``model``'s activation sites, recorded with
    ``actsparse.plugins.record(..., what="codes")`` in eval mode (the mode is restored).

    Args:
        data: a tensor of inputs, a pair ``(inputs, labels)`` of tensors, or an iterable of
            batches (a DataLoader) of ``x`` or ``(x, y, ...)``.
        sites: which sites: None (all; an MLP's hidden ReLUs), glob pattern(s) or ``Site`` objects.
            Each site must give one row per sample (not per token).
        drop_constant: True drops units constant over these samples (they cannot tell samples
            apart; redundancy and purity do not change); False keeps all; a bool mask
            ``[total units]`` keeps exactly those units — pass ``train_codes.kept`` when
            extracting test codes so both share one layout.
        max_samples: stop after this many samples.
        forward: ``forward(model, batch)`` when batches need more than ``model(x)``.

    Example:
        >>> mlp = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> codes = neural_codes(mlp, (torch.randn(6, 2), torch.arange(6)), drop_constant=False)
        >>> codes.packed.shape, codes.units, codes.sites
        (torch.Size([6, 1]), 7, ['1', '3'])
    """
    was_training = model.training
    model.eval()
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    labels: list[torch.Tensor] = []
    samples = 0  # inputs given (when the batches show them)
    try:
        with record(model, sites=sites, what="codes", max_rows=max_samples) as rec:
            for batch in _batches(data, batch_size):
                if max_samples is not None and max(r.rows for r in rec.values()) >= max_samples:
                    break
                if forward is None:
                    x, y = _split_batch(batch)
                    model(x.to(device))
                    samples += len(x)
                else:
                    forward(model, batch)
                    y = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
                if isinstance(y, torch.Tensor):
                    labels.append(y.detach().cpu())
    finally:
        model.train(was_training)
    if forward is not None:
        samples = None
    elif max_samples is not None:
        samples = min(samples, max_samples)
    return _assemble(rec, labels, drop_constant, samples)


def _assemble(rec, labels: list[torch.Tensor], drop_constant, samples: int | None) -> NeuralCodes:
    names = list(rec)
    ran = [rec[s] for s in names if rec[s].calls]
    if not ran:
        raise RuntimeError("No activation site ran: the data gave no batch, or the sites are not used in forward().")
    per_site = [r.codes.numpy() for r in ran]
    units = [r.units for r in ran]
    n = per_site[0].shape[0] if samples is None else samples
    for r, c in zip(ran, per_site):
        if c.shape[0] != n:
            raise ValueError(
                f"Site {r.site.name!r} gave {c.shape[0]} rows for {n} samples: neural codes need one row per "
                "sample from every site (FFN sites of sequence models give one per token). Choose per-sample "
                "sites with sites=..."
            )
    y = torch.cat(labels)[:n] if labels else None
    if y is not None and len(y) != n:
        raise ValueError(f"Recorded {n} code rows but the data gave {len(y)} labels: sites must run once per sample.")
    bits = np.concatenate([unpack_codes(torch.from_numpy(c), u).numpy() for c, u in zip(per_site, units)], axis=1)
    total = bits.shape[1]
    if isinstance(drop_constant, torch.Tensor) or isinstance(drop_constant, np.ndarray):
        kept = np.asarray(drop_constant.cpu() if isinstance(drop_constant, torch.Tensor) else drop_constant, dtype=bool)
        if kept.shape != (total,):
            raise ValueError(
                f"drop_constant mask has shape {kept.shape} but the sites give {total} units; pass the "
                "`kept` mask of codes extracted from the same model and sites."
            )
    elif drop_constant:
        kept = varying_units(bits)
    else:
        kept = np.ones(total, dtype=bool)
    bits = bits[:, kept] if not kept.all() else bits
    return NeuralCodes(
        packed=pack_codes(torch.from_numpy(bits)),
        units=int(kept.sum()),
        labels=y,
        kept=torch.from_numpy(kept),
        sites=[r.site.name for r in ran],
        site_units=units,
    )
