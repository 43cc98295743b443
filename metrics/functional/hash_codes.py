"""Neural hash codes (DESIGN §4, "networks as hash encoders"): extraction, redundancy ratio and
hash-code purity.

A sample's neural code is the binary pattern ``1[out > 0]`` of all hidden activation units,
concatenated over the model's activation sites. Codes are stored bit-packed: uint8
``[N, ceil(units / 8)]``, 8 units per byte, most significant bit first (the layout of
:func:`actsparse.plugins.pack_codes`); unused bits of the last byte are 0.

Every function takes codes either as 0/1 or bool ``[N, units]`` or, with ``packed=True``, as
bit-packed uint8 rows (or a :class:`NeuralCodes`). Rows are compared as raw bytes
(``numpy.unique`` over a void view), so 100,000 codes of 4,096 units take well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from actsparse.plugins.recording import record


@dataclass
class NeuralCodes:
    """Bit-packed neural codes of ``N`` samples.

    Attributes:
        packed: uint8 ``[N, ceil(units / 8)]`` (see the module docstring).
        units: code length (bits per sample) after dropping columns.
        labels: int64 ``[N]`` when the data gave ``(x, y)`` batches, else None.
        kept: bool ``[total units]``: which units of the concatenated sites the code keeps.
        sites: names of the activation sites, in concatenation order.
        site_units: units per site before dropping columns.
    """

    packed: torch.Tensor
    units: int
    labels: torch.Tensor | None
    kept: torch.Tensor
    sites: list[str]
    site_units: list[int]

    def __len__(self) -> int:
        return self.packed.shape[0]

    def bits(self) -> torch.Tensor:
        """The codes as bool ``[N, units]``."""
        return torch.from_numpy(unpack_bits(self.packed.numpy(), self.units))


# -- bit packing (numpy: ~250x faster than elementwise torch on CPU) -----------------------------

def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Bool/0-1 ``[N, units]`` -> uint8 ``[N, ceil(units / 8)]``, MSB first (= ``pack_codes``)."""
    return np.packbits(np.asarray(bits, dtype=bool), axis=1)


def unpack_bits(packed: np.ndarray, units: int | None = None) -> np.ndarray:
    """Inverse of :func:`pack_bits`: bool ``[N, units]`` (all ``8 * bytes`` bits when units is None)."""
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=1, count=units)
    return bits.view(bool)


def packed_codes(codes: Any, packed: bool = False) -> np.ndarray:
    """Validate codes and return them bit-packed as a C-contiguous uint8 numpy array ``[N, bytes]``."""
    if isinstance(codes, NeuralCodes):
        return np.ascontiguousarray(codes.packed.numpy())
    t = codes if isinstance(codes, torch.Tensor) else torch.as_tensor(np.asarray(codes))
    if t.dim() != 2:
        raise ValueError(f"codes must be 2-D [samples, units] (or [samples, bytes] when packed), got shape {tuple(t.shape)}.")
    t = t.detach().cpu()
    if packed:
        if t.dtype != torch.uint8:
            raise TypeError(
                f"packed=True expects bit-packed uint8 codes (from neural_codes or pack_codes), got {t.dtype}. "
                "Pass 0/1 or bool codes with packed=False."
            )
        return np.ascontiguousarray(t.numpy())
    if t.dtype != torch.bool:
        if t.is_complex():
            raise TypeError("codes must be 0/1 or bool, got a complex tensor.")
        ok = (t == 0) | (t == 1)
        if not bool(ok.all()):
            bad = t[~ok][:3].tolist()
            hint = " Bit-packed uint8 codes need packed=True." if t.dtype == torch.uint8 else ""
            raise ValueError(f"codes must hold only 0 and 1 (or be bool), found values such as {bad}.{hint}")
        t = t != 0
    return np.packbits(t.numpy(), axis=1)


