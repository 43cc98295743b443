"""Token-level causal-LM loss for any batch layout, with a batch replicated K times.

The PPL-p% search (:mod:`actsparse.evaluation.ppl_sparsity`) evaluates several
truncation settings in one forward by replicating a batch; a *loss function* there has the
signature ``loss_fn(model, batch, repeats) -> (loss_sum [repeats], tokens)``: the summed
next-token cross-entropy of each replica (float64) and the number of scored tokens of one replica.
:func:`causal_lm_loss` understands three layouts:

- ``(inputs, targets)`` (actsparse's ``TextDataModule``): targets are already shifted;
- a dict with ``input_ids`` (optional ``attention_mask``, ``labels``; Hugging Face style):
  labels default to ``input_ids``, shifted by one; ``-100`` and masked positions are not scored;
- a bare ``[B, T]`` token tensor: shifted by one.

The model's output may be logits, a tuple whose first item is the logits, or an object with
``.logits`` (Hugging Face ``CausalLMOutput``).

**Padding.** :func:`batch_mask` says which positions of a batch are real tokens, so that
procedures reading FFN activations (PPL-p% calibration and dropped-neuron counts) skip pads:
a dict batch's ``attention_mask``; for ``(inputs, targets)`` (actsparse's ``TinyLM``, which takes
no mask), pads are the positions whose target is ``-100`` — pad on the right (the model is causal,
so real positions never see the pads) and set their targets to ``-100``. A bare token tensor has
no pads.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[nn.Module, Any, int], "tuple[torch.Tensor, int]"]
MaskFn = Callable[[Any], "torch.Tensor | None"]

__all__ = ["batch_mask", "causal_lm_loss"]


def batch_mask(batch: Any) -> torch.Tensor | None:
    """Bool ``[B, T]`` mask of the real (non-pad) positions of ``batch``, or None when all are real.

    A dict's ``attention_mask``; for ``(inputs, targets)``, ``targets != -100`` (when any target
    is ``-100``); None for a bare token tensor or a dict without ``attention_mask``.

    Example:
        >>> x = torch.tensor([[5, 6, 7], [5, 0, 0]])
        >>> y = torch.tensor([[6, 7, 8], [6, -100, -100]])
        >>> batch_mask((x, y))
        tensor([[ True,  True,  True],
                [ True, False, False]])
        >>> batch_mask({"input_ids": x, "attention_mask": torch.tensor([[1, 1, 1], [1, 0, 0]])}).sum().item()
        4
    """
    if isinstance(batch, dict):
        mask = batch.get("attention_mask")
        return None if mask is None else mask.bool()
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor):
        targets = batch[1]
        if targets.dtype in (torch.long, torch.int, torch.int64, torch.int32) and bool((targets == -100).any()):
            return targets != -100
    return None


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def logits_of(out: Any) -> torch.Tensor:
    """The logits of a language model's output: a tensor, a Hugging Face output's ``.logits``, or
    the first element of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(
        f"Cannot read logits from a model output of type {type(out).__name__}; pass "
        "loss_fn=(model, batch, repeats) -> (loss_sum [repeats], tokens) for this model."
    )


def causal_lm_loss(model: nn.Module, batch: Any, repeats: int = 1) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy per replica (float64 ``[repeats]``) and scored tokens per replica.

    Example:
        >>> from actsparse.models import TinyLM
        >>> lm = TinyLM(d_model=16, n_layers=1, n_heads=2)
        >>> x = torch.randint(0, 256, (2, 9))
        >>> loss_sum, n = causal_lm_loss(lm, (x[:, :-1], x[:, 1:]), repeats=3)
        >>> loss_sum.shape, n, bool(torch.allclose(loss_sum, loss_sum[0]))
        (torch.Size([3]), 16, True)
    """
    device = _device(model)
    kwargs: dict[str, torch.Tensor] = {}
    if isinstance(batch, dict):
        if "input_ids" not in batch:
            raise KeyError(f"A dict batch needs 'input_ids' (got keys {sorted(batch)}); or pass loss_fn=.")
        inputs = batch["input_ids"].to(device)
        labels = batch.get("labels", batch["input_ids"]).to(device).clone()
        mask = batch.get("attention_mask")
        if mask is not None:
            mask = mask.to(device)
            labels = labels.masked_fill(mask == 0, -100)
            kwargs["attention_mask"] = mask.repeat(repeats, *([1] * (mask.dim() - 1)))
        targets, shift = labels[:, 1:], True
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, targets, shift = batch[0].to(device), batch[1].to(device), False
    elif isinstance(batch, torch.Tensor):
        inputs = batch.to(device)
        targets, shift = inputs[:, 1:], True
    else:
        raise TypeError(
            f"Unknown batch layout {type(batch).__name__}; use (inputs, targets), a dict with input_ids, "
            "a token tensor, or pass loss_fn=(model, batch, repeats) -> (loss_sum [repeats], tokens)."
        )
    big = inputs.repeat(repeats, *([1] * (inputs.dim() - 1)))
    out = model(input_ids=big, **kwargs) if isinstance(batch, dict) else model(big)
    logits = logits_of(out)
    if shift:
        logits = logits[:, :-1]
    tgt = targets.repeat(repeats, *([1] * (targets.dim() - 1)))
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1),
                             ignore_index=-100, reduction="none")
    losses = losses.double().view(repeats, -1).sum(1)
    return losses, int((targets != -100).sum())
