"""The bottom layer: where actsparse keeps files, and the few collectives its metrics and
procedures need. Imports torch only, so every room (plugins, metrics, kernels) may use it."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist


def cache_dir(override: str | os.PathLike | None = None, *parts: str) -> Path:
    """actsparse's cache (``override``, else ``$ACTSPARSE_CACHE_DIR``, else ``~/.cache/actsparse``),
    joined with ``parts`` and created."""
    root = Path(override or os.environ.get("ACTSPARSE_CACHE_DIR") or Path.home() / ".cache" / "actsparse")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def world() -> tuple[int, int]:
    """(world size, rank) of the running process group, or (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def distributed() -> bool:
    """True inside a process group of more than one process."""
    return world()[0] > 1


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over processes (a copy; the input is left alone). Identity without a process group."""
    if distributed():
        t = t.clone()
        dist.all_reduce(t)
    return t


def all_cat(rows: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's rows along dim 0, in rank order (uneven lengths allowed)."""
    if not distributed():
        return rows
    n = torch.tensor([rows.shape[0]], device=rows.device)
    sizes = [torch.zeros_like(n) for _ in range(world()[0])]
    dist.all_gather(sizes, n)
    top = int(max(s.item() for s in sizes))
    padded = rows.new_zeros((top, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(s.item())] for part, s in zip(parts, sizes)])


def lazy_exports(package: str, table: dict[str, str]):
    """A module ``__getattr__`` that imports ``table[name]`` (a module under ``package``, or an
    absolute ``actsparse.…`` path) on first access: packages export their heavy parts (e.g.
    torch_geometric models) without importing them with the package."""
    import importlib

    def __getattr__(name: str):
        if name in table:
            module = table[name] if table[name].startswith("actsparse.") else f"{package}.{table[name]}"
            return getattr(importlib.import_module(module), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
