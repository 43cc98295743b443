"""Two-class Dirichlet data mapped to the unit sphere, with the Bayes classifier of the model.

The data model of Radhakrishnan, Belkin and Uhler (their code's ``get_dirichlet_data``): class c
has prior ``priors[c]``; its points are ``s ~ Dirichlet(alphas[c])`` on the simplex, mapped to the
sphere by ``x = s / |s|``. The map is a bijection from the simplex to the positive orthant of the
sphere (``s = x / sum(x)``) with the same Jacobian for both classes, so the Bayes classifier on
``x`` compares ``priors[c] * Dirichlet(alphas[c]).pdf(x / sum x)``.

``PRESETS`` holds the authors' alphas for input dimensions 2, 3, 5 and 9 (prior 0.4 / 0.6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import lightning as L
import torch
from torch.distributions import Dirichlet
from torch.utils.data import DataLoader, TensorDataset

PRESETS: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {
    2: ((1, 2), (2, 1)),
    3: ((0.5, 0.5, 2.5), (2.5, 0.1, 0.5)),
    5: ((3, 1, 2, 1, 1), (1, 2, 2, 2, 3)),
    9: ((1, 2, 1, 2, 1, 1, 1, 1, 1), (1, 1, 1, 2, 3, 4, 2, 2, 1)),
}
DEFAULT_PRIORS = (0.4, 0.6)


@dataclass
class DirichletSphere:
    """The two-class data model. ``alphas[c]`` are class c's Dirichlet parameters."""

    alphas: Sequence[Sequence[float]]
    priors: Sequence[float] = DEFAULT_PRIORS

    def __post_init__(self) -> None:
        self.alphas = [tuple(float(a) for a in alpha) for alpha in self.alphas]
        dims = {len(a) for a in self.alphas}
        if len(self.alphas) < 2 or len(dims) != 1 or min(min(a) for a in self.alphas) <= 0:
            raise ValueError(f"Need >= 2 classes of positive Dirichlet parameters of one dimension, got {self.alphas}.")
        self.priors = tuple(float(p) for p in self.priors)
        if len(self.priors) != len(self.alphas) or min(self.priors) < 0 or abs(sum(self.priors) - 1) > 1e-9:
            raise ValueError(f"priors must be {len(self.alphas)} probabilities summing to 1, got {self.priors}.")

    @classmethod
    def preset(cls, dim: int, priors: Sequence[float] = DEFAULT_PRIORS) -> "DirichletSphere":
        """The authors' data model in input dimension ``dim`` (2, 3, 5 or 9)."""
        if dim not in PRESETS:
            raise ValueError(f"No preset for dim={dim}; presets: {sorted(PRESETS)}. Pass alphas yourself.")
        return cls(PRESETS[dim], priors)

    @property
    def dim(self) -> int:
        return len(self.alphas[0])

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` i.i.d. points: ``x`` float64 ``[n, dim]`` on the unit sphere, labels ``y`` (int64)."""
        y = torch.multinomial(torch.tensor(self.priors, dtype=torch.float64), n, replacement=True, generator=generator)
        x = torch.empty(n, self.dim, dtype=torch.float64)
        for c, alpha in enumerate(self.alphas):
            idx = (y == c).nonzero().squeeze(1)
            # Dirichlet via normalized Gammas, drawn with our generator for reproducibility
            gam = torch._standard_gamma(torch.tensor(alpha, dtype=torch.float64).expand(len(idx), -1).contiguous(),
                                        generator=generator)
            x[idx] = gam / gam.sum(1, keepdim=True)
        x = x.clamp_min(torch.finfo(torch.float64).tiny)  # a Gamma draw can underflow to 0 for small alpha
        return x / x.norm(dim=1, keepdim=True), y

    def log_posterior(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalized log posteriors ``log prior_c + log p_c(s)``, ``[n, classes]``, for sphere points ``x``."""
        x = torch.as_tensor(x, dtype=torch.float64)
        if (x < 0).any():
            raise ValueError("Dirichlet sphere points lie in the positive orthant; got negative coordinates.")
        s = x / x.sum(1, keepdim=True)
        s = s.clamp_min(torch.finfo(torch.float64).tiny)
        s = s / s.sum(1, keepdim=True)
        return torch.stack([torch.log(torch.tensor(p, dtype=torch.float64)) + Dirichlet(torch.tensor(a, dtype=torch.float64)).log_prob(s)
                            for p, a in zip(self.priors, self.alphas)], 1)

    def bayes_predict(self, x: torch.Tensor) -> torch.Tensor:
        """The Bayes classifier: the class of largest posterior."""
        return self.log_posterior(x).argmax(1)


class SphereDataModule(L.LightningDataModule):
    """Train/val/test splits of :class:`DirichletSphere` data (float32 tensors for networks).

    ``dim`` picks a preset; ``alphas`` overrides it. Test inputs in float64 and their Bayes
    predictions are kept (``bayes_test_accuracy``) for comparison.
    """

    def __init__(self, dim: int = 3, n_train: int = 1000, n_val: int = 500, n_test: int = 1000,
                 alphas: Sequence[Sequence[float]] | None = None, priors: Sequence[float] = DEFAULT_PRIORS,
                 batch_size: int = 128, eval_batch_size: int = 1024, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = DirichletSphere(alphas, priors) if alphas is not None else DirichletSphere.preset(dim, priors)
        self.train_set = self.val_set = self.test_set = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        gen = torch.Generator().manual_seed(int(hp.seed))
        sizes = [int(hp.n_train), int(hp.n_val), int(hp.n_test)]
        x, y = self.model.sample(sum(sizes), gen)
        self.x64, self.y = x, y
        parts = torch.split(torch.arange(sum(sizes)), sizes)
        self.splits = {name: (x[idx], y[idx]) for name, idx in zip(("train", "val", "test"), parts)}
        self.train_set, self.val_set, self.test_set = (TensorDataset(x[idx].float(), y[idx]) for idx in parts)

    @property
    def bayes_test_accuracy(self) -> float:
        x, y = self.splits["test"]
        return float((self.model.bayes_predict(x) == y).double().mean())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(int(self.hparams.seed)),
                          num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.eval_batch_size, num_workers=self.hparams.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.hparams.eval_batch_size, num_workers=self.hparams.num_workers)
