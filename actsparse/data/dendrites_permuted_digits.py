"""Context-dependent continual learning on scikit-learn's digits: permuted-digits tasks.

Task ``t`` shows the same digits with the 64 pixels in a fixed order of its own (task 0: the
original order; the others: seeded random permutations); the label is the digit in every task.
Nothing is downloaded. The train/val/test split is :func:`actsparse.data.digits.split_digits`'s,
shared by all tasks (each task sees the same images, permuted).

The context each sample comes with (``context``):

- ``prototype`` (default; Iyer et al. 2022 and nupic.research's ``PrototypeContext``): a task's
  prototype is the mean of its training inputs. Training batches carry their task's prototype;
  at evaluation the task is not given: each sample gets the prototype nearest to it (Euclidean)
  among the tasks trained so far.
- ``onehot``: the task id, one-hot, given at training and at evaluation.

Prototypes need pixels whose mean differs from place to place, so the default standardization
is ``global`` (one mean and std over all training pixels, like MNIST's usual normalization);
``pixel`` standardization makes every pixel's training mean 0, so every prototype would be the
zero vector and the nearest prototype meaningless (refused with ``context=prototype``).

With ``epochs_per_task`` the module serves the tasks in turn within one ``trainer.fit``:
epoch ``e`` trains task ``e // epochs_per_task`` (the trainer must reload the train loader
every epoch: ``trainer.reload_dataloaders_every_n_epochs=1``).
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from actsparse.data.digits import NUM_CLASSES, load_digits_arrays, split_digits

SPLITS = ("train", "val", "test")
CONTEXTS = ("prototype", "onehot")
STANDARDIZATIONS = ("global", "pixel", "none")


def task_permutations(num_tasks: int, num_pixels: int = 64, seed: int = 0) -> torch.Tensor:
    """``[num_tasks, num_pixels]`` pixel orders: row 0 is the identity, the rest seeded permutations."""
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}.")
    generator = torch.Generator().manual_seed(seed)
    perms = [torch.arange(num_pixels)] + [torch.randperm(num_pixels, generator=generator) for _ in range(num_tasks - 1)]
    return torch.stack(perms)


def nearest_prototype(x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Index of the prototype (row of ``prototypes [tasks, d]``) nearest to each row of ``x [n, d]``."""
    return torch.cdist(x, prototypes).argmin(dim=1)


