"""Classification as a LightningModule (digits MLPs and CNNs, or any ``x -> logits`` module)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from actsparse.models.mlp import build_classifier

OPTIMIZERS = ("adam", "adamw", "sgd")


class Classifier(L.LightningModule):
    """Cross-entropy on ``(x, y)`` batches with Adam, AdamW or SGD (momentum) at a constant LR.

    Logs ``train/loss`` and ``train/acc`` each step, DDP-exact ``val/loss``, ``val/acc`` after
    each validation and ``test/loss``, ``test/acc`` after testing (torchmetrics: sample-weighted
    means and micro accuracy reduce exactly across processes).

    ``model`` is any module mapping inputs to logits ``[B, num_classes]``; actsparse's ``MLP``
    and ``CNN`` save their config so ``Classifier.load_from_checkpoint(path)`` rebuilds them.

    Example:
        >>> from actsparse.models.mlp import MLP
        >>> task = Classifier(MLP(width=16, depth=1), optimizer="sgd", lr=0.1)
        >>> task(torch.randn(4, 64)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        model_config: dict[str, Any] | None = None,
        num_classes: int = 10,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {optimizer!r}; choose from {', '.join(OPTIMIZERS)}.")
        if model is None:
            if model_config is None:
                raise ValueError("Classifier needs a `model` or a `model_config` (from MLP/CNN.config_dict()).")
            model = build_classifier(model_config)
        if model_config is None and hasattr(model, "config_dict"):
            model_config = model.config_dict()
        self.model = model
        self.save_hyperparameters(ignore=["model"])
        self.hparams["model_config"] = model_config
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits.detach(), y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc)
        return loss

    def _evaluate(self, batch, loss_metric: MeanMetric, acc_metric: MulticlassAccuracy, prefix: str) -> None:
        x, y = batch
        logits = self(x)
        loss_metric.update(F.cross_entropy(logits, y), weight=y.numel())
        acc_metric.update(logits, y)
        self.log(f"{prefix}/loss", loss_metric, prog_bar=prefix == "val")
        self.log(f"{prefix}/acc", acc_metric, prog_bar=prefix == "val")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_loss, self.val_acc, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_loss, self.test_acc, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if hp.optimizer == "sgd":
            return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        cls = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=hp.lr, weight_decay=hp.weight_decay)
