"""The base of evaluation callbacks that measure the model once, at the end of the fit.

Lightning lets no module ``log`` at ``on_fit_end``, the one hook that also runs when no optimizer
step was taken (an evaluation job of a model as loaded). So a :class:`FinalEvaluation` writes its
values to the trainer's loggers itself (W&B, CSV, and ``MetricHistory``, which is how they reach
``summary.json``'s history, where the study engine reads them), and at ``setup`` moves the run's
:class:`~actsparse.callbacks.summary.RunSummary` after itself so that the summary is written once
these values exist. Subclasses implement :meth:`measure`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

import lightning as L
from actsparse.callbacks.summary import RunSummary
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

log = logging.getLogger(__name__)


class FinalEvaluation(Callback, ABC):
    """Measure the model at the end of the fit and log the values at the final step.

    Args:
        train: False: an evaluation job; the fit takes no optimizer step (the fit loop's
            ``max_steps`` is set to 0 at ``setup``), whatever ``trainer.max_steps`` says.
    """

    def __init__(self, train: bool = True) -> None:
        self.train = bool(train)
        self.results: dict[str, float] = {}

    @abstractmethod
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Everything this callback reports, for the model as it is now."""

    def shown(self, name: str) -> bool:
        """Whether ``name`` goes into the one log line (per-layer values stay in the loggers)."""
        return True

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not self.train:
            # Lightning has no public way to end a fit before its first step other than the loop's own
            # limit (trainer.max_steps reads it); set here, the config's max_steps is left as written.
            trainer.fit_loop.epoch_loop.max_steps = 0
        # A new list, not an edit in place: Lightning is iterating over the current one right now.
        callbacks = list(trainer.callbacks)
        trainer.callbacks = ([cb for cb in callbacks if not isinstance(cb, RunSummary)]
                             + [cb for cb in callbacks if isinstance(cb, RunSummary)])

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.results = self.measure(trainer, pl_module)
        log.info("%s at step %d: %s", type(self).__name__, trainer.global_step,
                 ", ".join(f"{k}={v:.4g}" for k, v in self.results.items() if self.shown(k)))
        for logger in trainer.loggers:
            logger.log_metrics(self.results, step=trainer.global_step)
            logger.save()
