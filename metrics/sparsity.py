"""torchmetrics classes for activation sparsity and dead neurons, on the functions of
:mod:`actsparse.metrics.functional.sparsity` (its docstring states the one counting rule:
an entry is active when ``|x| > threshold``).

Each metric tracks either one stream of activations (``names=None``: ``update(tensor)``,
``compute()`` returns a tensor) or named streams, one per activation site (``names=[...]``:
``update({name: tensor})`` or ``update(tensor, name=...)``, ``compute()`` returns
``{name: value, ..., "mean": pooled}``, pooled = inactive entries over all entries). Names are
declared up front so every DDP process holds the same states; :meth:`for_model` takes them from
a model's activation sites, selected with ``sites=`` exactly as callbacks and ``record`` select
them (None for all, glob patterns on site names). Counts are sums (``dist_reduce_fx="sum"``), so
values reduce exactly across processes.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn
from torchmetrics import Metric

from actsparse.metrics.functional.sparsity import check_threshold, sparsity_counts
from actsparse.plugins.recording import Recording
from actsparse.plugins.sites import resolve_sites
from actsparse.runtime import all_sum

__all__ = ["ActivationRatio", "ActivationSparsity", "DeadNeuronRate"]

MEAN = "mean"


class ActivationSparsity(Metric):
    """Fraction of inactive entries (``|x| <= threshold``; exact zeros by default).

    Example:
        >>> m = ActivationSparsity()
        >>> m.update(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
        >>> m.compute()
        tensor(0.7500, dtype=torch.float64)
        >>> per_site = ActivationSparsity(["a", "b"])
        >>> per_site.update(torch.tensor([[0.0, 1.0], [0.0, 0.0]]), name="a")
        >>> per_site.update({"b": torch.tensor([1.0, 2.0, 0.0, 3.0])})
        >>> {k: round(float(v), 3) for k, v in per_site.compute().items()}
        {'a': 0.75, 'b': 0.25, 'mean': 0.5}
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, names: Sequence[str] | None = None, threshold: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if names is not None:
            names = [names] if isinstance(names, str) else [str(n) for n in names]
            if not names or len(set(names)) != len(names):
                raise ValueError(f"names must be a non-empty list of distinct stream (site) names, got {names!r}.")
            if MEAN in names:
                raise ValueError(f"{MEAN!r} is the pooled key of the result; rename that stream.")
        self.names = names
        self.threshold = check_threshold(threshold)
        self._index = {name: i for i, name in enumerate(names or [None])}
        n = len(self._index)
        self.add_state("inactive", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("entries", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")

    @classmethod
    def for_model(cls, model: nn.Module, sites: str | Sequence[str] | None = None, **kwargs: Any):
        """One stream per activation site of ``model`` selected by ``sites`` (None: all; glob
        patterns on site names, as everywhere in actsparse)."""
        return cls([s.name for s in resolve_sites(model, sites)], **kwargs)

    @contextlib.contextmanager
    def watch(self, model: nn.Module) -> Iterator["ActivationSparsity"]:
        """Update from every forward of ``model``'s sites: ``with metric.watch(model): model(x)``."""
        recording = Recording(model, [n for n in self._index if n is not None] or None, what=(),
                              observers=[lambda site, x: self.update(x, name=site.name)])
        recording.attach()
        try:
            yield self
        finally:
            recording.detach()

    def _slot(self, name: str | None) -> int:
        if self.names is None:
            if name is not None:
                raise KeyError(f"{type(self).__name__}() tracks one stream; pass names=[...] to track {name!r}.")
            return 0
        if name is None and len(self.names) == 1:
            return 0
        if name not in self._index:
            raise KeyError(f"Unknown stream {name!r}; this metric tracks {self.names}.")
        return self._index[name]

    def _update_one(self, i: int, x: torch.Tensor) -> None:
        if x.numel() == 0:
            raise ValueError(f"{type(self).__name__} got an empty activation tensor.")
        counts = sparsity_counts(x.detach(), self.threshold)
        self.inactive[i] += counts.inactive.to(self.inactive.device)
        self.entries[i] += counts.entries

    def update(self, x: torch.Tensor | Mapping[str, torch.Tensor], name: str | None = None) -> None:
        if isinstance(x, Mapping):
            if self.names is None:
                raise TypeError(f"{type(self).__name__}() without names takes a tensor; pass names=[...] to update with a dict.")
            for key, tensor in x.items():
                self._update_one(self._slot(key), tensor)
        else:
            self._update_one(self._slot(name), x)

    def _fractions(self, inactive: torch.Tensor, entries: torch.Tensor) -> torch.Tensor:
        return inactive / entries

    def compute(self) -> torch.Tensor | dict[str, torch.Tensor]:
        if not bool((self.entries > 0).any()):
            raise RuntimeError(f"{type(self).__name__}.compute() was called before update(): no activations seen yet.")
        return self.value_of(self.inactive, self.entries)

    def totals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the ``(inactive, entries)`` counts per stream, summed over processes (under
        DDP a collective: every process calls it together). The difference of two calls is a
        window of updates; :meth:`value_of` turns it into this metric's value."""
        both = torch.stack([self.inactive, self.entries])  # a new tensor: the states stay untouched
        if self._to_sync:
            both = all_sum(both)
        return both[0], both[1]

    def value_of(self, inactive: torch.Tensor, entries: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """The metric's value for counts per stream (``compute()`` on the accumulated ones)."""
        if self.names is None:
            return self._fractions(inactive[0], entries[0])
        seen = entries > 0
        out = {name: self._fractions(inactive[i], entries[i]) for name, i in self._index.items() if seen[i]}
        out[MEAN] = self._fractions(inactive[seen].sum(), entries[seen].sum())
        return out


class ActivationRatio(ActivationSparsity):
    """Fraction of active entries (``|x| > threshold``): ``1 − ActivationSparsity`` exactly.

    Example:
        >>> m = ActivationRatio()
        >>> m.update(torch.tensor([0.0, 1.0, 2.0, 0.0]))
        >>> m.compute()
        tensor(0.5000, dtype=torch.float64)
    """

    higher_is_better = False

    def _fractions(self, inactive: torch.Tensor, entries: torch.Tensor) -> torch.Tensor:
        return (entries - inactive) / entries


class DeadNeuronRate(ActivationSparsity):
    """Dynamic dead neuron rate (DESIGN §4): the fraction of (sample, neuron) outputs that are
    exactly zero — :class:`ActivationSparsity` at threshold 0 — plus, per stream, which units
    were zero on every row seen (:meth:`dead_neurons`). Rows and units follow
    :func:`~actsparse.metrics.functional.sparsity.as_rows`.

    The per-unit state is sized on a stream's first update: under DDP every process must update
    every stream at least once before a synchronized ``compute()`` (true of any training loop).

    Example:
        >>> metric = DeadNeuronRate()
        >>> metric.update(torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0]]))
        >>> metric.update(torch.tensor([[3.0, 0.0, 0.0]]))
        >>> metric.compute(), metric.dead_neurons()   # 6 zeros of 9; unit 2 never fired
        (tensor(0.6667, dtype=torch.float64), tensor(1))
    """

    higher_is_better = False

    def __init__(self, names: Sequence[str] | None = None, **kwargs: Any) -> None:
        if "threshold" in kwargs:
            raise TypeError("DeadNeuronRate counts exact zeros; use ActivationSparsity(threshold=...) for a threshold.")
        super().__init__(names, 0.0, **kwargs)
        for i in range(len(self._index)):  # per-unit active counts, sized on the first update
            self.add_state(f"unit_active_{i}", torch.zeros(0, dtype=torch.float64), dist_reduce_fx="sum")

    def _update_one(self, i: int, x: torch.Tensor) -> None:
        if x.numel() == 0:
            raise ValueError("DeadNeuronRate got an empty activation tensor.")
        total = sparsity_counts(x.detach(), per_unit=True)
        counts = total.unit_active.to(self.inactive.device)
        seen = getattr(self, f"unit_active_{i}")
        if seen.numel() and seen.numel() != counts.numel():
            raise ValueError(
                f"DeadNeuronRate: stream {list(self._index)[i]!r} has {counts.numel()} units now and had "
                f"{seen.numel()} before; every update of a stream must have the same units (reset() between models)."
            )
        setattr(self, f"unit_active_{i}", counts if not seen.numel() else seen + counts)
        self.inactive[i] += total.inactive.to(self.inactive.device)
        self.entries[i] += total.entries

    def dead_neurons(self) -> torch.Tensor | dict[str, torch.Tensor]:
        """Units zero on every row seen (synchronized over processes): an int64 count, or
        ``{name: count}`` per stream that was updated."""
        if not bool((self.entries > 0).any()):
            raise RuntimeError("DeadNeuronRate.dead_neurons() was called before update(): no activations seen yet.")
        with self.sync_context(should_sync=self._to_sync, should_unsync=self._should_unsync):
            counts = [(getattr(self, f"unit_active_{i}") == 0).sum() for i in range(len(self._index))]
            seen = (self.entries > 0).tolist()
        if self.names is None:
            return counts[0]
        return {name: counts[i] for name, i in self._index.items() if seen[i]}
