"""Lightning strategies and checkpoint I/O with the fixes actsparse relies on."""

from __future__ import annotations

import atexit
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException
from typing_extensions import override


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class DistributedWorkerError(RuntimeError):
    """A worker process of a spawned DDP run died or failed; the others were stopped."""


class ReportingLauncher(_MultiProcessingLauncher):
    """Lightning's spawn launcher, with a worker's death reported as what happened and what is
    safe to resume from, instead of torch's bare ``ProcessExitedException``.

    Bounded time: when a worker dies, the survivors fail at their next collective (gloo sees
    the closed connection) or torch stops them (SIGTERM, then SIGKILL 30 s later).
    """

    @override
    def launch(self, function: Any, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        try:
            return super().launch(function, *args, trainer=trainer, **kwargs)
        except (ProcessExitedException, ProcessRaisedException) as err:
            raise DistributedWorkerError(worker_failure(err, trainer)) from err


def worker_failure(err: Exception, trainer: Any) -> str:
    """What happened to a spawned worker, and the checkpoint that is safe to resume from."""
    rank = getattr(err, "error_index", "?")
    if isinstance(err, ProcessRaisedException):
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        what = f"raised {lines[-1].strip()}" if lines else "raised an exception"
    else:
        signal_name = getattr(err, "signal_name", None)
        what = f"was killed by {signal_name}" if signal_name else f"exited with code {getattr(err, 'exit_code', '?')}"
    message = f"DDP worker {rank} {what}; the other workers were stopped and the run ended."
    callback = getattr(trainer, "checkpoint_callback", None)
    last = Path(callback.dirpath) / "last.ckpt" if callback is not None and callback.dirpath else None
    if last is not None and last.is_file():
        message += f" Checkpoints saved before are intact; resume with ckpt_path={last}"
    else:
        message += " No checkpoint had been saved yet."
    return message


class CleanExitDDPStrategy(DDPStrategy):
    """``DDPStrategy`` whose worker processes destroy their process group when they exit, and
    whose spawned runs report a dead worker clearly (:class:`DistributedWorkerError`).

    Lightning leaves the group to interpreter shutdown; there, gloo's threads are occasionally
    torn down while still joinable and the spawned worker aborts ("terminate called without an
    active exception"), failing a run that had finished. Destroying the group in an ``atexit``
    handler (after every collective Lightning makes) avoids that.
    """

    @override
    def setup_distributed(self) -> None:
        super().setup_distributed()
        atexit.register(_destroy_process_group)

    @override
    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if type(self.launcher) is _MultiProcessingLauncher:
            # Lightning has no public way to choose a strategy's launcher: its own strategies
            # (DDPStrategy, FSDPStrategy) assign ``_launcher`` in this hook, and so does this one.
            self._launcher = ReportingLauncher(self, start_method=self._start_method)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint writes that a kill cannot tear: the previous file stays readable until the
    new one is complete.

    Lightning's own save goes through an fsspec transaction that writes to a file in the system
    temp dir and then *moves* it; when that dir is on another filesystem (``/tmp`` on tmpfs, a
    node-local disk under a shared output dir), the move is a copy into the target itself, and a
    kill mid-copy leaves a truncated ``last.ckpt``. Here local checkpoints are written to a
    temp file next to the target, fsynced, and ``os.replace``d over it (atomic on POSIX);
    remote paths (``s3://`` ...) keep Lightning's save.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)  # the rename itself survives a power cut


def _is_local(path: Any) -> bool:
    return type(get_filesystem(str(path))).__name__ == "LocalFileSystem"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is done either way
    finally:
        os.close(fd)
