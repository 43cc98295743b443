"""Sentence-embedding distillation: a student encoder learns to reproduce a frozen teacher's
mean-pooled sentence embeddings (for ProSparse on a pretrained encoder: the student is the
ReLU-swapped model, the teacher the original).
"""

from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from actsparse.tasks.lm import warmup_cosine

LOSSES = ("cosine", "mse")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over real tokens (sentence-transformers' pooling): [B, T, d] -> [B, d]."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def encode(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean-pooled last hidden states of a Hugging Face encoder (or any module returning [B, T, d]
    or an object with ``last_hidden_state``)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out
    return mean_pool(hidden, attention_mask)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """``cosine``: mean of 1 - cos(student, teacher); ``mse``: mean squared error of the
    embeddings (all-MiniLM-L6-v2's are compared after L2 normalization, as it is used)."""
    if kind == "cosine":
        return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(F.normalize(student, dim=-1), F.normalize(teacher, dim=-1))
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}.")


class SentenceDistillation(L.LightningModule):
    """Distil a frozen teacher's sentence embeddings into ``student``.

    Batches are ``{"input_ids", "attention_mask"}`` (``actsparse.data.minilm_sentences``). The teacher's
    embedding of a batch comes from ``teacher_targets(batch)`` when given (precomputed once:
    the teacher is frozen and deterministic in eval mode, so many runs share one pass), else
    from ``teacher``. The teacher is kept outside the module tree, so activation sites,
    callbacks (``ActivationSwap``, ``ProSparse``, ``SparsityMonitor``) and checkpoints see the
    student only.

    Logs ``train/loss``, ``train/lr``, ``val/loss`` and ``val/cosine`` (mean cosine to the teacher).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None,
                 teacher_targets: Callable[[dict[str, torch.Tensor], str], torch.Tensor] | None = None,
                 loss: str = "cosine", lr: float = 5e-5, weight_decay: float = 0.01, warmup_steps: int = 10,
                 min_lr_ratio: float = 0.1) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}.")
        if teacher is None and teacher_targets is None:
            raise ValueError("SentenceDistillation needs a teacher module or teacher_targets.")
        self.save_hyperparameters(ignore=["student", "teacher", "teacher_targets"])
        self.student = student
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.__dict__["teacher"] = teacher  # not a submodule: no sites, no parameters, no checkpoint
        self.teacher_targets = teacher_targets
        self.val_loss, self.val_cosine = MeanMetric(), MeanMetric()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return encode(self.student, input_ids, attention_mask)

    def target(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        if self.teacher_targets is not None:
            return self.teacher_targets(batch, split).to(self.device)
        teacher = self.__dict__["teacher"].to(self.device)
        with torch.no_grad():
            return encode(teacher, batch["input_ids"], batch["attention_mask"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = distillation_loss(self(batch["input_ids"], batch["attention_mask"]), self.target(batch, "train"),
                                 self.hparams.loss)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        student, teacher = self(batch["input_ids"], batch["attention_mask"]), self.target(batch, "val")
        self.val_loss.update(distillation_loss(student, teacher, self.hparams.loss), weight=len(student))
        self.val_cosine.update(F.cosine_similarity(student, teacher, dim=-1))
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/cosine", self.val_cosine)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.student.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": hp.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, hp.warmup_steps, total, hp.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
