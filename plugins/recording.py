"""Record what activation sites produce: raw outputs or streaming statistics with bounded memory.

    with record(model, what=("zero_fraction", "mean_abs")) as rec:
        model(batch)
    rec["blocks.0.ffn"].zero_fraction, rec.zero_fraction()

Hooks see a detached view of each site's tensor, so training (autograd) is untouched; they are
removed when the ``with`` block ends, also on exceptions. Statistics accumulate on the tensor's
device and are read (synchronized) only when asked for.

Rows and units: an FFN tensor ``[..., f]`` has one row per token and ``f`` units (neurons); a
bare activation's output of 4+ dims (a CNN's ``[B, C, H, W]``) has one row per sample and
``C*H*W`` units; 2- and 3-dim outputs are treated like FFN tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from actsparse.metrics.functional.hash_codes import pack_codes, unpack_codes
from actsparse.metrics.functional.sparsity import as_rows, sparsity_counts
from actsparse.plugins.sites import Site, resolve_sites

STATS = ("zero_fraction", "mean_abs", "l1", "neuron_counts", "histogram", "codes", "outputs")
DEFAULT_STATS = ("zero_fraction", "mean_abs", "l1")
Observer = Callable[[Site, torch.Tensor], None]

__all__ = ["DEFAULT_STATS", "STATS", "Recording", "SiteRecord", "as_rows", "pack_codes", "record", "unpack_codes"]


class SiteRecord:
    """What one site produced while recording. Counters are exact; floats are float64 sums."""

    def __init__(
        self,
        site: Site,
        what: Sequence[str],
        max_rows: int | None,
        subsample: float | int | None,
        bins: int,
        hist_range: tuple[float, float],
        generator: torch.Generator,
    ) -> None:
        self.site, self.what = site, frozenset(what)
        self.max_rows, self.subsample = max_rows, subsample
        self.bins, self.hist_range = bins, hist_range
        self._generator = generator
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.units: int | None = None
        self._rows = self._elements = 0
        self._zeros = self._abs_sum = None
        self._neuron_nonzero = None
        self._hist = self._under = self._over = None
        self._codes: list[torch.Tensor] = []
        self._outputs: list[torch.Tensor] = []
        self._stored_rows = 0

    # -- accumulate ----------------------------------------------------------------------------
    def _add(self, name: str, value: torch.Tensor) -> None:
        current = getattr(self, name)
        setattr(self, name, value if current is None else current + value)

    @torch.no_grad()
    def update(self, tensor: torch.Tensor) -> None:
        rows = as_rows(tensor.detach())
        if self.units is not None and rows.shape[1] != self.units:
            raise ValueError(
                f"Site {self.site.name!r} produced {rows.shape[1]} units after {self.units}; "
                "record inputs of one shape per recording (or reset it)."
            )
        self.units = rows.shape[1]
        self.calls += 1
        self._rows += rows.shape[0]  # shapes are known on the host: no device work
        self._elements += rows.numel()
        # These run on every forward during training: the cheapest exact reductions measured
        # on CPU (bench/overhead.py); float32 within a call, float64 across calls. Zeros are
        # counted by the metrics' own rule (sparsity_counts), in one pass with the per-unit counts.
        if self.what & {"zero_fraction", "neuron_counts"}:
            counts = sparsity_counts(rows, per_unit="neuron_counts" in self.what)
            self._add("_zeros", counts.inactive)
            if counts.unit_active is not None:
                self._add("_neuron_nonzero", counts.unit_active)
        if self.what & {"mean_abs", "l1"}:
            self._add("_abs_sum", rows.abs().sum(dtype=torch.float32).double())
        if "histogram" in self.what:
            lo, hi = self.hist_range
            values = rows.float()
            self._add("_hist", torch.histc(values, self.bins, lo, hi).to(torch.int64))
            self._add("_under", (values < lo).sum())
            self._add("_over", (values > hi).sum())
        if self.what & {"codes", "outputs"}:
            kept = self._keep(rows)
            if "codes" in self.what:
                self._codes.append(pack_codes(kept).cpu())
            if "outputs" in self.what:
                self._outputs.append(kept.cpu().clone())
            self._stored_rows += kept.shape[0]

    def _keep(self, rows: torch.Tensor) -> torch.Tensor:
        n = rows.shape[0]
        if self.subsample is not None:
            k = max(1, round(n * self.subsample)) if isinstance(self.subsample, float) else min(n, self.subsample)
            if k < n:
                idx = torch.randperm(n, generator=self._generator)[:k].sort().values
                rows = rows[idx.to(rows.device)]
        if self.max_rows is not None:
            rows = rows[: max(0, self.max_rows - self._stored_rows)]
        return rows

    # -- read ----------------------------------------------------------------------------------
    def _require(self, stat: str) -> None:
        if stat not in self.what:
            raise KeyError(f"{stat!r} was not recorded; pass what=(..., {stat!r}) to record().")
        if self.calls == 0:
            raise RuntimeError(f"Site {self.site.name!r} has not run since recording started.")

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def elements(self) -> int:
        return self._elements

    @property
    def zeros(self) -> int:
        self._require("zero_fraction")
        return round(float(self._zeros))

    @property
    def zero_fraction(self) -> float:
        """Fraction of entries exactly zero (activation sparsity; the rule of
        :mod:`actsparse.metrics.functional.sparsity`)."""
        return self.zeros / self.elements

    @property
    def mean_abs(self) -> float:
        self._require("mean_abs")
        return float(self._abs_sum) / self.elements

    @property
    def l1(self) -> float:
        """Mean L1 norm per row (per token for FFNs, per sample for CNN activations)."""
        self._require("l1")
        return float(self._abs_sum) / self.rows

    @property
    def neuron_counts(self) -> torch.Tensor:
        """Per unit, how many rows had it nonzero (int64 ``[units]``)."""
        self._require("neuron_counts")
        return self._neuron_nonzero.round().to(torch.int64).cpu()

    @property
    def histogram(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(counts [bins], edges [bins + 1])`` over ``hist_range``; see ``underflow``/``overflow``."""
        self._require("histogram")
        lo, hi = self.hist_range
        return self._hist.cpu(), torch.linspace(lo, hi, self.bins + 1)

    @property
    def underflow(self) -> int:
        self._require("histogram")
        return int(self._under)

    @property
    def overflow(self) -> int:
        self._require("histogram")
        return int(self._over)

    @property
    def codes(self) -> torch.Tensor:
        """Packed binary codes ``1[x > 0]``: uint8 ``[rows kept, ceil(units / 8)]``."""
        self._require("codes")
        return torch.cat(self._codes)

    @property
    def outputs(self) -> torch.Tensor:
        """The kept rows of the site's tensor, ``[rows kept, units]`` on the CPU."""
        self._require("outputs")
        return torch.cat(self._outputs)


