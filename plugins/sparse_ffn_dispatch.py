"""Which path a sparse FFN call takes, sparse kernels or dense (cuBLAS / MKL), from what was measured.

The choice depends on the device, the batch size and the layer's sparsity (the fraction of its
neurons a token leaves at zero, measured on calibration data at conversion: ``SparseFFN.sparsity``).
On CUDA the host cannot see a call's union of active neurons without a synchronization that
would break CUDA graphs, so the decision is made before the call, from a **dispatch table**: JSON
written by the GPU check (``bench/gpu_check.py``) from its own timings of dense ``F.linear`` and
each sparse kernel at every (batch, sparsity) it ran.

The rule (:func:`choose`), conservative wherever the table is silent:

- **batch**: the smallest measured batch >= the call's (more rows, larger union, slower sparse);
  above every measured batch: dense.
- **sparsity**: per kernel, the speedup ``dense_us / kernel_us`` interpolated linearly between
  the measured sparsities around the layer's; above the highest measured one, that one's
  speedup; below the lowest, or a layer with no sparsity known, the speedup at 0% if measured,
  else dense.
- the fastest kernel wins if its speedup is at least :data:`MARGIN` (timing noise), else dense;
  a table that says dense wins everywhere makes every call dense.

Without a table for the device (``"cpu"`` or ``"cuda:<device name>"``), the built-in rule that
was measured before tables existed: CUDA runs one row sparse (1.07x dense at 0% on the H200) and
2+ rows dense (two rows ran 0.86x at 0%); CPU keeps batches <= 8 sparse, gives 9-15 the union
rule at 0.5 and sends 16+ rows dense (docs/sparse_ffn.md). Tables are read once per process from
``$ACTSPARSE_DISPATCH_TABLES`` (a JSON file or a directory of them) and, in a checkout,
``bench/gpu/dispatch-*.json``.

Example:
    >>> table = {"device_kind": "cuda:Example GPU", "points": [
    ...     {"batch": 1, "sparsity": 0, "dense_us": 80, "kernels_us": {"three_kernel": 75}},
    ...     {"batch": 1, "sparsity": 90, "dense_us": 80, "kernels_us": {"three_kernel": 40}},
    ...     {"batch": 2, "sparsity": 0, "dense_us": 80, "kernels_us": {"three_kernel": 93}},
    ...     {"batch": 2, "sparsity": 90, "dense_us": 80, "kernels_us": {"three_kernel": 51}}]}
    >>> choose_from(table, 1, None).path, choose_from(table, 2, 0.1).path, choose_from(table, 2, 0.9).path
    ('sparse', 'dense', 'sparse')
    >>> choose_from(table, 4, 0.95).path   # batch 4 was never measured: dense
    'dense'
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["KERNELS", "MARGIN", "Choice", "TableError", "calibrate_sparsity", "choose", "choose_from", "clear_cache", "default_choice",
           "dense_above_for", "device_kind", "load_tables", "table_dirs", "validate"]

log = logging.getLogger(__name__)

TABLES_ENV = "ACTSPARSE_DISPATCH_TABLES"
FORMAT = "actsparse-dispatch/1"
# The sparse kernel sets this build can run, by name, with the op's ``kernel`` argument: the
# measured three-kernel path, the same with programmatic dependent launch (sm_90+), one
# persistent cooperative kernel (batch 1; any batch up to 8 runs), bf16/fp16 tensor cores
# (batches 2-8; float32 runs the three kernels with a warning) - the last three unmeasured when
# written - and the CPU's. A table's other columns (kernels of a later or earlier tree) are ignored.
KERNELS = {"three_kernel": 0, "three_kernel_pdl": 1, "persistent": 2, "tensor_core": 3, "cpu": 0}
# A kernel must beat dense by 3% (the run-to-run noise of the H200 timings) to be picked.
MARGIN = 1.03

# The built-in rule where no table covers the device (see the module docstring).
CPU_SMALL_BATCH = 8
CPU_DENSE_BATCH = 16
CPU_MID_BATCH_DENSE_ABOVE = 0.5


class TableError(ValueError):
    """A dispatch table that cannot be used: the message names the file and the field."""


@dataclass(frozen=True)
class Choice:
    """``path`` is ``"sparse"`` or ``"dense"``; ``kernel`` the sparse kernel's name (``None`` for
    dense); ``dense_above`` what the op is called with; ``speedup`` the table's estimate (``None``
    for the built-in rule); ``source`` which table or rule decided."""

    path: str
    kernel: str | None
    dense_above: float
    speedup: float | None
    source: str


def table_dirs() -> list[Path]:
    """Where tables are looked for: ``$ACTSPARSE_DISPATCH_TABLES`` (file or folder), then the
    checkout's ``bench/gpu/`` (absent in an installed wheel)."""
    paths = [Path(p) for p in os.environ.get(TABLES_ENV, "").split(os.pathsep) if p]
    paths.append(Path(__file__).resolve().parents[1] / "bench" / "gpu")
    return paths


