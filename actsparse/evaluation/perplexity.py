"""Perplexity of a causal LM on held-out batches, with the FFN activation sparsity of the same pass.

Training-free baselines (CATS, TEAL), ProSparse and a dense model are compared by the pair
(perplexity, sparsity) measured on the same tokens; one pass gives both. The loss is
:func:`~actsparse.evaluation.lm_loss.causal_lm_loss` (any batch layout it reads; Hugging Face
models included), token-weighted over all batches: ``ppl = exp(Σ loss / Σ tokens)``. Sparsity is
the fraction of zeros of every site's tensor (``x1`` of FFN sites), pooled over sites and tokens,
as :func:`actsparse.plugins.record` counts it (the ProSparse measure); windows are unpadded here,
so every position is a real token.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import nn

from actsparse.evaluation.lm_loss import LossFn, causal_lm_loss
from actsparse.plugins.recording import record
from actsparse.plugins.sites import Site

__all__ = ["PerplexityResult", "perplexity"]


@dataclass
class PerplexityResult:
    """``loss`` in nats per scored token; ``sparsity`` pooled over sites (None when not measured)."""

    loss: float
    tokens: int
    sparsity: float | None = None
    site_sparsity: dict[str, float] = field(default_factory=dict)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


@torch.no_grad()
def perplexity(
    model: nn.Module,
    batches: Iterable,
    *,
    loss_fn: LossFn | None = None,
    max_batches: int | None = None,
    sparsity: bool = True,
    sites: Sequence[Site] | str | Sequence[str] | None = None,
) -> PerplexityResult:
    """Token-weighted perplexity of ``model`` on ``batches`` (eval mode, restored after).

    Args:
        loss_fn: ``(model, batch, repeats) -> (loss_sum [repeats], tokens)``; default
            :func:`causal_lm_loss`.
        sparsity: also record the zero fraction of the selected ``sites`` (all by default).

    Example:
        >>> from actsparse.models import TinyLM
        >>> lm = TinyLM(d_model=16, n_layers=1, n_heads=2)
        >>> x = torch.randint(0, 256, (2, 9))
        >>> r = perplexity(lm, [(x[:, :-1], x[:, 1:])])
        >>> r.tokens, 0 <= r.sparsity < 1, r.perplexity > 1
        (16, True, True)
    """
    loss_fn = loss_fn or causal_lm_loss
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        with record(model, sites, what="zero_fraction") if sparsity else contextlib.nullcontext() as rec:
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                loss_sum, n = loss_fn(model, batch, 1)
                total += float(loss_sum[0])
                tokens += n
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("perplexity() scored no tokens: the batches are empty (or every target is -100).")
    result = PerplexityResult(total / tokens, tokens)
    if rec is not None:
        result.sparsity = rec.zero_fraction()
        result.site_sparsity = {name: r.zero_fraction for name, r in rec.items() if r.calls}
    return result

