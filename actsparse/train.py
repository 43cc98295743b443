"""``fit(cfg)``: one training run from a composed config (what ``actsparse-train`` runs, and what
a study runs for each point of its grid): it builds data, model, task, callbacks, loggers and
trainer from the config, fits, and returns the run summary.

    from actsparse.train import fit
    summary = fit(cfg)          # cfg composed by Hydra (the CLI, a test, a notebook, a study)

Bad checkpoints, data or model settings fail before any logger or checkpoint exists; a
``ckpt_path`` inside the run folder continues that run's checkpoints, CSV and W&B logs; the run's
log and any error go to ``<run dir>/train.log``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict

from actsparse.checkpoints import (
    LIGHTNING_NAMES, check_checkpoint, check_fits, checkpoint_state, load_weights, resume_run_dir, resumes_in,
)
from actsparse.run_log import LOG_FILE, run_log
from actsparse.run_loggers import assign_wandb_run_id, finish_wandb, resume_overrides
from actsparse.strategies import AtomicCheckpointIO
from actsparse.tasks.lm import CausalLM  # noqa: F401  (the default task; importable for Hydra)

log = logging.getLogger(__name__)

# ``hydra.run.dir`` of a resumed run is the run it continues (conf/hydra/default.yaml).
OmegaConf.register_new_resolver("actsparse.run_dir", resume_run_dir, replace=True)


def fit(cfg: DictConfig) -> dict[str, Any]:
    """Fit the configured task; return the run summary (also in ``<run dir>/summary.json``).

    Everything the run logs, and any error, also goes to ``<run dir>/train.log``.
    """
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with run_log(out_dir) as log_file:
        summary = _fit(cfg, out_dir)
        if summary:  # the file only: the console has RunSummary's table
            log_file.handle(logging.LogRecord(__name__, logging.INFO, __file__, 0, "Summary: %s",
                                              (json.dumps({k: v for k, v in summary.items() if k != "history"}),), None))
        log.info("%s", results_line(out_dir, summary))
        return summary


def instantiate_each(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group that maps names to ``_target_`` configs
    (``callbacks:``, ``logger:``), in the group's order."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def _fit(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    if cfg.get("threads"):  # small models (the studies' MLPs) run fastest, and alike, on one thread
        torch.set_num_threads(int(cfg.threads))
    if isinstance(cfg.get("init_from"), DictConfig):  # a run that yields the checkpoint (cached_fit): before seeding
        init_from = instantiate(cfg.init_from)
        with open_dict(cfg):
            cfg.init_from = str(init_from)
    L.seed_everything(cfg.seed, workers=True)
    os.environ.setdefault("WANDB_MODE", "offline")  # online only when the user says so
    ckpt_path = cfg.get("ckpt_path")

    # Bad checkpoints, data or model settings fail here, before loggers or checkpoints create anything.
    ckpt_state = None
    if ckpt_path and str(ckpt_path) not in LIGHTNING_NAMES:
        ckpt_file = check_checkpoint(ckpt_path, "ckpt_path")
        ckpt_state = checkpoint_state(ckpt_file)
    if cfg.get("init_from"):
        check_checkpoint(cfg.init_from, "init_from")
    # _convert_="all": plain Python containers, so checkpoints' hparams load with weights_only.
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    task = instantiate(cfg.task, model=model, _convert_="all")
    if not isinstance(task, L.LightningModule):
        raise TypeError(f"task must build a LightningModule, got {type(task).__name__}.")
    if ckpt_state is not None:
        check_fits(task, ckpt_state, "ckpt_path", ckpt_file)
    if cfg.get("init_from"):
        load_weights(task, cfg.init_from)
    # Read the corpus now (setup is idempotent; fit reuses it) so an empty or unreadable
    # source fails before any logger or checkpoint exists.
    datamodule.prepare_data()
    datamodule.setup("fit")

    resuming = resumes_in(ckpt_path, out_dir)
    resume_step = int(ckpt_state.get("global_step", 0)) if resuming and ckpt_state is not None else None
    if resuming:
        log.info("Resuming %s from %s (step %s)", out_dir, ckpt_path, "?" if resume_step is None else resume_step)
    (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    hydra_dir = out_dir / ".hydra"
    if not hydra_dir.exists():  # nested runs (a study's runs) and in-process calls: the composed config too
        hydra_dir.mkdir()
        (hydra_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    assign_wandb_run_id(cfg, out_dir, resuming)
    callbacks = instantiate_each(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):  # `trainer.enable_progress_bar=false` wins
        callbacks = [cb for cb in callbacks if not isinstance(cb, ProgressBar)]
    loggers = [instantiate(node, **resume_overrides(node, resume_step)) for node in (cfg.get("logger") or {}).values()
               if isinstance(node, DictConfig) and "_target_" in node]
    extra: dict[str, Any] = {}
    if not cfg.trainer.get("plugins"):
        extra["plugins"] = [AtomicCheckpointIO()]  # a kill mid-save keeps the previous last.ckpt
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **extra)
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
        if cfg.get("test_after_fit"):  # the final model on the test split; RunSummary adds test/* to the summary
            # test_ckpt_path: best tests the checkpoint ModelCheckpoint kept (e.g. with early stopping)
            trainer.test(task, datamodule=datamodule, verbose=False, ckpt_path=cfg.get("test_ckpt_path"))
    finally:
        finish_wandb(loggers)
    summary_file = out_dir / "summary.json"
    return json.loads(summary_file.read_text()) if summary_file.exists() else {}


def results_line(out_dir: Path, summary: dict[str, Any]) -> str:
    """Where a run's files are, and the checkpoint to resume from."""
    parts = [p for p in ("summary.json", "config_resolved.yaml", LOG_FILE, "checkpoints", "wandb", "csv")
             if (out_dir / p).exists()]
    line = f"Results in {out_dir.absolute()}: {', '.join(parts)}"
    if summary.get("checkpoint"):
        line += f"\nLast checkpoint (resume with ckpt_path=): {summary['checkpoint']}"
    return line
