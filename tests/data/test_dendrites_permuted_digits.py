"""Permuted-digits tasks (actsparse.data.dendrites_permuted_digits): permutations, prototype
contexts (a task's mean training input; the nearest seen prototype at evaluation) against a
NumPy float64 reference, one-hot contexts, and the epoch schedule inside one fit."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from actsparse.data.dendrites_permuted_digits import (
    PermutedDigitsDataModule,
    task_permutations,
)
from actsparse.data.digits import load_digits_arrays, split_digits

pytestmark = pytest.mark.usefixtures("one_thread")


def test_permutations_and_onehot_contexts():
    dm = PermutedDigitsDataModule(num_tasks=3, context="onehot", seed=0)
    dm.setup()
    perms = task_permutations(3, 64, 0)
    assert torch.equal(perms[0], torch.arange(64)) and not torch.equal(perms[1], perms[2])
    x0, _, y0 = dm.task_dataset(0, "train").tensors
    x2, c2, y2 = dm.task_dataset(2, "train").tensors
    assert torch.equal(x2, x0[:, perms[2]]) and torch.equal(y0, y2)
    assert c2.sum(1).eq(1).all() and c2[:, 2].eq(1).all() and dm.context_dim == 3
    assert torch.equal(dm.task_dataset(2, "test").tensors[1][:, 2], torch.ones(360))  # given at test time too
    dm.set_task(1)
    x, c, _ = next(iter(dm.train_dataloader()))
    assert c[:, 1].eq(1).all() and x.shape == (32, 64)
    with pytest.raises(ValueError, match="task"):
        dm.set_task(3)


def _reference(num_tasks, seed):
    """Global standardization, prototypes and nearest-prototype tasks in NumPy float64."""
    x, y = load_digits_arrays()
    train, val, test = split_digits(y, 0.2, 0.2, None, seed)
    x = x.astype(np.float64)
    x = (x - x[train].mean()) / x[train].std(ddof=1)
    perms = task_permutations(num_tasks, 64, seed).numpy()
    prototypes = np.stack([x[train][:, p].mean(0) for p in perms])
    return x, (train, val, test), perms, prototypes


def test_prototype_contexts_against_numpy():
    dm = PermutedDigitsDataModule(num_tasks=4, seed=3)
    dm.setup()
    x, (_, val, _), perms, prototypes = _reference(4, 3)
    assert dm.context_dim == 64
    np.testing.assert_allclose(dm.prototypes.numpy(), prototypes, atol=1e-5)
    # training batches carry their own task's prototype
    _, c, _ = dm.task_dataset(2, "train").tensors
    np.testing.assert_allclose(c.numpy(), np.broadcast_to(prototypes[2], c.shape), atol=1e-5)
    # evaluation: the nearest prototype among the tasks seen so far, sample by sample
    for seen in (1, 2, 4):
        xs, c, _ = dm.task_dataset(3, "val", seen=seen).tensors
        samples = x[val][:, perms[3]]
        dist = ((samples[:, None, :] - prototypes[None, :seen, :]) ** 2).sum(-1)
        np.testing.assert_allclose(c.numpy(), prototypes[dist.argmin(1)], atol=1e-5)
        np.testing.assert_allclose(xs.numpy(), samples, atol=1e-5)
    # with every task known, the digits' pixel layout gives the task away
    assert (dm.infer_tasks(dm.task_dataset(3, "test").tensors[0]) == 3).float().mean() > 0.95


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="prototype"):
        PermutedDigitsDataModule(context="prototype", standardize="pixel")
    with pytest.raises(ValueError, match="data.context"):
        PermutedDigitsDataModule(context="task_id")
    with pytest.raises(ValueError, match="epochs_per_task"):
        PermutedDigitsDataModule(epochs_per_task=0)


class _Contexts(L.Callback):
    """The task of each epoch's first training batch (by its context)."""

    def __init__(self, dm):
        self.dm, self.tasks = dm, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            proto = batch[1][0]
            self.tasks.append(int(((self.dm.prototypes - proto).abs().sum(1)).argmin()))


def test_the_schedule_serves_each_task_for_its_epochs():
    from actsparse.models.dendrites import DendriticMLP
    from actsparse.tasks.dendrites_continual import ContextClassifier

    torch.manual_seed(0)
    dm = PermutedDigitsDataModule(num_tasks=3, epochs_per_task=2, batch_size=256, seed=0)
    seen = _Contexts(dm)
    trainer = L.Trainer(max_epochs=-1, reload_dataloaders_every_n_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[seen], accelerator="cpu")
    trainer.fit(ContextClassifier(DendriticMLP(context_dim=64, width=16, depth=1, num_segments=3)), datamodule=dm)
    assert seen.tasks == [0, 0, 1, 1, 2, 2]  # and the task stopped the fit after the last task
    assert dm.total_epochs == 6 and dm.task_of_epoch(5) == 2
    without_reload = L.Trainer(max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                               enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs"):
        without_reload.fit(ContextClassifier(DendriticMLP(context_dim=64, width=16, depth=1, num_segments=3)),
                           datamodule=PermutedDigitsDataModule(num_tasks=2, epochs_per_task=1, seed=0))
