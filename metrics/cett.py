"""torchmetrics classes for activation sparsity and PPL-p% sparsity (DESIGN §3–4).

- :class:`ActivationSparsity` — fraction of zero (or weak) entries per site and pooled
  (``mean``); :class:`ActivationRatio` is its complement (fraction of active neurons).
- :class:`PPLSparsity` — PPL-p% sparsity of a model on evaluation data
  (:func:`~actsparse.metrics.functional.ppl_sparsity.ppl_p_sparsity`).

All states are sums (``dist_reduce_fx="sum"``), so values reduce exactly across DDP processes.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn
from torchmetrics import Metric

from actsparse.metrics.functional.ppl_sparsity import PPLSparsityResult, ppl_p_sparsity

__all__ = ["ActivationRatio", "ActivationSparsity", "PPLSparsity"]


class ActivationSparsity(Metric):
    """Fraction of entries of site tensors that are zero (``|x| <= threshold`` when a threshold
    is given), per site and pooled over all sites (zeros over entries, DESIGN §4).

    ``update(tensor, site="name")`` or ``update({"name": tensor, ...})``; ``compute()`` returns
    ``{site: value, ..., "mean": pooled}``. Sites are declared up front so every process holds
    the same states.

    Example:
        >>> m = ActivationSparsity(["a", "b"])
        >>> m.update(torch.tensor([[0.0, 1.0], [0.0, 0.0]]), site="a")
        >>> m.update({"b": torch.tensor([1.0, 2.0, 0.0, 3.0])})
        >>> {k: round(float(v), 3) for k, v in m.compute().items()}
        {'a': 0.75, 'b': 0.25, 'mean': 0.5}
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, sites: Sequence[str], threshold: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        sites = [sites] if isinstance(sites, str) else list(sites)
        if not sites or len(set(sites)) != len(sites):
            raise ValueError(f"sites must be a non-empty list of distinct site names, got {sites!r}.")
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}.")
        self.sites, self.threshold = sites, float(threshold)
        self._index = {name: i for i, name in enumerate(sites)}
        self.add_state("zeros", torch.zeros(len(sites), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("entries", torch.zeros(len(sites), dtype=torch.float64), dist_reduce_fx="sum")

    @classmethod
    def for_model(cls, model: nn.Module, sites=None, **kwargs: Any) -> "ActivationSparsity":
        """One entry per activation site of ``model`` (see :func:`actsparse.plugins.find_sites`)."""
        from actsparse.plugins.sites import resolve_sites

        return cls([s.name for s in resolve_sites(model, sites)], **kwargs)

    def watch(self, model: nn.Module):
        """Update from every forward of ``model``'s sites: ``with metric.watch(model): model(x)``."""
        import contextlib

        from actsparse.plugins.sites import resolve_sites

        sites = [s for s in resolve_sites(model, None) if s.name in self._index]

        @contextlib.contextmanager
        def ctx():
            handles = [s.register_hook(lambda site, x: self.update(x.detach(), site=site.name)) for s in sites]
            try:
                yield self
            finally:
                for h in handles:
                    h.remove()

        return ctx()

    def update(self, x: torch.Tensor | dict[str, torch.Tensor], site: str | None = None) -> None:
        items = x.items() if isinstance(x, dict) else [(site, x)]
        for name, tensor in items:
            if name is None and len(self.sites) == 1:
                name = self.sites[0]
            if name not in self._index:
                raise KeyError(f"Unknown site {name!r}; this metric tracks {self.sites}.")
            i = self._index[name]
            self.zeros[i] += (tensor.abs() <= self.threshold).sum().to(torch.float64)
            self.entries[i] += float(tensor.numel())

    def _values(self) -> torch.Tensor:
        return self.zeros / self.entries

    def compute(self) -> dict[str, torch.Tensor]:
        if not bool((self.entries > 0).any()):
            raise RuntimeError(f"{type(self).__name__}.compute() before any update().")
        values = self._values()
        out = {name: values[i] for name, i in self._index.items() if self.entries[i] > 0}
        out["mean"] = self._pooled()
        return out

    def _pooled(self) -> torch.Tensor:
        return self.zeros.sum() / self.entries.sum()


class ActivationRatio(ActivationSparsity):
    """Fraction of active (nonzero) entries: ``1 − ActivationSparsity`` per site and pooled.

    Example:
        >>> m = ActivationRatio(["ffn"])
        >>> m.update(torch.tensor([0.0, 1.0, 2.0, 0.0]))
        >>> float(m.compute()["mean"])
        0.5
    """

    higher_is_better = False

    def _values(self) -> torch.Tensor:
        return 1 - self.zeros / self.entries

    def _pooled(self) -> torch.Tensor:
        return 1 - self.zeros.sum() / self.entries.sum()


class PPLSparsity(Metric):
    """PPL-p% sparsity (Sparsing Law): the fraction of neurons dropped at the largest CETT
    target whose perplexity stays within ``1 + p/100`` of the dense model's.

    ``update(model, dataloader)`` runs the search
    (:func:`~actsparse.metrics.functional.ppl_sparsity.ppl_p_sparsity`) and adds this process's
    sums (dropped neurons, entries, dense and truncated loss sums, tokens); under DDP every
    process calls it with its shard (the search synchronizes its decisions), and ``compute()``
    reduces the sums. Several updates pool their data (e.g. several evaluation sets).
    ``compute()`` returns a dict: ``sparsity``, ``cett`` (token-weighted), ``ppl_dense``,
    ``ppl_truncated``; ``last`` holds the last :class:`PPLSparsityResult`.

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
        for name in ("dropped", "entries", "dense_loss_sum", "truncated_loss_sum", "tokens", "cett_sum"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, model: nn.Module, dataloader: Iterable) -> None:
        r = ppl_p_sparsity(model, dataloader, self.p, **self.options)
        self.last = r
        loc = r.local
        self.dropped += loc["dropped"]
        self.entries += loc["entries"]
        self.dense_loss_sum += loc["dense_loss_sum"]
        self.truncated_loss_sum += loc["truncated_loss_sum"]
        self.tokens += loc["tokens"]
        self.cett_sum += r.cett * loc["tokens"]

    def compute(self) -> dict[str, torch.Tensor]:
        if float(self.tokens) == 0:
            raise RuntimeError("PPLSparsity.compute() before any update(model, dataloader).")
        return {
            "sparsity": self.dropped / self.entries,
            "cett": self.cett_sum / self.tokens,
            "ppl_dense": torch.exp(self.dense_loss_sum / self.tokens),
            "ppl_truncated": torch.exp(self.truncated_loss_sum / self.tokens),
        }


_METRIC_KWARGS = {"compute_on_cpu", "dist_sync_on_step", "process_group", "dist_sync_fn", "distributed_available_fn",
                  "sync_on_compute", "compute_with_cache"}