def validate(table: dict, where: str = "table") -> dict:
    """Check a table's fields; returns it. Raises :class:`TableError` naming what is wrong."""
    if not isinstance(table, dict) or not isinstance(table.get("device_kind"), str):
        raise TableError(f"{where}: a dispatch table is a JSON object with a 'device_kind' string "
                         "(e.g. 'cuda:NVIDIA H200'), as bench/gpu_check.py writes it.")
    points = table.get("points")
    if not isinstance(points, list) or not points:
        raise TableError(f"{where}: 'points' must be a non-empty list of measured points.")
    for i, p in enumerate(points):
        ok = (isinstance(p, dict) and isinstance(p.get("batch"), int) and p["batch"] >= 1
              and isinstance(p.get("sparsity"), (int, float)) and 0 <= p["sparsity"] <= 100
              and isinstance(p.get("dense_us"), (int, float)) and p["dense_us"] > 0
              and isinstance(p.get("kernels_us"), dict)
              and all(isinstance(v, (int, float)) and v > 0 for v in p["kernels_us"].values()))
        if not ok:
            raise TableError(f"{where}: points[{i}] = {p!r} needs batch (int >= 1), sparsity (percent, 0-100), "
                             "dense_us (> 0) and kernels_us ({kernel name: microseconds > 0}).")
    return table


@functools.lru_cache(maxsize=1)
def load_tables() -> dict[str, dict]:
    """Every table found (see :func:`table_dirs`), by device kind; read once per process. A file
    that is not a valid table is skipped with a logged warning (the built-in rule then applies)."""
    tables: dict[str, dict] = {}
    for base in table_dirs():
        files = sorted(base.glob("dispatch-*.json")) if base.is_dir() else ([base] if base.is_file() else [])
        for path in files:
            try:
                table = validate(json.loads(path.read_text()), str(path))
            except (OSError, json.JSONDecodeError, TableError) as exc:
                log.warning("actsparse: ignoring dispatch table %s: %s", path, exc)
                continue
            tables.setdefault(table["device_kind"], {**table, "source": str(path)})
    return tables


@functools.lru_cache(maxsize=None)
def _cuda_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def device_kind(device: torch.device | str) -> str:
    """``"cpu"``, or ``"cuda:<device name>"`` (one table per GPU model, not per index)."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():  # asked about CUDA on a machine without it: no table applies
            return "cuda:unavailable"
        return f"cuda:{_cuda_name(device.index if device.index is not None else torch.cuda.current_device())}"
    return device.type


def default_choice(kind: str, batch: int) -> Choice:
    """The built-in rule (no table for ``kind``)."""
    if kind.startswith("cuda"):
        sparse = batch <= 1
        return Choice("sparse" if sparse else "dense", "three_kernel" if sparse else None, 1.0 if sparse else 0.0,
                      None, "built-in rule (no table): CUDA batch 1 sparse, 2+ dense")
    if batch >= CPU_DENSE_BATCH:
        return Choice("dense", None, 0.0, None, "built-in rule: CPU batch >= 16 dense")
    if batch > CPU_SMALL_BATCH:
        return Choice("sparse", "cpu", CPU_MID_BATCH_DENSE_ABOVE, None, "built-in rule: CPU batch 9-15, union rule")
    return Choice("sparse", "cpu", 1.0, None, "built-in rule: CPU batch <= 8 sparse")


def _speedup_at(points: list[dict], kernel: str, sparsity: float) -> float | None:
    """dense/kernel speedup at ``sparsity`` (percent) from one batch's points: linear between the
    measured neighbours, the highest's beyond it, None below the lowest (not extrapolated)."""
    curve = sorted((p["sparsity"], p["dense_us"] / p["kernels_us"][kernel]) for p in points if kernel in p["kernels_us"])
    if not curve or sparsity < curve[0][0]:
        return None
    for (s0, r0), (s1, r1) in zip(curve, curve[1:]):
        if s0 <= sparsity <= s1:
            return r0 if s1 == s0 else r0 + (r1 - r0) * (sparsity - s0) / (s1 - s0)
    return curve[-1][1]


