"""``actsparse-train``: the Hydra app that composes data, model, task, trainer, callbacks and
loggers from ``actsparse.conf`` and runs the config's ``entry`` (``actsparse.train.fit`` for one
training; a study names its own).

    actsparse-train                                  # the default experiment (experiment=prosparse, a study)
    actsparse-train experiment=tiny_lm model.activation=relu trainer.max_steps=200   # one training
    actsparse-train ~experiment model=mlp data=digits task=classify                   # one training, no experiment
    actsparse-train -m experiment=tiny_lm model.activation=relu,silu                  # a multirun
    actsparse-train -m hydra/launcher=slurm ...      # on a Slurm cluster (pip install 'actsparse[slurm]')
    actsparse-train ckpt_path=outputs/.../checkpoints/last.ckpt   # resume: continues that run folder
    python -m actsparse.cli ...                      # the same without the installed script
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_method
from omegaconf import DictConfig

from actsparse.checkpoints import CheckpointError
from actsparse.data.corpus import CorpusError
from actsparse.run_log import log_error, log_files
from actsparse.strategies import DistributedWorkerError
from actsparse.train import fit

log = logging.getLogger(__name__)

FIT = f"{fit.__module__}.{fit.__name__}"  # the default entry: one training

# Errors that get one line on the console (the traceback still goes to train.log).
USER_ERRORS: tuple[type[BaseException], ...] = (CorpusError, CheckpointError, DistributedWorkerError)


def user_error(err: BaseException) -> BaseException | None:
    """The bad-input error behind ``err`` (Hydra wraps errors raised while instantiating)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, USER_ERRORS):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


GROUPS_OF_ONE_RUN = ("model", "data", "task")


def default_experiment_note(choices: dict, task_overrides: list[str]) -> str | None:
    """A line for a user who chose a model, data or task but no experiment: the default
    experiment (a study with its own grid, pretraining and schedule) still applies to them."""
    if any(o.lstrip("+~").split("=")[0] == "experiment" for o in task_overrides):
        return None
    chosen = [o for o in task_overrides if o.lstrip("+").split("=")[0] in GROUPS_OF_ONE_RUN]
    if not chosen or not choices.get("experiment"):
        return None
    return (f"No experiment= given, so the default experiment={choices['experiment']} (a study) runs with "
            f"{' '.join(chosen)}. For one training run add ~experiment (or experiment=tiny_lm).")


@hydra.main(version_base="1.3", config_path="pkg://actsparse.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    note = default_experiment_note(dict(hydra_cfg.runtime.choices), list(hydra_cfg.overrides.task))
    if note:
        log.warning(note)
    entry = cfg.get("entry") or FIT
    try:
        summary = get_method(entry)(cfg)
    except Exception as err:
        log_error(err, log_files())  # Hydra's train.log of the top-level run
        bad_input = user_error(err)
        if bad_input is None:
            raise
        # Bad input (and a dead DDP worker) gets one line, like Hydra's config errors; the
        # traceback is in train.log.
        sys.stderr.write(f"Error: {bad_input}\n")
        sys.exit(1)
    if entry != FIT:  # a study; fit() says where its own results are
        written = sorted(p.name for p in Path(cfg.paths.output_dir).glob("results.*"))
        log.info("Study results in %s: %s", cfg.paths.output_dir, ", ".join(written) or "see train.log")
    return (summary or {}).get("val loss")  # the value a Hydra sweeper would optimize


if __name__ == "__main__":
    main()