class Recording(Mapping[str, SiteRecord]):
    """Per-site records of a model's activations; a mapping from site name to :class:`SiteRecord`.

    ``observers`` are called as ``observer(site, tensor)`` on every recorded forward (the way
    metrics such as :class:`~actsparse.metrics.ActivationSparsity` are fed from a recording).

    Use :func:`record` for a ``with`` block; callbacks that record across many steps call
    :meth:`attach` / :meth:`detach` themselves and toggle :attr:`enabled`.
    """

    def __init__(
        self,
        model: nn.Module,
        sites: Iterable[Site] | str | Sequence[str] | None = None,
        what: str | Sequence[str] = DEFAULT_STATS,
        max_rows: int | None = None,
        subsample: float | int | None = None,
        bins: int = 100,
        hist_range: tuple[float, float] = (-4.0, 4.0),
        seed: int = 0,
        observers: Sequence[Observer] = (),
    ) -> None:
        what = (what,) if isinstance(what, str) else tuple(what)
        unknown = sorted(set(what) - set(STATS))
        if unknown:
            raise ValueError(f"Unknown statistics {unknown}; choose from {', '.join(STATS)}.")
        if subsample is not None and not (
            (isinstance(subsample, float) and 0 < subsample <= 1) or (isinstance(subsample, int) and subsample > 0)
        ):
            raise ValueError(f"subsample must be a fraction in (0, 1] or a positive row count, got {subsample!r}.")
        self.sites = resolve_sites(model, sites)
        generator = torch.Generator().manual_seed(seed)
        self.records = {
            s.name: SiteRecord(s, what, max_rows, subsample, bins, tuple(hist_range), generator) for s in self.sites
        }
        self.observers = list(observers)
        self.enabled = True
        self._handles: list = []

    def _hook(self, site: Site, tensor: torch.Tensor) -> None:
        if self.enabled:
            self.records[site.name].update(tensor)
            for observe in self.observers:
                observe(site, tensor.detach())

    def attach(self) -> "Recording":
        if not self._handles:
            self._handles = [s.register_hook(self._hook) for s in self.sites]
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def reset(self) -> None:
        for rec in self.records.values():
            rec.reset()

    def __getitem__(self, name: str) -> SiteRecord:
        return self.records[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def zero_fraction(self) -> float:
        """Overall sparsity: zeros over entries, pooled across all sites (DESIGN §4)."""
        ran = [r for r in self.records.values() if r.calls]
        if not ran:
            raise RuntimeError("No site has run since recording started.")
        return sum(r.zeros for r in ran) / sum(r.elements for r in ran)

    def summary(self) -> dict[str, dict[str, float]]:
        """The scalar statistics of every site that ran."""
        scalars = [s for s in ("zero_fraction", "mean_abs", "l1") if s in next(iter(self.records.values())).what]
        return {name: {s: getattr(r, s) for s in scalars} for name, r in self.records.items() if r.calls}


@contextlib.contextmanager
def record(
    model: nn.Module,
    sites: Iterable[Site] | str | Sequence[str] | None = None,
    what: str | Sequence[str] = DEFAULT_STATS,
    **options,
) -> Iterator[Recording]:
    """Hook the sites of ``model`` for the duration of a ``with`` block.

    Args:
        sites: None (all), glob pattern(s) on site names, or :class:`Site` objects.
        what: statistics to keep, from :data:`STATS`: ``zero_fraction``, ``mean_abs``, ``l1``,
            ``neuron_counts``, ``histogram`` (``bins``, ``hist_range``), ``codes`` (bit-packed
            ``1[x > 0]``), ``outputs`` (raw rows). The last two grow with the data: bound them
            with ``max_rows`` and/or ``subsample`` (a fraction or a row count per call).

    Example:
        >>> import torch
        >>> mlp = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> with record(mlp, what=("zero_fraction", "outputs")) as rec:
        ...     _ = mlp(torch.randn(5, 3))
        >>> rec["1"].outputs.shape, 0 <= rec["1"].zero_fraction <= 1
        (torch.Size([5, 8]), True)
    """
    recording = Recording(model, sites, what, **options)
    recording.attach()
    try:
        yield recording
    finally:
        recording.detach()