def choose_from(table: dict, batch: int, sparsity: float | None) -> Choice:
    """The rule of the module docstring on one table; ``sparsity`` is a fraction in [0, 1]."""
    source = table.get("source", table["device_kind"])
    batches = sorted({p["batch"] for p in table["points"] if p["batch"] >= batch})
    if not batches:
        return Choice("dense", None, 0.0, None, f"{source}: batch {batch} above every measured batch")
    at = [p for p in table["points"] if p["batch"] == batches[0]]
    pct = 0.0 if sparsity is None else 100.0 * float(sparsity)
    best, best_speedup = None, None
    for kernel in sorted({k for p in at for k in p["kernels_us"] if k in KERNELS}):
        speedup = _speedup_at(at, kernel, pct)
        if speedup is not None and (best_speedup is None or speedup > best_speedup):
            best, best_speedup = kernel, speedup
    if best is None or best_speedup < MARGIN:
        return Choice("dense", None, 0.0, best_speedup, f"{source}: batch {batches[0]}, {pct:g}%")
    return Choice("sparse", best, 1.0, best_speedup, f"{source}: batch {batches[0]}, {pct:g}%")


@functools.lru_cache(maxsize=4096)
def _choose(kind: str, batch: int, sparsity: float | None) -> Choice:
    table = load_tables().get(kind)
    return default_choice(kind, batch) if table is None else choose_from(table, batch, sparsity)


def choose(device: torch.device | str, batch: int, sparsity: float | None = None) -> Choice:
    """The path for ``batch`` rows on ``device`` of a layer with this sparsity (fraction; None if
    unknown). Cached per (device kind, batch, sparsity to 0.1%)."""
    if sparsity is not None and not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity is the fraction of inactive neurons, in [0, 1]; got {sparsity}.")
    return _choose(device_kind(device), int(batch), None if sparsity is None else round(float(sparsity), 3))


def dense_above_for(device: torch.device | str, batch: int, sparsity: float | None = None) -> float:
    """The ``dense_above`` the ops get when the caller gives none: ``choose(...).dense_above``."""
    return choose(device, batch, sparsity).dense_above


def clear_cache() -> None:
    """Forget loaded tables and choices (tests, or after the GPU check wrote a new table)."""
    load_tables.cache_clear()
    _choose.cache_clear()


def calibrate_sparsity(model: torch.nn.Module, sites, batches) -> dict[str, float]:
    """Each FFN site's sparsity on calibration data: the fraction of its ``x1`` entries (the down
    projection's input, one per token and neuron) that are exactly zero, over every batch.

    ``batches``: an iterable of model inputs (a tensor, a tuple of positional arguments or a dict
    of keyword arguments per batch). Runs ``model`` in eval mode without gradients and restores
    its training flag. Returns ``{site.name: sparsity}``.
    """
    zeros = {s.name: 0 for s in sites}
    total = {s.name: 0 for s in sites}

    def count(site, x1):
        zeros[site.name] += int((x1 == 0).sum())
        total[site.name] += x1.numel()

    handles = [s.register_hook(count) for s in sites]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                if isinstance(batch, dict):
                    model(**batch)
                elif isinstance(batch, (tuple, list)):
                    model(*batch)
                else:
                    model(batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    empty = [name for name, n in total.items() if n == 0]
    if empty:
        raise ValueError(f"calibration ran no tokens through the FFN sites {empty}: pass a non-empty iterable "
                         "of model inputs (tensors, tuples of arguments or dicts of keyword arguments).")
    return {name: zeros[name] / total[name] for name in total}
