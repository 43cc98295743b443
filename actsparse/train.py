"""``actsparse-train``: the Hydra app that composes data, model, task, trainer, callbacks and
loggers from ``actsparse.conf`` and fits.

    actsparse-train                                  # the default experiment
    actsparse-train model.activation=relu trainer.max_steps=200
    actsparse-train -m model.activation=relu,silu    # a multirun
    actsparse-train -m hydra/launcher=slurm ...      # on a Slurm cluster (pip install 'actsparse[slurm]')

``train(cfg)`` is the same thing for a config composed elsewhere (tests, notebooks).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import get_method, instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from actsparse.tasks.lm import CausalLM


def _instantiate_each(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group that maps names to ``_target_`` configs."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured task; return the run summary (also in ``<run dir>/summary.json``)."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    os.environ.setdefault("WANDB_MODE", "offline")  # online only when the user says so

    # Bad data or model settings fail here, before loggers or checkpoints create anything.
    # _convert_="all": plain Python containers, so checkpoints' hparams load with weights_only.
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    task = instantiate(cfg.task, model=model, _convert_="all")
    if not isinstance(task, L.LightningModule):
        raise TypeError(f"task must build a LightningModule, got {type(task).__name__}.")
    if cfg.get("init_from"):
        load_weights(task, cfg.init_from)
    # Read the corpus now (setup is idempotent; fit reuses it) so an empty or unreadable
    # source fails before any logger or checkpoint exists.
    datamodule.prepare_data()
    datamodule.setup("fit")

    (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    callbacks = _instantiate_each(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):  # `trainer.enable_progress_bar=false` wins
        callbacks = [cb for cb in callbacks if not isinstance(cb, ProgressBar)]
    loggers = _instantiate_each(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    finally:
        _finish_wandb(loggers)
    summary_file = out_dir / "summary.json"
    return json.loads(summary_file.read_text()) if summary_file.exists() else {}


def load_weights(task: L.LightningModule, checkpoint: str | Path) -> None:
    """Start from a checkpoint's weights only (a fresh optimizer, schedule and step count);
    ``ckpt_path`` instead resumes the whole training state."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"init_from checkpoint not found: {str(path)!r}.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = task.load_state_dict(state["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(
            f"init_from={str(path)!r} does not fit the configured model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}. Use the model config the checkpoint was trained with."
        )


def _finish_wandb(loggers: list[Any]) -> None:
    # Close the run so the next job of an in-process multirun starts a new one.
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()


@hydra.main(version_base="1.3", config_path="pkg://actsparse.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # An experiment may name its own pipeline (e.g. the ProSparse study); the default is train().
    entry = get_method(cfg.get("entry") or "actsparse.train.train")
    summary = entry(cfg)
    return summary.get("val loss")  # the value a Hydra sweeper would optimize


if __name__ == "__main__":
    main()
