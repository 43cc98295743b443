"""A train DataLoader that resumes mid-epoch exactly where a checkpoint stopped.

Lightning stores the ``state_dict`` of any train loader that has one in its checkpoints and
hands it back before iterating on resume. The shuffled order is a function of (seed, epoch)
only, so skipping the batches already yielded in the current epoch reproduces the
uninterrupted run batch for batch. Sized loaders are not prefetched by Lightning's fit loop,
so "yielded" equals "consumed by training_step" when a checkpoint is written.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def _world() -> tuple[int, int]:
    """(world size, rank) of the running process group, or (1, 0) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class EpochShuffleSampler(DistributedSampler):
    """Per-epoch seeded shuffle, sharded over DDP ranks, able to start part-way into an epoch.

    A ``DistributedSampler`` subclass, so Lightning does not replace it under DDP; it works
    without a process group too (one replica).
    """

    def __init__(self, dataset: Dataset, seed: int = 0, shuffle: bool = True) -> None:
        world, rank = _world()
        super().__init__(
            dataset,
            num_replicas=world,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=True,  # equal shards and no duplicated samples
        )
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(indices[start:])


class EvalShardSampler(DistributedSampler):
    """In-order evaluation shards without the padding ``DistributedSampler`` adds.

    Rank r takes samples r, r + world, r + 2 world, ...: every sample is evaluated exactly once,
    so token-weighted metrics reduced over ranks equal the single-process value exactly.
    """

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        world, this_rank = _world()
        super().__init__(
            dataset,
            num_replicas=world if num_replicas is None else num_replicas,
            rank=this_rank if rank is None else rank,
            shuffle=False,
        )
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))


class ResumableDataLoader(DataLoader):
    """DataLoader with ``state_dict``/``load_state_dict`` for exact mid-epoch resume."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, shuffle: bool = True, **kwargs: Any) -> None:
        self.seed, self.shuffle = seed, shuffle
        sampler = EpochShuffleSampler(dataset, seed=seed, shuffle=shuffle)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, **kwargs)
        self._yielded = 0
        self._resume_at = 0

    def __iter__(self) -> Iterator[Any]:
        skip, self._resume_at = self._resume_at, 0
        if skip >= len(self):
            skip = 0  # the stored epoch had finished: start the next one from its beginning
        self.sampler.start = skip * self.batch_size
        self._yielded = skip
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"batches_yielded": self._yielded, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"The checkpoint's data order used seed {state['seed']}, this run uses {self.seed}; "
                "resume with the same data.seed."
            )
        self._resume_at = int(state["batches_yielded"])