class PermutedDigitsDataModule(L.LightningDataModule):
    """Sequential permuted-digits tasks; batches are ``(x [B, 64], context [B, context_dim], y [B])``.

    :meth:`task_dataset` gives any task's split with the contexts a model would get (``seen``:
    the tasks whose prototypes are known at that point); :meth:`set_task` chooses the task the
    loaders serve when no trainer schedules them.

    Args:
        num_tasks: number of tasks (pixel permutations).
        context: ``prototype`` (inferred at evaluation) or ``onehot`` (task id given).
        epochs_per_task: training epochs per task within one fit (None: serve ``current_task``).
        standardize: ``global``, ``pixel`` or ``none`` (statistics from the training split).
        batch_size, eval_batch_size, val_fraction, test_fraction, train_size: as in
            :class:`~actsparse.data.digits.DigitsDataModule`.
        seed: fixes the split, the permutations and the training shuffle.

    Example:
        >>> dm = PermutedDigitsDataModule(num_tasks=3, context="onehot", seed=0)
        >>> dm.setup()
        >>> x, c, y = dm.task_dataset(2, "test").tensors
        >>> tuple(x.shape), tuple(c[0].tolist()), len(dm.task_dataset(0, "train"))
        ((360, 64), (0.0, 0.0, 1.0), 1077)
    """

    def __init__(self, num_tasks: int = 10, context: str = "prototype", epochs_per_task: int | None = None,
                 batch_size: int = 32, val_fraction: float = 0.2, test_fraction: float = 0.2,
                 train_size: float | None = None, standardize: str = "global", seed: int = 0,
                 eval_batch_size: int = 512, num_workers: int = 0) -> None:
        super().__init__()
        if isinstance(num_tasks, bool) or int(num_tasks) != num_tasks or num_tasks < 1:
            raise ValueError(f"data.num_tasks must be a positive integer, got {num_tasks!r}.")
        if context not in CONTEXTS:
            raise ValueError(f"data.context must be one of {CONTEXTS}, got {context!r}.")
        if standardize not in STANDARDIZATIONS:
            raise ValueError(f"data.standardize must be one of {STANDARDIZATIONS}, got {standardize!r}.")
        if context == "prototype" and standardize == "pixel":
            raise ValueError("data.context=prototype needs data.standardize=global or none: per-pixel "
                             "standardization makes every task's mean input (its prototype) zero.")
        if epochs_per_task is not None and (isinstance(epochs_per_task, bool) or int(epochs_per_task) < 1):
            raise ValueError(f"data.epochs_per_task must be a positive integer or null, got {epochs_per_task!r}.")
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"data.batch_size and data.eval_batch_size must be >= 1, got {batch_size}, {eval_batch_size}.")
        self.save_hyperparameters()
        self.num_tasks = int(num_tasks)
        self.context_kind = context
        self.epochs_per_task = None if epochs_per_task is None else int(epochs_per_task)
        self.current_task = 0
        self.permutations = task_permutations(self.num_tasks, 64, seed)
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.prototypes = torch.empty(0)
        self._generator = torch.Generator().manual_seed(seed)

    @property
    def source_name(self) -> str:
        return "sklearn_digits_permuted"

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    @property
    def context_dim(self) -> int:
        """Size of the context vectors: 64 (a mean input) or ``num_tasks`` (one-hot)."""
        return 64 if self.context_kind == "prototype" else self.num_tasks

    @property
    def total_epochs(self) -> int | None:
        """Training epochs of the whole task sequence (None without ``epochs_per_task``)."""
        return None if self.epochs_per_task is None else self.epochs_per_task * self.num_tasks

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        hp = self.hparams
        x, y = load_digits_arrays()
        train, val, test = split_digits(y, hp.val_fraction, hp.test_fraction, hp.train_size, hp.seed)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        if hp.standardize == "pixel":
            mean, std = x[train].mean(0), x[train].std(0)
            x = (x - mean) / torch.where(std > 0, std, torch.ones_like(std))
        elif hp.standardize == "global":
            x = (x - x[train].mean()) / x[train].std()
        self._splits = {name: (x[torch.from_numpy(idx)], y[torch.from_numpy(idx)])
                        for name, idx in zip(SPLITS, (train, val, test))}
        # a task's prototype: its mean training input (the permuted mean image)
        self.prototypes = self._splits["train"][0].mean(0)[self.permutations]

    def set_task(self, task: int) -> None:
        if not 0 <= task < self.num_tasks:
            raise ValueError(f"task must be in 0..{self.num_tasks - 1}, got {task}.")
        self.current_task = int(task)

    def task_of_epoch(self, epoch: int) -> int:
        """The task trained in ``epoch`` under the ``epochs_per_task`` schedule."""
        if self.epochs_per_task is None:
            return self.current_task
        return min(epoch // self.epochs_per_task, self.num_tasks - 1)

    def infer_tasks(self, x: torch.Tensor, seen: int | None = None) -> torch.Tensor:
        """Each sample's task as the prototype context infers it: the nearest of the first ``seen``
        tasks' prototypes (all tasks when None)."""
        self.setup()
        return nearest_prototype(x, self.prototypes[: seen or self.num_tasks])

    def contexts(self, task: int, x: torch.Tensor, split: str, seen: int | None = None) -> torch.Tensor:
        """``[n, context_dim]`` contexts of task ``task``'s samples ``x`` in ``split``: one-hot task
        ids; or the task's prototype (training), the nearest seen prototype (val/test)."""
        if self.context_kind == "onehot":
            return torch.zeros(len(x), self.num_tasks).index_fill_(1, torch.tensor([task]), 1.0)
        if split == "train":
            return self.prototypes[task].expand(len(x), -1).clone()
        return self.prototypes[self.infer_tasks(x, seen)]

    def task_dataset(self, task: int, split: str = "test", seen: int | None = None) -> TensorDataset:
        """Task ``task``'s ``split`` ("train", "val" or "test") as ``(x, context, y)``; ``seen``: how
        many tasks' prototypes evaluation may choose from (default all)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        if not 0 <= task < self.num_tasks:
            raise ValueError(f"task must be in 0..{self.num_tasks - 1}, got {task}.")
        self.setup()
        x, y = self._splits[split]
        x = x[:, self.permutations[task]]
        return TensorDataset(x, self.contexts(task, x, split, seen), y)

    def train_dataloader(self) -> DataLoader:
        if self.epochs_per_task is not None and self.trainer is not None:
            if self.num_tasks > 1 and self.trainer.reload_dataloaders_every_n_epochs != 1:
                raise ValueError("data.epochs_per_task switches tasks between epochs: set "
                                 "trainer.reload_dataloaders_every_n_epochs=1.")
            self.current_task = self.task_of_epoch(self.trainer.current_epoch)
        return DataLoader(self.task_dataset(self.current_task, "train"), batch_size=self.hparams.batch_size,
                          shuffle=True, generator=self._generator, num_workers=self.hparams.num_workers)

    def _eval(self, split: str) -> DataLoader:
        seen = self.current_task + 1
        return DataLoader(self.task_dataset(self.current_task, split, seen), batch_size=self.hparams.eval_batch_size,
                          num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval("test")

    def state_dict(self) -> dict:
        return {"generator": self._generator.get_state(), "current_task": self.current_task}

    def load_state_dict(self, state_dict: dict) -> None:
        self._generator.set_state(state_dict["generator"])
        self.current_task = int(state_dict["current_task"])