def code_buckets(codes: Any, packed: bool = False) -> tuple[np.ndarray, int]:
    """``(bucket id per sample [N] int64, number of distinct codes)``; equal codes share a bucket.

    Buckets are numbered in the byte order of the packed codes.
    """
    rows = packed_codes(codes, packed)
    n = rows.shape[0]
    if n == 0:
        raise ValueError("No codes: the metrics of an empty set of samples are undefined.")
    if rows.shape[1] == 0:  # no unit left (e.g. all constant columns dropped): one shared code
        return np.zeros(n, dtype=np.int64), 1
    keys = rows.view(np.dtype((np.void, rows.shape[1]))).ravel()
    uniques, inverse = np.unique(keys, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64, copy=False), len(uniques)


def _labels_array(labels: Any, n: int) -> np.ndarray:
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D [samples], got shape {tuple(y.shape)}.")
    if len(y) != n:
        raise ValueError(f"Got {n} codes but {len(y)} labels: pass one label per code (row).")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        raise TypeError(f"labels must be integer class ids, got dtype {y.dtype}.")
    return y


# -- the metrics ---------------------------------------------------------------------------------

def redundancy_ratio(codes: Any, packed: bool = False) -> torch.Tensor:
    """``(N - #distinct codes) / N``: the share of samples whose code another sample already has.

    0 means every sample has its own code (the network is a perfect hash); it tends to 0 as
    networks widen (DESIGN §4).

    Example:
        >>> codes = torch.tensor([[1, 0, 1], [1, 0, 1], [0, 0, 1], [1, 0, 1]])
        >>> redundancy_ratio(codes)  # 4 codes, 2 distinct
        tensor(0.5000, dtype=torch.float64)
    """
    buckets, n_unique = code_buckets(codes, packed)
    n = len(buckets)
    return torch.tensor((n - n_unique) / n, dtype=torch.float64)


def hash_code_purity(codes: Any, labels: Any, packed: bool = False) -> torch.Tensor:
    """``Σ_buckets max_class count / N``: each distinct code is a bucket; a bucket's samples
    count as correct when they carry its most frequent label.

    1 means no code is shared by samples of different classes.

    Example:
        >>> codes = torch.tensor([[1, 1], [1, 1], [1, 1], [0, 1], [0, 1]])
        >>> labels = torch.tensor([3, 3, 5, 5, 7])  # bucket 11: 3,3,5 -> 2; bucket 01: 5,7 -> 1
        >>> hash_code_purity(codes, labels)
        tensor(0.6000, dtype=torch.float64)
    """
    buckets, _ = code_buckets(codes, packed)
    y = _labels_array(labels, len(buckets))
    _, y = np.unique(y, return_inverse=True)
    n_classes = int(y.max()) + 1
    keys, counts = np.unique(buckets * n_classes + y.reshape(-1), return_counts=True)
    bucket_of_key = keys // n_classes  # sorted, so each bucket's (bucket, class) keys are contiguous
    starts = np.flatnonzero(np.r_[True, bucket_of_key[1:] != bucket_of_key[:-1]])
    return torch.tensor(np.maximum.reduceat(counts, starts).sum() / len(buckets), dtype=torch.float64)


# -- extraction ----------------------------------------------------------------------------------

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
    bits = np.concatenate([unpack_bits(c, u) for c, u in zip(per_site, units)], axis=1)
    total = bits.shape[1]
    if isinstance(drop_constant, torch.Tensor) or isinstance(drop_constant, np.ndarray):
        kept = np.asarray(drop_constant.cpu() if isinstance(drop_constant, torch.Tensor) else drop_constant, dtype=bool)
        if kept.shape != (total,):
            raise ValueError(
                f"drop_constant mask has shape {kept.shape} but the sites give {total} units; pass the "
                "`kept` mask of codes extracted from the same model and sites."
            )
    elif drop_constant:
        kept = bits.any(0) & ~bits.all(0)
    else:
        kept = np.ones(total, dtype=bool)
    bits = bits[:, kept] if not kept.all() else bits
    return NeuralCodes(
        packed=torch.from_numpy(pack_bits(bits)),
        units=int(kept.sum()),
        labels=y,
        kept=torch.from_numpy(kept),
        sites=[r.site.name for r in ran],
        site_units=units,
    )
