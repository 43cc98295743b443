"""Regression as a LightningModule (function fitting with KANs, S-KANs, MLPs or any ``x -> y`` module)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanSquaredError

OPTIMIZERS = ("adam", "adamw", "lbfgs")


class Regressor(L.LightningModule):
    """Mean-squared error on ``(x, y)`` batches; logs ``train/loss``, ``train/rmse`` and DDP-exact
    ``val/rmse`` (also ``val/loss``) and ``test/rmse``.

    Args:
        model: any module ``[N, d] -> [N, 1]`` (e.g. :class:`actsparse.models.skan.KAN`).
        optimizer: ``adam``, ``adamw`` or ``lbfgs`` (full-batch, strong-Wolfe line search, as
            pykan fits its toy functions: ``lbfgs_max_iter=20`` and ``lbfgs_tolerance=1e-32`` are
            pykan ``fit``'s settings, so every step runs its 20 iterations).
        grid_update_every, grid_update_until: move the B-spline grids (ours and pykan's) to the
            batch's inputs before every ``grid_update_every``-th optimizer step below
            ``grid_update_until`` (pykan ``fit``'s schedule: every 10 steps up to 50); 0: never.
            Part of the task so that every model of a comparison gets the same schedule.
        reg_l1, reg_entropy: KAN regularization (L1 + entropy of the edge functions, KAN
            paper eq. 2.20) added to the loss when either is > 0 (the model needs KAN layers).

    Example:
        >>> task = Regressor(nn.Linear(2, 1))
        >>> task(torch.randn(4, 2)).shape
        torch.Size([4, 1])
    """

    def __init__(self, model: nn.Module, optimizer: str = "adam", lr: float = 1e-2, weight_decay: float = 0.0,
                 reg_l1: float = 0.0, reg_entropy: float = 0.0, lbfgs_max_iter: int = 5,
                 lbfgs_tolerance: float | None = None, grid_update_every: int = 0,
                 grid_update_until: int | None = None) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {optimizer!r}; choose from {', '.join(OPTIMIZERS)}.")
        if grid_update_every < 0:
            raise ValueError(f"grid_update_every must be >= 0 (0: no grid updates), got {grid_update_every}.")
        if reg_l1 < 0 or reg_entropy < 0:
            raise ValueError(f"reg_l1 and reg_entropy must be >= 0, got {reg_l1}, {reg_entropy}.")
        self.model = model
        self.save_hyperparameters(ignore=["model"])
        self.val_mse, self.test_mse = MeanSquaredError(), MeanSquaredError()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_train_batch_start(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        hp, step = self.hparams, self.global_step
        until = hp.grid_update_until if hp.grid_update_until is not None else float("inf")
        if hp.grid_update_every and step < until and step % hp.grid_update_every == 0:
            from actsparse.plugins.kan.layers import update_grids

            update_grids(self.model, batch[0])

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        mse = F.mse_loss(self(x), y)
        loss = mse
        hp = self.hparams
        if hp.reg_l1 or hp.reg_entropy:
            from actsparse.plugins.kan.regularization import kan_regularization

            reg = kan_regularization(self.model, l1=hp.reg_l1, entropy=hp.reg_entropy)
            self.log("train/reg", reg)
            loss = mse + reg
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/rmse", mse.detach().sqrt())
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_mse.update(self(x), y)

    def on_validation_epoch_end(self) -> None:
        mse = self.val_mse.compute()
        self.log("val/loss", mse, prog_bar=True)
        self.log("val/rmse", mse.sqrt())
        self.val_mse.reset()

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.test_mse.update(self(x), y)

    def on_test_epoch_end(self) -> None:
        self.log("test/rmse", self.test_mse.compute().sqrt())
        self.test_mse.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        # every parameter, frozen ones too: SKANTraining unfreezes the selection after phase 1
        params = list(self.parameters())
        if hp.optimizer == "lbfgs":
            tolerance = {} if hp.lbfgs_tolerance is None else {"tolerance_grad": hp.lbfgs_tolerance,
                                                               "tolerance_change": hp.lbfgs_tolerance}
            return torch.optim.LBFGS(params, lr=hp.lr, max_iter=hp.lbfgs_max_iter, history_size=10,
                                     line_search_fn="strong_wolfe", **tolerance)
        cls = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=hp.lr, weight_decay=hp.weight_decay)
