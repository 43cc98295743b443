"""Causal language modelling as a LightningModule."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from actsparse.evaluation.lm_loss import logits_of
from actsparse.models.llama import TinyLM


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class CausalLM(L.LightningModule):
    """Next-token cross-entropy on (input, target) batches; AdamW with warm-up + cosine.

    Logs ``train/loss``, ``train/lr``, ``train/tokens`` each step and the DDP-exact
    token-weighted ``val/loss`` and ``val/ppl`` (torchmetrics) each validation.

    ``model`` is any module mapping tokens [B, T] to logits [B, T, V] (a Hugging Face causal LM's
    output object counts: its ``.logits`` are read); when it has a
    ``config_dict()`` (actsparse's ``TinyLM``), the config is saved so
    ``CausalLM.load_from_checkpoint(path)`` rebuilds it.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        model_config: dict[str, Any] | None = None,
        lr: float = 3e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.1,
    ) -> None:
        super().__init__()
        betas = tuple(float(b) for b in betas)  # hparams must be plain types (weights_only loads)
        if model is None:
            if model_config is None:
                raise ValueError("CausalLM needs a `model` or a `model_config` to build a TinyLM from.")
            model = TinyLM(**model_config)
        if model_config is None and hasattr(model, "config_dict"):
            model_config = model.config_dict()
        self.model = model
        self.save_hyperparameters(ignore=["model"])
        self.hparams["model_config"] = model_config
        self.val_loss = MeanMetric()
        self.val_ppl = Perplexity()
        self.tokens_seen = 0

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(tokens))

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = self._loss(self(inputs), targets)
        self.tokens_seen += inputs.numel() * self.trainer.world_size
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        self.log("train/tokens", float(self.tokens_seen))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        logits = self(inputs)
        # Token-weighted means reduce exactly across DDP ranks (unlike a mean of batch means).
        self.val_loss.update(self._loss(logits, targets), weight=targets.numel())
        self.val_ppl.update(logits.float(), targets)
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/ppl", self.val_ppl)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        # nanoGPT convention: decay matrices, not norms, biases or 1-d gains.
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": hp.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, hp.warmup_steps, total, hp.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokens_seen"] = self.tokens_seen

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))
