"""Shared test helpers: compose actsparse's Hydra config as the CLI would, in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


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
        [sys.executable, "-m", "actsparse.train", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env,
    )
