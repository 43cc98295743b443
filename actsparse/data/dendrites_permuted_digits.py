"""Context-dependent continual learning on scikit-learn's digits: permuted-digits tasks.

Task ``t`` shows the same digits with the 64 pixels in a fixed order of its own (task 0: the
original order; the others: seeded random permutations); the label is the digit in every
task and the context is the task id (one-hot). Nothing is downloaded. The train/val/test
split is :func:`actsparse.data.digits.split_digits`'s, shared by all tasks (each task sees the
same images, permuted), with pixels standardized on the training split before permuting.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from actsparse.data.digits import NUM_CLASSES, load_digits_arrays, split_digits

SPLITS = ("train", "val", "test")


def task_permutations(num_tasks: int, num_pixels: int = 64, seed: int = 0) -> torch.Tensor:
    """``[num_tasks, num_pixels]`` pixel orders: row 0 is the identity, the rest seeded permutations."""
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}.")
    generator = torch.Generator().manual_seed(seed)
    perms = [torch.arange(num_pixels)] + [torch.randperm(num_pixels, generator=generator) for _ in range(num_tasks - 1)]
    return torch.stack(perms)


class PermutedDigitsDataModule(L.LightningDataModule):
    """Sequential permuted-digits tasks; batches are ``(x [B, 64], context [B, num_tasks], y [B])``.

    ``set_task(t)`` chooses the task that :meth:`train_dataloader` / :meth:`val_dataloader` /
    :meth:`test_dataloader` serve; :meth:`task_dataset` gives any task's split directly.

    Args:
        num_tasks: number of tasks (pixel permutations); the context is one-hot of this size.
        batch_size, eval_batch_size, val_fraction, test_fraction, train_size, standardize: as in
            :class:`~actsparse.data.digits.DigitsDataModule`.
        seed: fixes the split, the permutations and the training shuffle.

    Example:
        >>> dm = PermutedDigitsDataModule(num_tasks=3, seed=0)
        >>> dm.setup()
        >>> x, c, y = dm.task_dataset(2, "test").tensors
        >>> tuple(x.shape), tuple(c[0].tolist()), len(dm.task_dataset(0, "train"))
        ((360, 64), (0.0, 0.0, 1.0), 1077)
    """

    def __init__(self, num_tasks: int = 5, batch_size: int = 32, val_fraction: float = 0.2,
                 test_fraction: float = 0.2, train_size: float | int | None = None, standardize: bool = True,
                 seed: int = 0, eval_batch_size: int = 512, num_workers: int = 0) -> None:
        super().__init__()
        if isinstance(num_tasks, bool) or int(num_tasks) != num_tasks or num_tasks < 1:
            raise ValueError(f"data.num_tasks must be a positive integer, got {num_tasks!r}.")
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"data.batch_size and data.eval_batch_size must be >= 1, got {batch_size}, {eval_batch_size}.")
        self.save_hyperparameters()
        self.num_tasks = int(num_tasks)
        self.current_task = 0
        self.permutations = task_permutations(self.num_tasks, 64, seed)
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._generator = torch.Generator().manual_seed(seed)

    @property
    def source_name(self) -> str:
        return "sklearn_digits_permuted"

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    @property
    def context_dim(self) -> int:
        return self.num_tasks

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        hp = self.hparams
        x, y = load_digits_arrays()
        train, val, test = split_digits(y, hp.val_fraction, hp.test_fraction, hp.train_size, hp.seed)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        if hp.standardize:
            mean, std = x[train].mean(0), x[train].std(0)
            x = (x - mean) / torch.where(std > 0, std, torch.ones_like(std))
        self._splits = {name: (x[torch.from_numpy(idx)], y[torch.from_numpy(idx)])
                        for name, idx in zip(SPLITS, (train, val, test))}

    def set_task(self, task: int) -> None:
        if not 0 <= task < self.num_tasks:
            raise ValueError(f"task must be in 0..{self.num_tasks - 1}, got {task}.")
        self.current_task = int(task)

    def context(self, task: int, count: int) -> torch.Tensor:
        """``[count, num_tasks]`` one-hot contexts of ``task``."""
        return torch.zeros(count, self.num_tasks).index_fill_(1, torch.tensor([task]), 1.0)

    def task_dataset(self, task: int, split: str = "test") -> TensorDataset:
        """Task ``task``'s ``split`` ("train", "val" or "test") as ``(x, context, y)``."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        if not 0 <= task < self.num_tasks:
            raise ValueError(f"task must be in 0..{self.num_tasks - 1}, got {task}.")
        self.setup()
        x, y = self._splits[split]
        return TensorDataset(x[:, self.permutations[task]], self.context(task, len(y)), y)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.task_dataset(self.current_task, "train"), batch_size=self.hparams.batch_size,
                          shuffle=True, generator=self._generator, num_workers=self.hparams.num_workers)

    def _eval(self, split: str) -> DataLoader:
        return DataLoader(self.task_dataset(self.current_task, split), batch_size=self.hparams.eval_batch_size,
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
