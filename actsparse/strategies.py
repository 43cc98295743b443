"""Lightning strategies with fixes actsparse relies on."""

from __future__ import annotations

import atexit

import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from typing_extensions import override


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class CleanExitDDPStrategy(DDPStrategy):
    """``DDPStrategy`` whose worker processes destroy their process group when they exit.

    Lightning leaves the group to interpreter shutdown; there, gloo's threads are occasionally
    torn down while still joinable and the spawned worker aborts ("terminate called without an
    active exception"), failing a run that had finished. Destroying the group in an ``atexit``
    handler (after every collective Lightning makes) avoids that.
    """

    @override
    def setup_distributed(self) -> None:
        super().setup_distributed()
        atexit.register(_destroy_process_group)
