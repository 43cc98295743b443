"""DDP test scaffolding in one place: spawn N gloo processes on this machine that each run a
worker function, and collect what each returned. Workers live in light modules (torch and
actsparse.metrics only), so spawned processes do not import the test modules with Lightning."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, world: int, out_dir: str, fn: Callable[..., Any], args: tuple) -> None:
    # A file store, not tcp://: with TCP, rank 0 hosts the store in a daemon thread, and a rank
    # still talking to it while rank 0 tears down aborted rank 0 ("terminate called without an
    # active exception", SIGABRT) about one run in ten.
    store = dist.FileStore(str(Path(out_dir) / "store"), world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    result = fn(rank, world, *args)
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()  # no rank tears its connections down while another still uses them
    dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], out_dir: str | Path, *args: Any, world: int = 2) -> list[Any]:
    """Run ``fn(rank, world, *args)`` in ``world`` gloo processes (a process group is set up and
    torn down around it); return each rank's result. ``fn`` must be importable (module level)."""
    mp.spawn(_entry, args=(world, str(out_dir), fn, args), nprocs=world, join=True)
    return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world)]
