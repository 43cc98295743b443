"""Early stopping that does not count the first epochs against its patience.

Lightning's ``EarlyStopping`` with ``Trainer(min_epochs=N)`` is not "wait N epochs, then early-stop": once the
callback sets ``trainer.should_stop`` during the first N epochs (say on a plateau that training later leaves),
the flag stays set and the fit ends at epoch N however much the monitored metric improved in between
(``_FitLoop.done`` only checks ``should_stop`` and the minimum). Here the first ``start_epoch`` epochs still update
the best score but never add to the wait count, so patience counts only epochs from ``start_epoch`` on and a run
that is improving at ``start_epoch`` trains on. Use it without ``trainer.min_epochs``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from typing_extensions import override


class EarlyStopping(LightningEarlyStopping):
    """``lightning``'s ``EarlyStopping`` whose patience starts counting at epoch ``start_epoch`` (0-based).

    Before ``start_epoch`` the monitored value is still checked (the best score follows it, a non-finite value
    or the ``divergence_threshold``/``stopping_threshold`` still stop), but epochs without improvement are not
    counted: a run cannot stop for lack of improvement before epoch ``start_epoch + patience - 1``. Every other
    argument is ``lightning.pytorch.callbacks.EarlyStopping``'s.

    >>> EarlyStopping(monitor="val/loss", patience=8, start_epoch=20).state_dict()["start_epoch"]
    20
    """

    def __init__(self, monitor: str, start_epoch: int = 0, **kwargs: Any) -> None:
        if not isinstance(start_epoch, int) or isinstance(start_epoch, bool) or start_epoch < 0:
            raise ValueError(
                f"EarlyStopping: start_epoch must be an integer >= 0 (the first epoch whose lack of improvement "
                f"counts against the patience), got {start_epoch!r}"
            )
        super().__init__(monitor=monitor, **kwargs)
        self.start_epoch = start_epoch

    def _check(self, hook: Any, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Run the parent's check ``hook``; before ``start_epoch`` it updates the best score only."""
        if trainer.current_epoch >= self.start_epoch:
            hook(trainer, pl_module)
            return
        # The parent's check adds 1 to the wait count when the value did not improve and sets it to 0 when it did;
        # starting from -1 it ends at 0 either way, so the best score is kept up to date without the epoch
        # counting against the patience (and the parent never reaches its patience here).
        self.wait_count = -1
        hook(trainer, pl_module)
        self.wait_count = 0

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(super().on_train_epoch_end, trainer, pl_module)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(super().on_validation_end, trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "start_epoch": self.start_epoch}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # Checkpoints of the plain Lightning callback have no start_epoch: keep the configured one.
        self.start_epoch = state_dict.get("start_epoch", self.start_epoch)
