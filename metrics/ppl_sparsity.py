"""``PPLSparsity``: PPL-p% sparsity (Sparsing Law, DESIGN §4) as a torchmetrics ``Metric``, on the
search procedure :func:`actsparse.evaluation.ppl_p_sparsity`."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn
from torchmetrics import Metric

from actsparse.evaluation.ppl_sparsity import PPLSparsityResult, ppl_p_sparsity

__all__ = ["PPLSparsity"]


class PPLSparsity(Metric):
    """PPL-p% sparsity (Sparsing Law): the fraction of neurons dropped at the largest CETT
    target whose perplexity stays within ``1 + p/100`` of the dense model's.

    ``update(model, dataloader)`` runs the search
    (:func:`~actsparse.evaluation.ppl_p_sparsity`) and adds this process's
    sums (dropped neurons, entries, dense and truncated loss sums, tokens); under DDP every
    process calls it with its shard (the search synchronizes its decisions), and ``compute()``
    reduces the sums. Several updates pool their data (e.g. several evaluation sets).
    ``compute()`` returns a dict: ``sparsity`` (the midpoint of the brackets' ends, as the search
    returns it), ``cett`` (token-weighted), ``ppl_dense``, ``ppl_truncated`` (at the accepted
    ends); ``last`` holds the last :class:`PPLSparsityResult`. ``**options`` go to
    the search (defaults: thresholds exact on all real tokens, CETT bracket ``tol=1e-3``, sparsity
    within ``sparsity_tol=1e-4`` of the boundary's; pads are skipped through ``mask_fn``).

    Example:
        >>> from actsparse.models import TinyLM
        >>> _ = torch.manual_seed(0)
        >>> lm = TinyLM(d_model=32, n_layers=2, n_heads=2, activation="relu")
        >>> metric = PPLSparsity(p=1.0)
        >>> metric.update(lm, [torch.randint(0, 256, (4, 33)) for _ in range(2)])
        >>> out = metric.compute()
        >>> bool(out["ppl_truncated"] <= 1.01 * out["ppl_dense"]), sorted(out)
        (True, ['cett', 'ppl_dense', 'ppl_truncated', 'sparsity'])
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, p: float = 1.0, **options: Any) -> None:
        metric_kwargs = {k: options.pop(k) for k in list(options) if k in _METRIC_KWARGS}
        super().__init__(**metric_kwargs)
        if not p > 0:
            raise ValueError(f"p must be > 0 (the allowed perplexity increase in percent), got {p}.")
        self.p, self.options = float(p), options
        self.last: PPLSparsityResult | None = None
        for name in ("dropped", "dropped_rejected", "entries", "dense_loss_sum", "truncated_loss_sum", "tokens",
                     "cett_sum"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, model: nn.Module, dataloader: Iterable) -> None:
        r = ppl_p_sparsity(model, dataloader, self.p, **self.options)
        self.last = r
        loc = r.local
        self.dropped += loc["dropped"]
        self.entries += loc["entries"]
        self.dropped_rejected += loc["dropped_rejected"]
        self.dense_loss_sum += loc["dense_loss_sum"]
        self.truncated_loss_sum += loc["truncated_loss_sum"]
        self.tokens += loc["tokens"]
        self.cett_sum += r.cett * loc["tokens"]

    def compute(self) -> dict[str, torch.Tensor]:
        if float(self.tokens) == 0:
            raise RuntimeError("PPLSparsity.compute() before any update(model, dataloader).")
        return {
            "sparsity": (self.dropped + self.dropped_rejected) / (2 * self.entries),  # both ends count the same entries
            "cett": self.cett_sum / self.tokens,
            "ppl_dense": torch.exp(self.dense_loss_sum / self.tokens),
            "ppl_truncated": torch.exp(self.truncated_loss_sum / self.tokens),
        }


_METRIC_KWARGS = {"compute_on_cpu", "dist_sync_on_step", "process_group", "dist_sync_fn", "distributed_available_fn",
                  "sync_on_compute", "compute_with_cache"}
