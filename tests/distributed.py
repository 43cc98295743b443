"""DDP test scaffolding in one place: spawn N gloo processes on this machine that each run a
worker function, and collect what each returned. Workers live in light modules (torch and
actsparse.metrics only), so spawned processes do not import the test modules with Lightning."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, out_dir: str, fn: Callable[..., Any], args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], out_dir: str | Path, *args: Any, world: int = 2) -> list[Any]:
    """Run ``fn(rank, world, *args)`` in ``world`` gloo processes (a process group is set up and
    torn down around it); return each rank's result. ``fn`` must be importable (module level)."""
    mp.spawn(_entry, args=(world, free_port(), str(out_dir), fn, args), nprocs=world, join=True)
    return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world)]
