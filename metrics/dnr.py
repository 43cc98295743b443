"""``DeadNeuronRate``: dynamic dead neuron rate (DESIGN §4) as a torchmetrics ``Metric``.

All states are sums (``dist_reduce_fx="sum"``), so under DDP ``compute()`` gives the exact
rate of all processes' activations and the neurons dead on all of them. The per-neuron
state is sized on the first ``update``: every process must update every site at least once
before a synchronized ``compute()`` (true of any training loop).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torchmetrics import Metric

from actsparse.plugins.recording import as_rows


class DeadNeuronRate(Metric):
    """Fraction of (sample, neuron) activation outputs that are exactly zero, and the number
    of neurons that were zero on every sample seen.

    Args:
        sites: None for one stream of activations (``update(tensor)``); or a list of site
            names, then ``update({name: tensor, ...})`` (any subset of the names per call) and
            the results are per site plus ``mean`` (zeros over entries pooled across sites).

    ``compute()`` returns ``{"dnr": rate, "dead": count}`` for one stream, or
    ``{"dnr/<site>": ..., "dnr/mean": ..., "dead/<site>": ...}`` with sites (the keys the
    :class:`~actsparse.callbacks.dnr.DeadNeuronRate` callback logs). Rows and neurons follow
    :func:`~actsparse.plugins.recording.as_rows` (a CNN output ``[B, C, H, W]`` has ``C*H*W``
    neurons per sample).

    Example:
        >>> metric = DeadNeuronRate()
        >>> metric.update(torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0]]))
        >>> metric.update(torch.tensor([[3.0, 0.0, 0.0]]))
        >>> {k: v.item() for k, v in metric.compute().items()}  # 6 zeros of 9; neuron 2 never fired
        {'dnr': 0.6666666666666666, 'dead': 1}
        >>> per_site = DeadNeuronRate(sites=["fc1", "fc2"])
        >>> per_site.update({"fc1": torch.tensor([[0.0, 1.0]]), "fc2": torch.tensor([[0.0, 0.0, 5.0]])})
        >>> {k: round(v.item(), 3) for k, v in per_site.compute().items()}
        {'dnr/fc1': 0.5, 'dnr/fc2': 0.667, 'dnr/mean': 0.6, 'dead/fc1': 1, 'dead/fc2': 2}
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, sites: Sequence[str] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if sites is not None:
            sites = [str(s) for s in sites]
            if not sites or len(set(sites)) != len(sites):
                raise ValueError(f"sites must be a non-empty list of distinct names, got {sites!r}.")
        self.sites = sites
        n = 1 if sites is None else len(sites)
        self.add_state("zeros", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("elements", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        for i in range(n):  # per-neuron nonzero counts, sized on the first update of each site
            self.add_state(f"nonzero_{i}", default=torch.zeros(0, dtype=torch.float64), dist_reduce_fx="sum")

    def _update_one(self, i: int, name: str, activations: torch.Tensor) -> None:
        if activations.numel() == 0:
            raise ValueError(f"DeadNeuronRate got an empty tensor for {name}.")
        rows = as_rows(activations.detach())
        counts = torch.count_nonzero(rows, dim=0).to(device=self.device, dtype=torch.float64)
        seen = getattr(self, f"nonzero_{i}")
        if seen.numel() and seen.numel() != counts.numel():
            raise ValueError(
                f"DeadNeuronRate: {name} has {counts.numel()} neurons now and had {seen.numel()} before; "
                "every update of a site must have the same neurons (reset() between models)."
            )
        setattr(self, f"nonzero_{i}", counts if not seen.numel() else seen + counts)
        self.zeros[i] += rows.numel() - counts.sum()
        self.elements[i] += rows.numel()

    def update(self, activations: torch.Tensor | Mapping[str, torch.Tensor]) -> None:
        if self.sites is None:
            if not isinstance(activations, torch.Tensor):
                raise TypeError("DeadNeuronRate() without sites takes a tensor; pass sites=[...] to update with a dict.")
            self._update_one(0, "the activations", activations)
            return
        if not isinstance(activations, Mapping):
            raise TypeError(f"DeadNeuronRate(sites={self.sites}) takes a dict {{site: tensor}}, got {type(activations).__name__}.")
        unknown = sorted(set(activations) - set(self.sites))
        if unknown:
            raise KeyError(f"DeadNeuronRate: unknown sites {unknown}; this metric tracks {self.sites}.")
        for i, name in enumerate(self.sites):
            if name in activations:
                self._update_one(i, f"site {name!r}", activations[name])

    def compute(self) -> dict[str, torch.Tensor]:
        if not bool((self.elements > 0).any()):
            raise RuntimeError("DeadNeuronRate.compute() was called before update(): no activations seen yet.")
        dead = [(getattr(self, f"nonzero_{i}") == 0).sum() for i in range(len(self.elements))]
        if self.sites is None:
            return {"dnr": self.zeros[0] / self.elements[0], "dead": dead[0]}
        seen = self.elements > 0
        out = {f"dnr/{name}": self.zeros[i] / self.elements[i] for i, name in enumerate(self.sites) if seen[i]}
        out["dnr/mean"] = self.zeros[seen].sum() / self.elements[seen].sum()
        out.update({f"dead/{name}": dead[i] for i, name in enumerate(self.sites) if seen[i]})
        return out
