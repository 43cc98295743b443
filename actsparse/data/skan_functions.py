"""Function-fitting tasks (KAN paper §3.1 toy set + two Feynman equations) as a LightningDataModule.

Data are generated, never downloaded: inputs uniform on each task's ranges (seeded), targets
``f(x)``. The network sees the inputs mapped linearly onto ``[-1, 1]`` (so every activation
space works on its natural domain); the targets are left as they are.

=================== ===== ================================================== =======================
task                d     f                                                   source
=================== ===== ================================================== =======================
``bessel``          1     ``J0(20x)``                                         KAN §3.1
``exp_sin``         2     ``exp(sin(πx) + y²)``                               KAN §3.1
``xy``              2     ``x·y``                                             KAN §3.1
``exp_sin_100d``    100   ``exp((1/100)·Σ sin²(πx_i/2))``                     KAN §3.1
``exp_4d``          4     ``exp(½·(sin(π(x1²+x2²)) + sin(π(x3²+x4²))))``      KAN §3.1
``gaussian``        2     ``exp(-θ²/(2σ²))/√(2πσ²)``, θ∈[-1,1], σ∈[0.5,2]     Feynman I.6.20 (pykan)
``oscillating``     2     ``(x + y)·sin(exp(2y))``                            pykan's Feynman "test"
=================== ===== ================================================== =======================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


@dataclass(frozen=True)
class FunctionTask:
    name: str
    dim: int
    fn: Callable[[torch.Tensor], torch.Tensor]
    formula: str
    source: str
    ranges: tuple[tuple[float, float], ...] = ()

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        ranges = self.ranges or ((-1.0, 1.0),) * self.dim
        low = torch.tensor([r[0] for r in ranges], dtype=torch.float64)
        high = torch.tensor([r[1] for r in ranges], dtype=torch.float64)
        return low, high


def _c(x: torch.Tensor, i: int) -> torch.Tensor:
    return x[:, i]


TASKS: dict[str, FunctionTask] = {t.name: t for t in (
    FunctionTask("bessel", 1, lambda x: torch.special.bessel_j0(20 * _c(x, 0)), "J0(20x)", "KAN §3.1"),
    FunctionTask("exp_sin", 2, lambda x: torch.exp(torch.sin(math.pi * _c(x, 0)) + _c(x, 1) ** 2),
                 "exp(sin(πx)+y²)", "KAN §3.1"),
    FunctionTask("xy", 2, lambda x: _c(x, 0) * _c(x, 1), "xy", "KAN §3.1"),
    FunctionTask("exp_sin_100d", 100, lambda x: torch.exp(torch.sin(math.pi * x / 2).square().mean(1)),
                 "exp(Σ sin²(πx_i/2)/100)", "KAN §3.1"),
    FunctionTask("exp_4d", 4, lambda x: torch.exp(0.5 * (torch.sin(math.pi * (_c(x, 0) ** 2 + _c(x, 1) ** 2))
                                                         + torch.sin(math.pi * (_c(x, 2) ** 2 + _c(x, 3) ** 2)))),
                 "exp((sin(π(x1²+x2²))+sin(π(x3²+x4²)))/2)", "KAN §3.1"),
    FunctionTask("gaussian", 2, lambda x: torch.exp(-_c(x, 0) ** 2 / (2 * _c(x, 1) ** 2))
                 / torch.sqrt(2 * math.pi * _c(x, 1) ** 2),
                 "exp(-θ²/(2σ²))/√(2πσ²)", "Feynman I.6.20", ((-1.0, 1.0), (0.5, 2.0))),
    FunctionTask("oscillating", 2, lambda x: (_c(x, 0) + _c(x, 1)) * torch.sin(torch.exp(2 * _c(x, 1))),
                 "(x+y)·sin(exp(2y))", "pykan Feynman 'test'"),
)}


def get_task(name: str) -> FunctionTask:
    if name not in TASKS:
        raise ValueError(f"Unknown function task {name!r}; choose from {', '.join(TASKS)}.")
    return TASKS[name]


def make_function_data(task: str | FunctionTask, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x in [-1, 1]^d as the network sees it [n, d], f(x) [n, 1])``, float32, seeded."""
    task = get_task(task) if isinstance(task, str) else task
    if n < 1:
        raise ValueError(f"need at least one sample, got n={n}.")
    g = torch.Generator().manual_seed(int(seed))
    unit = torch.rand(n, task.dim, generator=g, dtype=torch.float64)
    low, high = task.bounds()
    raw = low + unit * (high - low)
    y = task.fn(raw).reshape(n, 1)
    return (2 * unit - 1).float(), y.float()


