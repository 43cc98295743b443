"""Distillation: continued training that also matches a frozen teacher's next-token distribution.

ProSparse trains with the plain LM loss (the paper); after the ReLU swap the model starts far from
what it was (SmolLM2-135M: perplexity 19 -> ~5,000), and a frozen copy of the original SiLU model
is a denser signal than one-hot next tokens. This callback is that option, for any task whose
``forward`` returns logits (``CausalLM``):

    actsparse-train experiment=smollm2_prosparse callbacks=prosparse \\
        +callbacks.distill._target_=actsparse.callbacks.smollm2_distillation.Distillation \\
        '+callbacks.distill.teacher=${model}' +callbacks.distill.weight=1.0
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from actsparse.evaluation.lm_loss import logits_of


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) || softmax(student/T))``, averaged over positions (Hinton et al.:
    the T² keeps gradient sizes comparable across temperatures)."""
    t = float(temperature)
    s = F.log_softmax(student.float().flatten(0, -2) / t, -1)
    p = F.log_softmax(teacher.float().flatten(0, -2) / t, -1)
    return F.kl_div(s, p, log_target=True, reduction="batchmean") * t * t


class Distillation(Callback):
    """Adds ``weight · distillation_loss(student, teacher)`` to each training step's loss.

    The teacher (a module mapping the batch's inputs to logits or a Hugging Face output; e.g. the
    same ``model:`` config, which loads the pretrained SiLU model) is frozen and kept in eval mode.
    Mechanism: a forward hook keeps the task's training logits; ``on_before_backward`` backpropagates
    the distillation term (divided by ``accumulate_grad_batches``, as Lightning divides the loss)
    into the same graph before Lightning's own backward, so the gradients are those of
    ``loss + weight · KL``. Logs ``distill/kl``. Not for ``16-mixed`` (its loss scaling is not applied).
    """

    def __init__(self, teacher: nn.Module, weight: float = 1.0, temperature: float = 1.0) -> None:
        if not weight > 0 or not temperature > 0:
            raise ValueError(f"weight and temperature must be > 0, got {weight}, {temperature}.")
        self.teacher, self.weight, self.temperature = teacher, float(weight), float(temperature)
        self._student: torch.Tensor | None = None
        self._target: torch.Tensor | None = None
        self._hook = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.teacher.eval().requires_grad_(False)

        def keep(module, args, out):
            if module.training and torch.is_grad_enabled():
                self._student = logits_of(out)

        self._hook = pl_module.register_forward_hook(keep)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        self.teacher.to(pl_module.device)
        with torch.no_grad():
            self._target = logits_of(self.teacher(inputs.to(pl_module.device)))
        self._student = None

    @override
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if self._student is None or self._target is None:
            raise RuntimeError("Distillation saw no training forward of the task before its backward.")
        kl = distillation_loss(self._student, self._target, self.temperature)
        (self.weight * kl / trainer.accumulate_grad_batches).backward(retain_graph=True)
        pl_module.log("distill/kl", kl.detach())
        self._student = self._target = None
