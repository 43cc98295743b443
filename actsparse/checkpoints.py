"""Checkpoint checks: a checkpoint given by ``ckpt_path=`` / ``init_from=`` is read and matched to
the configured model before any logger or run folder is touched, so bad input fails with a message
that names the file and what to do, and never leaves half a run behind."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch

# ckpt_path values Lightning resolves itself (no file to check).
LIGHTNING_NAMES = ("last", "best", "hpc", "registry")


class CheckpointError(ValueError):
    """A checkpoint given by ``ckpt_path=`` / ``init_from=`` that cannot be used."""


def check_checkpoint(path: str | os.PathLike, option: str = "ckpt_path") -> Path:
    """Fail with a message naming the file unless it is a complete, readable torch checkpoint.

    Reads the file once (the zip container's CRCs), which catches random bytes, a write cut
    short and flipped bytes, before any logger or run folder is touched.
    """
    file = Path(path).expanduser()
    if not file.exists():
        raise CheckpointError(f"{option}={str(file)!r}: no such file. Give the path of a .ckpt file "
                              "(a run's checkpoints/last.ckpt).")
    if file.is_dir():
        raise CheckpointError(f"{option}={str(file)!r} is a directory, not a checkpoint file; give a .ckpt "
                              f"file inside it (e.g. {file / 'checkpoints' / 'last.ckpt'}).")
    damaged = (f"{option}={str(file)!r} is not a readable checkpoint: the file is damaged or truncated "
               f"({file.stat().st_size} bytes")
    advice = ("Use another checkpoint of the run (an earlier checkpoints/step*.ckpt, or last.ckpt), "
              "or start without it.")
    try:
        with zipfile.ZipFile(file) as archive:
            bad_member = archive.testzip()
            names = archive.namelist()
    except zipfile.BadZipFile:
        if is_legacy_torch_file(file):  # torch.save(..., _use_new_zipfile_serialization=False)
            return file
        raise CheckpointError(f"{damaged}; not a torch checkpoint container). {advice}") from None
    except (OSError, EOFError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{damaged}; {err}). {advice}") from None
    if bad_member is not None:
        raise CheckpointError(f"{damaged}; its part {bad_member!r} fails its checksum). {advice}")
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        raise CheckpointError(f"{option}={str(file)!r} is a zip file but not a torch checkpoint "
                              f"(no data.pkl among {names[:5]}). {advice}")
    return file


def is_legacy_torch_file(file: Path) -> bool:
    """True for torch's pre-zip format, which starts with a pickled magic number (protocol 2,
    a long of 10 bytes): it has no CRCs to check."""
    with open(file, "rb") as f:
        return f.read(4) == b"\x80\x02\x8a\x0a"


def checkpoint_state(file: Path) -> dict[str, Any] | None:
    """The checkpoint's contents, memory-mapped; None when it needs more than weights-only loading
    (then Lightning, which loads trusted checkpoints fully, reports what it needs)."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=not is_legacy_torch_file(file))
    except Exception:  # an intact file with other pickled objects: not ours to judge
        return None


def check_fits(task: L.LightningModule, state: dict[str, Any], option: str, file: Path) -> None:
    """The checkpoint's weights must have the configured model's names and shapes, so a wrong
    ``model.*`` setting is named here instead of as a state-dict error deep inside ``fit``."""
    weights = state.get("state_dict")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{option}={str(file)!r} holds no model weights (no 'state_dict'): it is not a "
                              "Lightning checkpoint.")
    own = task.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    mismatched = [f"{k}: checkpoint {list(weights[k].shape)} vs model {list(v.shape)}"
                  for k, v in own.items() if k in weights and hasattr(weights[k], "shape")
                  and tuple(weights[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        run_cfg = file.parent.parent / "config_resolved.yaml"
        hint = f" (its config: {run_cfg})" if run_cfg.is_file() else ""
        raise CheckpointError(
            f"{option}={str(file)!r} does not fit the configured model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, shape mismatches {mismatched[:3]}. Use the model config the checkpoint was "
            f"trained with{hint}."
        )


def load_weights(task: L.LightningModule, checkpoint: str | Path) -> None:
    """Start from a checkpoint's weights only (a fresh optimizer, schedule and step count);
    ``ckpt_path`` instead resumes the whole training state."""
    path = check_checkpoint(checkpoint, "init_from")
    state = checkpoint_state(path)
    if state is None:
        raise CheckpointError(
            f"init_from={str(path)!r} is intact but holds pickled Python objects besides tensors and plain "
            "containers, which a weights-only load refuses. Save its weights alone from code you trust: "
            "torch.save({'state_dict': module.state_dict()}, path)."
        )
    check_fits(task, state, "init_from", path)
    task.load_state_dict(state["state_dict"], strict=True)


def resume_run_dir(ckpt_path: str | None, default: str) -> str:
    """The run folder a resumed run continues: ``<run>`` for ``<run>/checkpoints/<file>.ckpt`` when
    that is a run folder and the file is readable; otherwise ``default`` (a new folder).

    Hydra's run dir comes from here (the ``actsparse.run_dir`` resolver in
    ``conf/hydra/default.yaml``), so ``ckpt_path=`` writes metrics, checkpoints, the W&B run and
    the log into the run it continues.
    """
    if not ckpt_path or str(ckpt_path) in LIGHTNING_NAMES:
        return default
    file = Path(str(ckpt_path)).expanduser().absolute()
    run = file.parent.parent
    if file.parent.name != "checkpoints" or not ((run / ".hydra").is_dir() or (run / "config_resolved.yaml").is_file()):
        return default
    try:
        check_checkpoint(file)
    except CheckpointError:
        return default  # fit() reports it; the earlier run folder stays untouched
    return str(run)


def resumes_in(ckpt_path: str | None, out_dir: Path) -> bool:
    """True when ``ckpt_path`` is a checkpoint of the run folder ``out_dir`` itself (a resume
    that continues that run's logs rather than starting new ones)."""
    if not ckpt_path or str(ckpt_path) in LIGHTNING_NAMES:
        return False
    return Path(str(ckpt_path)).expanduser().absolute().parent == (out_dir / "checkpoints").absolute()
