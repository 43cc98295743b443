"""Continual learning in one fit: the task's schedule (fresh optimizer per task, stop after the
last task) and ContinualEvaluation's accuracy matrix, final mean accuracy and backward transfer,
checked against hand-computed values and an independent evaluation."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from actsparse.callbacks.dendrites_continual import (
    ContinualEvaluation,
    backward_transfer,
    final_mean_accuracy,
)

from actsparse.data.dendrites_permuted_digits import PermutedDigitsDataModule
from actsparse.models.dendrites import DendriticMLP
from actsparse.tasks.dendrites_continual import ContextClassifier

pytestmark = pytest.mark.usefixtures("one_thread")


def test_final_mean_accuracy_and_backward_transfer_by_hand():
    r = [[0.9, 0.1, 0.0],
         [0.7, 0.8, 0.1],
         [0.5, 0.6, 0.95]]
    assert final_mean_accuracy(r) == pytest.approx((0.5 + 0.6 + 0.95) / 3)
    assert backward_transfer(r) == pytest.approx(((0.5 - 0.9) + (0.6 - 0.8)) / 2)  # -0.3: forgetting
    assert backward_transfer([[0.4]]) == 0.0


class _AdamSteps(L.Callback):
    """Adam's step count of the first parameter at each epoch's first batch (after the task's hook)."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            state = trainer.optimizers[0].state.get(next(pl_module.parameters()), {})
            self.steps.append(int(state["step"]) if "step" in state else 0)


def _trainer(*callbacks, max_epochs=-1):
    return L.Trainer(max_epochs=max_epochs, reload_dataloaders_every_n_epochs=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                     num_sanity_val_steps=0, callbacks=list(callbacks), accelerator="cpu")


def test_one_fit_trains_the_tasks_in_turn_and_measures_them():
    torch.manual_seed(0)
    dm = PermutedDigitsDataModule(num_tasks=3, epochs_per_task=2, batch_size=128, seed=0)  # 9 batches an epoch
    net = DendriticMLP(context_dim=64, width=32, depth=1, num_segments=3, percent_on=0.25)
    steps, evaluation = _AdamSteps(), ContinualEvaluation("test")
    trainer = _trainer(steps, evaluation)
    trainer.fit(ContextClassifier(net, lr=3e-3), datamodule=dm)
    assert trainer.current_epoch == 6  # stopped after 3 tasks x 2 epochs, max_epochs=-1
    assert steps.steps == [0, 9, 0, 9, 0, 9]  # Adam starts afresh at each task's first epoch
    matrix = evaluation.matrix
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    # the last row against an independent evaluation: nearest prototype by brute force, argmax by hand
    net.eval()
    for j in range(3):
        x, _, y = dm.task_dataset(j, "test").tensors
        nearest = torch.stack([((x - p) ** 2).sum(1) for p in dm.prototypes]).argmin(0)
        with torch.no_grad():
            logits = net(x, dm.prototypes[nearest])
        assert matrix[-1][j] == pytest.approx(float((logits.argmax(1) == y).double().mean()), abs=1e-9)
    metrics = trainer.callback_metrics
    assert float(metrics["cl/test/final_mean_acc"]) == pytest.approx(sum(matrix[-1]) / 3, abs=1e-6)
    assert float(metrics["cl/test/bwt"]) == pytest.approx(
        ((matrix[2][0] - matrix[0][0]) + (matrix[2][1] - matrix[1][1])) / 2, abs=1e-6)
    assert float(metrics["cl/test/task_inference_acc"]) > 0.95
    assert float(metrics["cl/test/effective_parameters"]) == net.num_parameters()
    assert matrix[0][0] > 0.5  # it learned the first task


def test_validation_split_only_when_tuning(monkeypatch):
    served = []
    original = PermutedDigitsDataModule.task_dataset

    def spy(self, task, split="test", seen=None):
        served.append(split)
        return original(self, task, split, seen)

    monkeypatch.setattr(PermutedDigitsDataModule, "task_dataset", spy)
    dm = PermutedDigitsDataModule(num_tasks=2, epochs_per_task=1, batch_size=256, seed=0)
    evaluation = ContinualEvaluation("val")
    trainer = _trainer(evaluation)
    trainer.fit(ContextClassifier(DendriticMLP(context_dim=64, width=16, depth=1, num_segments=2)), datamodule=dm)
    assert set(served) == {"train", "val"} and "cl/val/final_mean_acc" in trainer.callback_metrics
    with pytest.raises(ValueError, match="'val' or 'test'"):
        ContinualEvaluation("train")


def test_misconfigured_runs_fail_with_the_fix():
    dm = PermutedDigitsDataModule(num_tasks=3, epochs_per_task=2, seed=0)
    with pytest.raises(ValueError, match="trainer.max_epochs=-1"):
        _trainer(max_epochs=4).fit(ContextClassifier(DendriticMLP(context_dim=64, width=8, depth=1)), datamodule=dm)
    with pytest.raises(ValueError, match="model.context_dim=64"):
        _trainer().fit(ContextClassifier(DendriticMLP(context_dim=3, width=8, depth=1)), datamodule=dm)
    with pytest.raises(ValueError, match="schedules tasks"):
        _trainer(ContinualEvaluation()).fit(ContextClassifier(DendriticMLP(context_dim=3, width=8, depth=1)),
                                           datamodule=PermutedDigitsDataModule(num_tasks=3, context="onehot"))
