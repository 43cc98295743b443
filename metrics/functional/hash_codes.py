"""Neural hash codes (DESIGN §4, "networks as hash encoders"): the code packer, redundancy
ratio and hash-code purity. Extracting codes from a model is a procedure:
:func:`actsparse.evaluation.neural_codes`.

A sample's neural code is the binary pattern ``1[out > 0]`` of all hidden activation units,
concatenated over the model's activation sites. Codes are stored bit-packed: uint8
``[N, ceil(units / 8)]``, 8 units per byte, most significant bit first (the layout of
:func:`pack_codes`); unused bits of the last byte are 0.

Every function takes codes either as 0/1 or bool ``[N, units]`` or, with ``packed=True``, as
bit-packed uint8 rows (or a :class:`NeuralCodes`). Rows are compared as raw bytes
(``numpy.unique`` over a void view), so 100,000 codes of 4,096 units take well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


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
        return unpack_codes(self.packed, self.units)


# -- bit packing: the one code packer of actsparse (numpy on CPU: ~100x faster than tensor ops) ---

def pack_codes(rows: torch.Tensor) -> torch.Tensor:
    """Bit-pack ``1[rows > 0]`` (``[N, units]``; bool or 0/1 or activations) into uint8
    ``[N, ceil(units / 8)]``, 8 units per byte, most significant bit first.

    Example:
        >>> pack_codes(torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]]))
        tensor([[128, 128]], dtype=torch.uint8)
    """
    bits = rows > 0
    if bits.device.type == "cpu":
        return torch.from_numpy(np.packbits(bits.numpy(), axis=1, bitorder="big"))
    return _pack_codes_on_device(bits)


def _pack_codes_on_device(bits: torch.Tensor) -> torch.Tensor:
    """The same packing on any device (GPU tensors stay where they are)."""
    pad = (-bits.shape[1]) % 8
    if pad:
        bits = torch.nn.functional.pad(bits, (0, pad))
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=bits.device)
    return (bits.view(bits.shape[0], -1, 8).to(torch.uint8) * weights).sum(-1, dtype=torch.uint8)


def unpack_codes(packed: torch.Tensor, units: int | None = None) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: bool ``[N, units]`` (all ``8 * bytes`` bits when None).

    Example:
        >>> unpack_codes(torch.tensor([[128, 128]], dtype=torch.uint8), 9).int()
        tensor([[1, 0, 0, 0, 0, 0, 0, 0, 1]], dtype=torch.int32)
    """
    if packed.device.type == "cpu":
        bits = np.unpackbits(packed.numpy().astype(np.uint8, copy=False), axis=1, count=units)
        return torch.from_numpy(bits.view(bool))
    shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.uint8)
    bits = ((packed.unsqueeze(-1) >> shifts) & 1).flatten(1).bool()
    return bits if units is None else bits[:, :units]


def varying_units(bits):
    """Bool mask of the units (columns) that are not constant over the rows of ``bits`` (a bool
    numpy array or tensor): constant units cannot tell samples apart, so codes drop them.

    Example:
        >>> varying_units(torch.tensor([[True, False, True], [True, True, False]]))
        tensor([False,  True,  True])
    """
    return bits.any(0) & ~bits.all(0)


def drop_constant_units(*code_sets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop the units (columns) constant over the union of several code sets (bool or 0/1
    ``[N_i, units]``), as the reference code does over train ∪ test; returns each set with the
    kept columns (bool).

    Example:
        >>> train, test = torch.tensor([[1, 0, 1], [1, 1, 1]]), torch.tensor([[1, 0, 0]])
        >>> [c.int().tolist() for c in drop_constant_units(train, test)]   # unit 0 is always 1
        [[[0, 1], [1, 1]], [[0, 0]]]
    """
    if not code_sets:
        raise ValueError("drop_constant_units needs at least one set of codes.")
    bits = [torch.as_tensor(c).bool() for c in code_sets]
    units = {b.shape[1] for b in bits}
    if len(units) != 1:
        raise ValueError(f"Code sets have different unit counts {sorted(units)}: extract them from one model and sites.")
    kept = varying_units(torch.cat(bits))
    return tuple(b[:, kept] for b in bits)


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


def labels_array(labels: Any, n: int) -> np.ndarray:
    """One integer class id per code as a numpy array, checked against the ``n`` codes."""
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
    y = labels_array(labels, len(buckets))
    _, y = np.unique(y, return_inverse=True)
    n_classes = int(y.max()) + 1
    keys, counts = np.unique(buckets * n_classes + y.reshape(-1), return_counts=True)
    bucket_of_key = keys // n_classes  # sorted, so each bucket's (bucket, class) keys are contiguous
    starts = np.flatnonzero(np.r_[True, bucket_of_key[1:] != bucket_of_key[:-1]])
    return torch.tensor(np.maximum.reduceat(counts, starts).sum() / len(buckets), dtype=torch.float64)