class FunctionDataModule(L.LightningDataModule):
    """Train/val/test sets of one function task; full-batch by default (``batch_size=None``),
    as in the KAN paper.

    Args:
        task: a name from ``TASKS``.
        n_train, n_val, n_test: sample counts (KAN paper: 1000 train, 1000 test).
        batch_size: None for full-batch training (LBFGS needs it).
        full_batch_repeats: with ``batch_size=None``, one training epoch is this many full-batch
            steps (Lightning's per-epoch bookkeeping costs far more than a step of these tiny
            models, so one-step epochs would make training 10x slower).
        noise: standard deviation of Gaussian noise on the *training* targets.
        seed: fixes all three sets (train, val and test draw from different seeds).

    Example:
        >>> dm = FunctionDataModule("exp_sin", n_train=64, n_val=16, n_test=32)
        >>> dm.setup()
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), tuple(y.shape), bool(x.abs().max() <= 1)
        ((64, 2), (64, 1), True)
    """

    def __init__(self, task: str = "exp_sin", n_train: int = 1000, n_val: int = 200, n_test: int = 1000,
                 batch_size: int | None = None, noise: float = 0.0, seed: int = 0, num_workers: int = 0,
                 full_batch_repeats: int = 100) -> None:
        super().__init__()
        get_task(task)
        if min(n_train, n_val, n_test) < 1:
            raise ValueError(f"n_train, n_val and n_test must be >= 1, got {n_train}, {n_val}, {n_test}.")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or null (full batch), got {batch_size}.")
        if full_batch_repeats < 1:
            raise ValueError(f"full_batch_repeats must be >= 1, got {full_batch_repeats}.")
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}.")
        self.save_hyperparameters()
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    @property
    def task(self) -> FunctionTask:
        return get_task(self.hparams.task)

    @property
    def in_features(self) -> int:
        return self.task.dim

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        base = 1000 * int(hp.seed)
        x, y = make_function_data(hp.task, hp.n_train, base)
        if hp.noise:
            y = y + hp.noise * torch.randn(y.shape, generator=torch.Generator().manual_seed(base + 3))
        self.train_set = TensorDataset(x, y)
        self.val_set = TensorDataset(*make_function_data(hp.task, hp.n_val, base + 1))
        self.test_set = TensorDataset(*make_function_data(hp.task, hp.n_test, base + 2))

    def _loader(self, dataset: TensorDataset, shuffle: bool) -> DataLoader:
        size = self.hparams.batch_size or len(dataset)
        return DataLoader(dataset, batch_size=size, shuffle=shuffle and size < len(dataset),
                          num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        if self.hparams.batch_size is None:
            return DataLoader(_RepeatedBatch(self.train_set.tensors, self.hparams.full_batch_repeats), batch_size=None)
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def tensors(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as ``(x, y)`` (for pykan's own ``fit`` and for evaluation)."""
        self.setup()
        return {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split].tensors


class _RepeatedBatch(torch.utils.data.Dataset):
    """The whole training set as one batch, ``repeats`` times per epoch."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], repeats: int) -> None:
        self.tensors, self.repeats = tensors, int(repeats)

    def __len__(self) -> int:
        return self.repeats

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if not 0 <= index < self.repeats:
            raise IndexError(index)
        return self.tensors


def task_names(names: Sequence[str] | None = None) -> list[str]:
    names = list(names or TASKS)
    for n in names:
        get_task(n)
    return names
