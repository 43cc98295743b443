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
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[nn.Module, Any, int], "tuple[torch.Tensor, int]"]


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _logits(out: Any) -> torch.Tensor:
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
    logits = _logits(out)
    if shift:
        logits = logits[:, :-1]
    tgt = targets.repeat(repeats, *([1] * (targets.dim() - 1)))
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1),
                             ignore_index=-100, reduction="none")
    losses = losses.double().view(repeats, -1).sum(1)
    return losses, int((targets != -100).sum())
