"""A study's config, composed in-process: ``actsparse-train experiment=<name>``'s config for
tests and notebooks. Studies run on the engine (``docs/studies.md``): a grid of config overrides,
each one ``fit(cfg)`` (:mod:`actsparse.train`), aggregated by
:class:`actsparse.experiments.study_report.StudyReport`, which writes its tables through
:mod:`actsparse.experiments.study_tables`.
"""

from __future__ import annotations

from typing import Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig


def compose(experiment: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``actsparse-train experiment=<experiment> <overrides>``'s config, composed in-process
    (tests, notebooks). ``paths.output_dir`` must be given or set afterwards (no Hydra run dir)."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="actsparse.conf", version_base="1.3"):
        return hydra_compose("train", overrides=[f"experiment={experiment}", *overrides])
