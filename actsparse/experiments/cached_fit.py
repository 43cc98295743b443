"""A training run as a cached dependency of other runs: ``init_from`` can name the run whose last
checkpoint a job starts from, instead of a path. The run is ``actsparse-train <overrides>``,
trained once per resolved config and reused by every later job (a lock keeps parallel jobs of a
multirun from training it twice)::

    init_from:                        # in an experiment: start from a pretrained SiLU LM
      _target_: actsparse.experiments.cached_fit.cached_fit
      _recursive_: false              # the nodes below are configs, not objects to build
      overrides: [experiment=tiny_lm, trainer.max_steps=400, model.activation=silu, "seed=${seed}"]
      nodes: {model: "${model}", data: "${data}"}   # the job's own model and data, so shapes match

``fit`` builds the path from this node before it seeds the job, so the job's random state is the
same whether the dependency was trained now or read from the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from actsparse.runtime import cache_dir

log = logging.getLogger(__name__)

# Keys that say where and how a run reports, not what it trains: left out of the cache key.
UNKEYED = ("paths", "logger", "task_name", "threads", "hydra")
DONE = "done.json"


def compose_run(overrides: Sequence[str], nodes: Mapping[str, Any] | None = None) -> DictConfig:
    """``actsparse-train <overrides>``'s config; each of ``nodes`` (e.g. the calling job's
    ``model``) replaces the composed node of that name, and the overrides aimed inside it are
    applied again on top (``model.activation=silu`` still holds)."""
    overrides = [str(o) for o in overrides]
    if GlobalHydra.instance().is_initialized():  # inside actsparse-train, or after study.compose
        cfg = compose("train", overrides=overrides)
    else:
        with initialize_config_module(config_module="actsparse.conf", version_base="1.3"):
            cfg = compose("train", overrides=overrides)
    for name, node in (nodes or {}).items():
        with open_dict(cfg):
            cfg[name] = OmegaConf.create(OmegaConf.to_container(node, resolve=True)
                                         if isinstance(node, DictConfig) else node)
        for item in overrides:
            key, sep, value = item.lstrip("+").partition("=")
            if sep and key.startswith(f"{name}."):
                OmegaConf.update(cfg, key, yaml.safe_load(value), force_add=True)
    return cfg


def run_key(cfg: DictConfig) -> str:
    """A digest of everything in ``cfg`` that decides the trained weights."""
    probe = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(probe):
        probe.paths = {"output_dir": "<cache>"}  # callbacks interpolate it; the key must not
    resolved = OmegaConf.to_container(probe, resolve=True)
    keyed = {k: v for k, v in resolved.items() if k not in UNKEYED}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_fit(overrides: Sequence[str], nodes: Mapping[str, Any] | None = None,
               cache: str | None = None) -> str:
    """The last checkpoint of ``actsparse-train <overrides>`` (see :func:`compose_run`), trained
    now unless a finished run of the same config is in ``<cache>/fits/<key>``."""
    from actsparse.train import fit  # train imports the package this module lives in

    cfg = compose_run(overrides, nodes)
    key = run_key(cfg)
    folder = cache_dir(cache, "fits") / key
    with FileLock(str(folder) + ".lock"):
        done = folder / DONE
        if done.is_file():
            checkpoint = json.loads(done.read_text())["checkpoint"]
            if Path(checkpoint).is_file():
                log.info("init_from: the cached run %s (%s)", folder, " ".join(overrides))
                return checkpoint
        log.info("init_from: training %s into %s", " ".join(overrides), folder)
        with open_dict(cfg):
            cfg.paths.output_dir = str(folder)
            cfg.ckpt_path = None
        summary = fit(cfg)
        checkpoint = summary.get("checkpoint")
        if not checkpoint or not Path(checkpoint).is_file():
            raise RuntimeError(f"The run {' '.join(overrides)} in {folder} left no checkpoint to start from: "
                               "keep callbacks.model_checkpoint (save_last: true) in that run.")
        done.write_text(json.dumps({"checkpoint": str(checkpoint), "overrides": list(overrides)}))
        return str(checkpoint)
