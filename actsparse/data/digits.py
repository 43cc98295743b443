"""scikit-learn's bundled handwritten digits (8x8 images, 1797 samples, 10 classes) as a
LightningDataModule: nothing is downloaded, everything is deterministic given ``seed``."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(x [1797, 64] float32 in 0..16, y [1797] int64)`` from scikit-learn's bundled file."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data.astype(np.float32), data.target.astype(np.int64)


def split_digits(
    y: np.ndarray, val_fraction: float, test_fraction: float, train_size: float | int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seeded ``(train, val, test)`` index arrays (each sorted).

    Test and validation sets do not depend on ``train_size``: a smaller training set is a
    stratified subset of the full one, so runs at several sizes are evaluated alike.
    """
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    rest, test = train_test_split(index, test_size=test_fraction, stratify=y, random_state=seed)
    val_share = val_fraction / (1 - test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=y[rest], random_state=seed + 1)
    n_full = len(train)
    n = n_full if train_size is None else (
        round(train_size * n_full) if isinstance(train_size, float) else int(train_size))
    if not NUM_CLASSES <= n <= n_full:
        raise ValueError(
            f"data.train_size={train_size!r} gives {n} training samples; the full training split has "
            f"{n_full}. Use a fraction in (0, 1] or a count between {NUM_CLASSES} and {n_full}."
        )
    if n < n_full:
        train, _ = train_test_split(train, train_size=n, stratify=y[train], random_state=seed + 2)
    return np.sort(train), np.sort(val), np.sort(test)


class DigitsDataModule(L.LightningDataModule):
    """Digits for classifiers: train/val/test loaders of ``(x, y)``.

    Args:
        batch_size: training batch size (evaluation uses ``eval_batch_size``, default 512).
        val_fraction, test_fraction: shares of all 1797 samples, stratified by class.
        train_size: None (the whole training split), a fraction of it (float in (0, 1]) or a
            sample count (int): a stratified subset, for studies against training-set size.
        flatten: ``x`` as ``[64]`` vectors (MLPs) or ``[1, 8, 8]`` images (CNNs).
        standardize: subtract the training mean and divide by the training std per pixel
            (pixels constant over the training set are only centred).
        seed: fixes the split and the training shuffle.

    Example:
        >>> dm = DigitsDataModule(batch_size=32, seed=0)
        >>> dm.setup()
        >>> len(dm.train_set), len(dm.val_set), len(dm.test_set)
        (1077, 360, 360)
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), y.dtype
        ((32, 64), torch.int64)
    """

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        train_size: float | int | None = None,
        flatten: bool = True,
        standardize: bool = True,
        seed: int = 0,
        eval_batch_size: int = 512,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be in (0, 1) "
                "and leave a training split (sum < 1)."
            )
        if isinstance(train_size, bool) or (
            train_size is not None and not (
                (isinstance(train_size, float) and 0 < train_size <= 1) or (isinstance(train_size, int) and train_size > 0))
        ):
            raise ValueError(f"data.train_size must be null, a fraction in (0, 1] or a positive count, got {train_size!r}.")
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"data.batch_size and data.eval_batch_size must be >= 1, got {batch_size}, {eval_batch_size}.")
        self.save_hyperparameters()
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self._generator = torch.Generator().manual_seed(seed)

    @property
    def source_name(self) -> str:
        return "sklearn_digits"

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (64,) if self.hparams.flatten else IMAGE_SHAPE

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        x, y = load_digits_arrays()
        train, val, test = split_digits(y, hp.val_fraction, hp.test_fraction, hp.train_size, hp.seed)
        x = torch.from_numpy(x)
        self.mean = x[train].mean(0) if hp.standardize else torch.zeros(64)
        std = x[train].std(0) if hp.standardize else torch.ones(64)
        self.std = torch.where(std > 0, std, torch.ones_like(std))
        x = (x - self.mean) / self.std
        if not hp.flatten:
            x = x.view(-1, *IMAGE_SHAPE)
        y = torch.from_numpy(y)
        self.train_set, self.val_set, self.test_set = (
            TensorDataset(x[idx], y[idx]) for idx in map(torch.from_numpy, (train, val, test)))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True,
                          generator=self._generator, num_workers=self.hparams.num_workers)

    def _eval_loader(self, dataset: TensorDataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.hparams.eval_batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers)

    def train_eval_dataloader(self) -> DataLoader:
        """The training set in a fixed order, for evaluation (e.g. neural codes of training data)."""
        return self._eval_loader(self.train_set)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)

    def __getstate__(self) -> dict:
        # Spawned DDP processes rebuild the (deterministic, 0.5 MB) data in setup() rather than
        # receiving tensors through shared memory, which small /dev/shm mounts refuse.
        # A torch.Generator travels as plain bytes (its tensor state fails to cross spawn here).
        state = dict(self.__dict__)
        state.update(train_set=None, val_set=None, test_set=None, mean=None, std=None,
                     _generator=bytes(self._generator.get_state().numpy()))
        return state

    def __setstate__(self, state: dict) -> None:
        generator = torch.Generator()
        generator.set_state(torch.frombuffer(bytearray(state["_generator"]), dtype=torch.uint8))
        self.__dict__.update(state, _generator=generator)

    def state_dict(self) -> dict:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._generator.set_state(state_dict["generator"])
