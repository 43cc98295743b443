"""Context-dependent classification for continual learning: ``(x, context, y)`` batches, the
tasks trained one after another within one ``trainer.fit`` (the datamodule's schedule)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["ContextClassifier", "evaluate_accuracy"]


class ContextClassifier(L.LightningModule):
    """Cross-entropy on ``(x, context, y)`` batches; the model is called as ``model(x, context)``.

    With a datamodule that schedules tasks (``epochs_per_task``, e.g.
    :class:`~actsparse.data.dendrites_permuted_digits.PermutedDigitsDataModule`) one fit trains
    every task in turn: at the first epoch of each task the optimizer's state is cleared
    (``fresh_optimizer_per_task``: plain sequential training, no replay or regularization), and
    training stops after the last task's last epoch (so ``trainer.max_epochs`` may be -1).
    ``val/acc`` and ``test/acc`` are micro accuracies of the served task. With
    ``update_boost_every_epoch`` it calls ``model.update_boost_strength()`` after each
    training epoch (k-WTA boost decay) when the model has that method.

    Example:
        >>> from actsparse.models.dendrites import DendriticMLP
        >>> task = ContextClassifier(DendriticMLP(context_dim=2, width=16, depth=1, num_segments=2))
        >>> task(torch.randn(3, 64), torch.eye(2)[[0, 1, 0]]).shape
        torch.Size([3, 10])
    """

    def __init__(self, model: nn.Module, optimizer: str = "adam", lr: float = 1e-3, weight_decay: float = 0.0,
                 update_boost_every_epoch: bool = True, fresh_optimizer_per_task: bool = True) -> None:
        super().__init__()
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}.")
        self.model = model
        self.save_hyperparameters(ignore=["model"])

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.model(x, context)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, context, y = batch
        loss = F.cross_entropy(self(x, context), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch, prefix: str) -> None:
        x, context, y = batch
        logits = self(x, context)
        self.log(f"{prefix}/loss", F.cross_entropy(logits, y))
        self.log(f"{prefix}/acc", (logits.argmax(1) == y).float().mean())

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _schedule(self):
        """The datamodule when it schedules tasks over epochs, else None."""
        datamodule = getattr(self.trainer, "datamodule", None)
        return datamodule if getattr(datamodule, "total_epochs", None) is not None else None

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        expected = getattr(datamodule, "context_dim", None)
        given = getattr(self.model, "context_dim", None)
        if expected is not None and given is not None and expected != given:
            raise ValueError(f"The model reads {given}-d contexts but data.context={datamodule.context_kind} gives "
                             f"{expected}-d ones: set model.context_dim={expected}.")
        schedule = self._schedule()
        max_epochs = self.trainer.max_epochs
        if schedule is not None and max_epochs not in (None, -1) and max_epochs < schedule.total_epochs:
            raise ValueError(f"trainer.max_epochs={max_epochs} ends before the {schedule.total_epochs} epochs of "
                             f"{schedule.num_tasks} tasks x {schedule.epochs_per_task}: set trainer.max_epochs=-1 "
                             "(training stops after the last task).")

    def on_train_epoch_start(self) -> None:
        schedule = self._schedule()
        epoch = self.trainer.current_epoch
        if (schedule is not None and self.hparams.fresh_optimizer_per_task and epoch > 0
                and epoch % schedule.epochs_per_task == 0):
            for optimizer in self.trainer.optimizers:  # Adam's moments and step count start again
                optimizer.state.clear()

    def on_train_epoch_end(self) -> None:
        if self.hparams.update_boost_every_epoch and hasattr(self.model, "update_boost_strength"):
            self.model.update_boost_strength()
        schedule = self._schedule()
        if schedule is not None and self.trainer.current_epoch + 1 >= schedule.total_epochs:
            self.trainer.should_stop = True

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay)
        return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 512) -> float:
    """Accuracy of ``model(x, context)`` on an ``(x, context, y)`` dataset (eval mode, restored after)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, context, y in DataLoader(dataset, batch_size=batch_size):
        correct += int((model(x, context).argmax(1) == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / total
