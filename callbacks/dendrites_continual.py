"""Continual-learning measurement: after each task of a sequential fit, the accuracy on every
task; at the end, the final mean accuracy and the backward transfer (Lopez-Paz & Ranzato 2017).

With ``R[i][j]`` the accuracy on task ``j`` after training tasks ``0..i`` (``T`` tasks):

- final mean accuracy ``A = (1/T) Σ_j R[T−1][j]``;
- backward transfer ``BWT = (1/(T−1)) Σ_{j<T−1} (R[T−1][j] − R[j][j])`` (negative: forgetting).

Everything is logged under ``cl/<split>/`` so it reaches ``summary.json`` through the logged-value
history (``MetricHistory`` with the ``cl/`` prefix): ``acc_task_<j>`` (a point per task end: a row
of ``R``), ``mean_acc_seen`` (mean over tasks ``0..i``), ``acc_newest_task`` (``R[i][i]``),
``tasks_learned``; at the last task
``final_mean_acc``, ``bwt``, ``task_inference_acc`` (prototype contexts: how often the nearest
prototype is the sample's own task) and ``effective_parameters``.

``split="val"`` measures on the validation split only (what a tuning run selects by); the test
split is then never read.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from actsparse.tasks.dendrites_continual import evaluate_accuracy

__all__ = ["ContinualEvaluation", "backward_transfer", "final_mean_accuracy"]


def final_mean_accuracy(matrix: list[list[float]]) -> float:
    """Mean of the last row of the accuracy matrix ``R`` (every task after the last)."""
    return sum(matrix[-1]) / len(matrix[-1])


def backward_transfer(matrix: list[list[float]]) -> float:
    """``(1/(T−1)) Σ_{j<T−1} (R[T−1][j] − R[j][j])`` of a ``T × T`` matrix (0 for one task)."""
    t = len(matrix)
    if t < 2:
        return 0.0
    return sum(matrix[-1][j] - matrix[j][j] for j in range(t - 1)) / (t - 1)


class ContinualEvaluation(Callback):
    """At the end of every task (the datamodule's ``epochs_per_task`` schedule), evaluate the
    model on every task's ``split`` and log the row of the accuracy matrix; at the last task, log
    the final mean accuracy and backward transfer.

    Args:
        split: ``test`` (the study's table) or ``val`` (tuning: the test split is not touched).

    Example:
        >>> ContinualEvaluation("val").state_key
        "ContinualEvaluation{'split': 'val'}"
    """

    def __init__(self, split: str = "test") -> None:
        if split not in ("val", "test"):
            raise ValueError(f"ContinualEvaluation(split=...) must be 'val' or 'test', got {split!r}.")
        self.split = split
        self.matrix: list[list[float]] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(split=self.split)

    @override
    def state_dict(self) -> dict:
        return {"matrix": [list(row) for row in self.matrix]}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.matrix = [list(row) for row in state_dict["matrix"]]

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        if getattr(datamodule, "total_epochs", None) is None:
            raise ValueError("ContinualEvaluation needs a datamodule that schedules tasks (e.g. "
                             "data=dendrites_permuted_digits with data.epochs_per_task set).")

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        epoch = trainer.current_epoch
        if (epoch + 1) % dm.epochs_per_task != 0 or len(self.matrix) > dm.task_of_epoch(epoch):
            return
        learned = dm.task_of_epoch(epoch) + 1
        model = pl_module.model
        row = [evaluate_accuracy(model, dm.task_dataset(j, self.split, seen=learned)) for j in range(dm.num_tasks)]
        self.matrix.append(row)
        prefix = f"cl/{self.split}"
        values = {f"{prefix}/acc_task_{j}": acc for j, acc in enumerate(row)}
        values[f"{prefix}/mean_acc_seen"] = sum(row[:learned]) / learned
        values[f"{prefix}/acc_newest_task"] = row[learned - 1]  # the task just trained
        values[f"{prefix}/tasks_learned"] = float(learned)
        if learned == dm.num_tasks:
            values[f"{prefix}/final_mean_acc"] = final_mean_accuracy(self.matrix)
            values[f"{prefix}/bwt"] = backward_transfer(self.matrix)
            if dm.context_kind == "prototype":
                values[f"{prefix}/task_inference_acc"] = self._task_inference(dm)
            count = getattr(model, "num_parameters", None)
            values[f"{prefix}/effective_parameters"] = float(count() if count else sum(p.numel() for p in model.parameters()))
        for key, value in values.items():
            pl_module.log(key, value, on_step=False, on_epoch=True)

    def _task_inference(self, dm) -> float:
        right = total = 0
        for j in range(dm.num_tasks):
            x = dm.task_dataset(j, self.split).tensors[0]
            right += int((dm.infer_tasks(x) == j).sum())
            total += len(x)
        return right / total

