"""Shared test helpers: compose actsparse's Hydra config as the CLI would, in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
# The compiled extension outlives a test run (keyed by its sources, flags and torch version): a
# second run loads it instead of compiling again. The run's other caches stay per session.
os.environ.setdefault("ACTSPARSE_EXT_DIR", str(REPO / ".pytest_cache" / "actsparse-ext"))


# Real structures for the protein tests (a user's clone has no ../shared: those tests skip).
PDB_DIR = Path(os.environ.get("ACTSPARSE_PDB_DIR", REPO.parent / "shared" / "data" / "pdb"))


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny matrices, small sorts and DSSP only contend across threads
    on a 2-core machine (the studies run with one too)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # One corpus cache for the whole session, never the user's home.
    monkeypatch.setenv("ACTSPARSE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def compose_train(overrides: list[str], run_dir: Path) -> DictConfig:
    """The config ``actsparse-train <overrides>`` would run with, its run dir set to ``run_dir``."""
    cfg = compose_config(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)  # what ${hydra:runtime.output_dir} gives a real run
    return cfg


def compose_config(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="actsparse.conf", version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=return_hydra_config)


def run_cli(args: list[str], cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``actsparse-train`` in a fresh interpreter, as a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "actsparse.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


# -- fault injection (tests/test_faults.py) ---------------------------------------------------
# Callbacks given by `_target_` in a run's config; they live here so spawned DDP workers can
# import them (spawn passes sys.path, and tests/ is on it).

import lightning as _L  # noqa: E402


class CrashAt(_L.Callback):
    """Raise after optimizer step ``step`` on rank ``rank``: a crash mid-run."""

    def __init__(self, step: int, rank: int = 0) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            raise RuntimeError(f"injected crash at step {self.step}")


class KillWorker(_L.Callback):
    """SIGKILL rank ``rank`` after optimizer step ``step`` (a worker that dies), noting the time."""

    def __init__(self, step: int, rank: int = 1, stamp: str | None = None) -> None:
        self.step, self.rank, self.stamp = step, rank, stamp

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            import signal
            import time

            if self.stamp:
                Path(self.stamp).write_text(str(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
