"""Training-free activation sparsity: CATS and TEAL, calibrated per FFN site on training text.

What users try before training a model sparse (ProSparse is compared against them at equal FFN
sparsity). Both zero small magnitudes at thresholds taken from the dense model's activations on
calibration text; the rule is actsparse's one counting rule, ``active ⇔ |x| > t``
(:mod:`actsparse.metrics.functional.sparsity`).

**CATS** (Lee et al. 2024, "CATS: Contextually-Aware Thresholding for Sparsity in Large Language
Models", COLM 2024; reference code ScalingIntelligence/CATS, ``SparseSiLU`` and ``get_threshold``):
per layer, ``t`` is the ``p``-th percentile of ``|SiLU(x W_gateᵀ)|`` on calibration text and the
activation becomes ``s = SiLU(z)·1[|SiLU(z)| > t]`` (:class:`CATSActivation`, installed in the
site's activation slot), so only active neurons' up/down rows are needed.

**TEAL** (Liu et al. 2024, "Training-Free Activation Sparsity in Large Language Models", ICLR
2025; reference code FasterDecoding/TEAL, ``teal/mlp.py`` and ``SparsifyFn``): magnitude sparsity
of the hidden states entering each projection: ``x·1[|x| > t]``. In the FFN: the input of gate
and up (one threshold, one distribution ``h1``) and the input of down (``h2``, which is ``x1``).
Implemented here: TEAL's *uniform* baseline, the same target sparsity at every projection,
FFN projections only (the paper also sparsifies attention's q/k/v/o, and its greedy block-wise
allocation of per-projection sparsities is not implemented). The sparsifiers run as forward
pre-hooks on the projections (:class:`MagnitudeSparsifier`), so weights, module tree and
``state_dict`` keys stay as they were.

Both convert to fast inference layers with :func:`~actsparse.plugins.sparse_ffn.convert_to_sparse`:
a CATS site becomes a ``SparseFFN(activation="cats")`` (up/down rows of dropped neurons skipped), a
TEAL site a :class:`~actsparse.plugins.sparse_ffn_teal.TealFFN` (the weight rows of zeroed inputs
skipped in gate/up, and of zeroed ``x1`` entries in down; :func:`teal_thresholds` is what it reads).

Both follow their papers' calibration: one pass of the *dense* model; thresholds are exact
empirical quantiles of a bounded random sample of the magnitudes (the papers read them from
histograms; TEAL's ``icdf(0.5 + s/2)`` of a signed, symmetric histogram is the ``s``-quantile of
``|x|``). Later layers see already-sparsified inputs at inference, so the measured sparsity can
differ slightly from the target: report the measured one
(:func:`actsparse.evaluation.perplexity.perplexity` measures it). Every token is sparsified,
prefill included (TEAL's evaluation code leaves the first half of each sequence dense).

    samples = collect_cats(model, calibration_batches)     # one dense pass
    for s in (0.5, 0.7, 0.8, 0.9):
        with install_cats(model, samples.thresholds(s)):   # removed on exit: the model is as before
            ...evaluate...
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from actsparse.metrics.functional.sparsity import active_mask, as_rows, sparsity_counts
from actsparse.plugins.sites import Site, ffn_sites, resolve_sites

__all__ = [
    "CATSActivation",
    "MagnitudeSamples",
    "MagnitudeSparsifier",
    "TrainingFree",
    "calibrate_cats",
    "calibrate_teal",
    "collect_cats",
    "collect_teal",
    "install_cats",
    "install_teal",
    "teal_thresholds",
    "zero_small",
]

CATS_POINTS, TEAL_POINTS = ("activation",), ("input", "down")
# Where install_teal leaves a site's thresholds: on the FFN's owner module, so that conversion to the
# sparse FFN finds them, also in a deep copy of the model (convert_to_sparse(..., inplace=False)).
TEAL_ATTRIBUTE = "_actsparse_teal_thresholds"


def zero_small(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """``x·1[|x| > threshold]`` with exact zeros (also for NaN): the rule of CATS and TEAL here, and of
    the TEAL layers conversion builds (:mod:`actsparse.plugins.sparse_ffn_teal`).

    Example:
        >>> zero_small(torch.tensor([-2.0, 0.5, float("nan"), 0.7]), 0.5)
        tensor([-2.0000,  0.0000,  0.0000,  0.7000])
    """
    # `where` rather than a multiply, so that -inf/nan below the threshold become exact zeros.
    return torch.where(active_mask(x, threshold), x, torch.zeros((), dtype=x.dtype, device=x.device))


class CATSActivation(nn.Module):
    """CATS: ``s = a·1[|a| > threshold]`` with ``a = base(z)`` (the site's own activation, SiLU in LLaMA).

    Example:
        >>> CATSActivation(0.1)(torch.tensor([-3.0, -0.2, 0.1, 1.0]))  # SiLU: -0.142, -0.090, 0.052, 0.731
        tensor([-0.1423,  0.0000,  0.0000,  0.7311])
    """

    def __init__(self, threshold: float, base: nn.Module | None = None) -> None:
        super().__init__()
        self.threshold = float(threshold)
        # Kept outside the module tree: activations are leaves to find_sites' structure probe, and
        # remove() puts this very module back in the site's slot.
        object.__setattr__(self, "base", base if base is not None else nn.SiLU())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return zero_small(self.base(z), self.threshold)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold:.6g}, base={self.base!r}"


class MagnitudeSparsifier(nn.Module):
    """TEAL: ``x·1[|x| > threshold]``; with ``count``, counts the zeros it outputs (``zero_fraction``)."""

    def __init__(self, threshold: float, count: bool = True) -> None:
        super().__init__()
        self.threshold, self.count = float(threshold), count
        self.reset()

    def reset(self) -> None:
        self.zeros: torch.Tensor | float = 0.0
        self.elements = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = zero_small(x, self.threshold)
        if not self.count:
            return out
        counts = sparsity_counts(out.detach())  # the one counting rule; read on demand: no sync here
        self.zeros = self.zeros + counts.inactive
        self.elements += counts.entries
        return out

    @property
    def zero_fraction(self) -> float:
        if not self.elements:
            raise RuntimeError("This sparsifier has not run since it was installed (or reset).")
        return float(self.zeros) / self.elements

    def extra_repr(self) -> str:
        return f"threshold={self.threshold:.6g}"


def teal_thresholds(site: Site) -> dict[str, float] | None:
    """The TEAL thresholds installed on ``site`` (``{"input": t, "down": t}``), or None when it has none.

    What :func:`~actsparse.plugins.sparse_ffn.convert_to_sparse` reads to build a
    :class:`~actsparse.plugins.sparse_ffn_teal.TealFFN` for the site."""
    found = getattr(site.owner, TEAL_ATTRIBUTE, None)
    return None if found is None else dict(found)


def _check_dense(site: Site, method: str) -> None:
    if isinstance(site.activation, CATSActivation) or teal_thresholds(site) is not None:
        raise RuntimeError(
            f"Site {site.name!r} already has a training-free sparsifier installed; remove() it before "
            f"installing {method} (one sparsifier per site). A deep copy of a model carries the sparsifiers "
            "of its original: install on the original, or copy after remove()."
        )


class MagnitudeSamples:
    """Bounded random samples of ``|values|`` per (site, point) from calibration forwards.

    ``thresholds(sparsity)`` gives, per site and point, the ``sparsity``-quantile of the sample:
    the ``k``-th smallest magnitude with ``k = round(sparsity·n)``, so exactly a fraction
    ``sparsity`` of the sampled values satisfy ``|x| <= t`` (barring ties).
    """

    def __init__(self, method: str, points: Sequence[str], per_call: int | None, seed: int) -> None:
        self.method, self.points, self.per_call = method, tuple(points), per_call
        self.values: dict[str, dict[str, list[torch.Tensor]]] = {}
        self.generator = torch.Generator().manual_seed(seed)
        self.mask: torch.Tensor | None = None  # real-token mask of the running batch

    def add(self, site: str, point: str, tensor: torch.Tensor) -> None:
        rows = as_rows(tensor.detach())
        if self.mask is not None and self.mask.numel() == rows.shape[0]:
            rows = rows[self.mask.reshape(-1).to(rows.device)]
        flat = rows.abs().flatten()
        if self.per_call is not None and flat.numel() > self.per_call:
            idx = torch.randint(flat.numel(), (self.per_call,), generator=self.generator)
            flat = flat[idx.to(flat.device)]
        self.values.setdefault(site, {}).setdefault(point, []).append(flat.float().cpu())

    def thresholds(self, sparsity: float) -> dict[str, dict[str, float]]:
        """Per site, per point: the magnitude below (or at) which a fraction ``sparsity`` lies."""
        if not 0 <= sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}.")
        if not self.values:
            raise RuntimeError(f"No {self.method} calibration values: the batches ran no forward through the sites.")
        out = {}
        for site, points in self.values.items():
            out[site] = {}
            for point, parts in points.items():
                v = torch.cat(parts)
                k = round(sparsity * v.numel())
                out[site][point] = float(v.kthvalue(k).values) if k > 0 else 0.0
        return out


def _run(model: nn.Module, batches: Iterable, samples: MagnitudeSamples) -> None:
    """One no-grad forward per batch (``(inputs, targets)``, a dict with ``input_ids``, or a token
    tensor), telling ``samples`` which positions are real tokens."""
    from actsparse.evaluation.lm_loss import batch_mask  # lazy: evaluation imports plugins

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                samples.mask = batch_mask(batch)
                if isinstance(batch, dict):
                    model(**{k: batch[k].to(device) for k in ("input_ids", "attention_mask") if k in batch})
                elif isinstance(batch, (tuple, list)):
                    model(batch[0].to(device))
                elif isinstance(batch, torch.Tensor):
                    model(batch.to(device))
                else:
                    raise TypeError(f"Unknown batch layout {type(batch).__name__}; use (inputs, targets), a dict "
                                    "with input_ids, or a token tensor.")
    finally:
        samples.mask = None
        model.train(was_training)


def _per_call(batches: list, max_values: int | None) -> int | None:
    if max_values is None:
        return None
    return max(1, -(-int(max_values) // max(1, len(batches))))


def _collect(model, batches, sites, method, points, attach, max_values, seed) -> MagnitudeSamples:
    chosen = ffn_sites(model, sites)
    batches = list(batches)
    samples = MagnitudeSamples(method, points, _per_call(batches, max_values), seed)
    handles = [h for site in chosen for h in attach(site, samples)]
    try:
        _run(model, batches, samples)
    finally:
        for h in handles:
            h.remove()
    return samples


def collect_cats(model: nn.Module, batches: Iterable, *, sites=None, max_values: int | None = 2**20,
                 seed: int = 0) -> MagnitudeSamples:
    """Sample ``|act(x W_gateᵀ)|`` of each FFN site over ``batches`` (one pass).

    ``max_values`` bounds the sample per site (spread evenly over the batches; None keeps all).
    With CATS installed, the values are those before its thresholds (:func:`calibrate_cats`'s passes).
    """
    def attach(site: Site, samples: MagnitudeSamples):
        site.require_swappable()
        act = site.activation.base if isinstance(site.activation, CATSActivation) else site.activation
        return [act.register_forward_hook(lambda mod, args, out, name=site.name: samples.add(name, "activation", out))]

    return _collect(model, batches, sites, "CATS", CATS_POINTS, attach, max_values, seed)


def collect_teal(model: nn.Module, batches: Iterable, *, sites=None, max_values: int | None = 2**20,
                 seed: int = 0) -> MagnitudeSamples:
    """Sample ``|x|`` entering the FFN (gate/up input, point ``"input"``) and ``|x1|`` entering
    down (point ``"down"``) of each FFN site over ``batches`` (one pass). With TEAL installed, the
    values are those before its sparsifiers (prepended hooks run first)."""
    def attach(site: Site, samples: MagnitudeSamples):
        def hook(point: str):
            return lambda mod, args: samples.add(site.name, point, args[0])

        return [site.inputs[0].register_forward_pre_hook(hook("input"), prepend=True),
                site.down.register_forward_pre_hook(hook("down"), prepend=True)]

    return _collect(model, batches, sites, "TEAL", TEAL_POINTS, attach, max_values, seed)


class TrainingFree(contextlib.AbstractContextManager):
    """CATS or TEAL installed on a model; :meth:`remove` (or leaving a ``with`` block) restores the
    model exactly (the original activation modules, no hooks left)."""

    def __init__(self, method: str, thresholds: dict[str, dict[str, float]]) -> None:
        self.method, self.thresholds = method, thresholds
        self.sparsifiers: dict[str, dict[str, MagnitudeSparsifier]] = {}  # TEAL only
        self._undo: list[Callable[[], Any]] = []

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()

    def __exit__(self, *exc) -> None:
        self.remove()

    def reset_counts(self) -> None:
        for points in self.sparsifiers.values():
            for sp in points.values():
                sp.reset()

    def input_sparsity(self, point: str = "input") -> float:
        """TEAL: zeros over entries at ``point`` (``"input"``: gate/up input; ``"down"``: down input,
        which is ``x1``), pooled over sites, since install or :meth:`reset_counts`."""
        if not self.sparsifiers:
            raise RuntimeError(f"{self.method} sparsifies no projection inputs; input sparsity is TEAL's.")
        ran = [p[point] for p in self.sparsifiers.values() if p[point].elements]
        if not ran:
            raise RuntimeError("No sparsified forward has run since install (or reset_counts).")
        return sum(float(sp.zeros) for sp in ran) / sum(sp.elements for sp in ran)


def _chosen(model: nn.Module, sites, thresholds: dict[str, dict[str, float]], points, method) -> list[Site]:
    """The FFN sites to install on (all that ``thresholds`` names, unless ``sites`` selects), checked."""
    chosen = ffn_sites(model, sites)
    unknown = sorted(set(thresholds) - {s.name for s in resolve_sites(model, None)})
    if unknown:
        raise KeyError(f"{method} thresholds name sites this model does not have: {unknown}.")
    if sites is None:
        chosen = [s for s in chosen if s.name in thresholds]
    if not chosen:
        raise ValueError(f"No {method} thresholds to install (an empty mapping?).")
    for site in chosen:
        missing = [p for p in points if p not in thresholds.get(site.name, {})]
        if missing:
            raise KeyError(f"No {method} threshold for site {site.name!r} (points {missing}); thresholds cover "
                           f"{sorted(thresholds)}. Use collect_{method.lower()}(...).thresholds(sparsity).")
        _check_dense(site, method)
    return chosen


def install_cats(model: nn.Module, thresholds: dict[str, dict[str, float]], *, sites=None) -> TrainingFree:
    """Put a :class:`CATSActivation` with the site's threshold in each FFN site's activation slot."""
    chosen = _chosen(model, sites, thresholds, CATS_POINTS, "CATS")
    for site in chosen:
        site.require_swappable()
    installed = TrainingFree("CATS", {s.name: dict(thresholds[s.name]) for s in chosen})
    for site in chosen:
        original = site.activation
        site.set_activation(CATSActivation(thresholds[site.name]["activation"], base=original))
        installed._undo.append(lambda site=site, original=original: site.set_activation(original))
    return installed


def install_teal(model: nn.Module, thresholds: dict[str, dict[str, float]], *, sites=None) -> TrainingFree:
    """Hook a :class:`MagnitudeSparsifier` before each FFN projection: gate/up (``"input"``) and down."""
    chosen = _chosen(model, sites, thresholds, TEAL_POINTS, "TEAL")
    installed = TrainingFree("TEAL", {s.name: dict(thresholds[s.name]) for s in chosen})
    for site in chosen:
        t = thresholds[site.name]
        pre = {"input": MagnitudeSparsifier(t["input"]), "down": MagnitudeSparsifier(t["down"])}
        # gate and up read the same hidden state: one sparsifier counts it, the others only apply it
        apply_input = MagnitudeSparsifier(t["input"], count=False)
        projections = [(site.inputs[0], pre["input"])] + [(p, apply_input) for p in site.inputs[1:]]
        projections.append((site.down, pre["down"]))
        for proj, sp in projections:
            # prepend: recordings hooked on down (site hooks) see the sparsified x1, whenever attached
            handle = proj.register_forward_pre_hook(lambda mod, args, sp=sp: (sp(args[0]), *args[1:]), prepend=True)
            installed._undo.append(handle.remove)
        installed.sparsifiers[site.name] = pre
        setattr(site.owner, TEAL_ATTRIBUTE, {p: float(t[p]) for p in TEAL_POINTS})
        installed._undo.append(lambda owner=site.owner: delattr(owner, TEAL_ATTRIBUTE))
    return installed


def _calibrate(collect, install, model, batches, sparsity, passes, options) -> TrainingFree:
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}.")
    batches, sites = list(batches), options.get("sites")
    thresholds = collect(model, batches, **options).thresholds(sparsity)
    for _ in range(passes - 1):  # re-measure every point under the thresholds installed so far
        with install(model, thresholds, sites=sites):
            thresholds = collect(model, batches, **options).thresholds(sparsity)
    return install(model, thresholds, sites=sites)


def calibrate_cats(model: nn.Module, batches: Iterable, sparsity: float, *, passes: int = 1,
                   **options) -> TrainingFree:
    """CATS at ``sparsity``: :func:`collect_cats` then :func:`install_cats`.

    ``passes=1`` is the paper's calibration (the dense model's activations). Each further pass
    re-measures every layer with the thresholds of the previous pass installed, so that the
    measured sparsity on the calibration text approaches the target (earlier layers' thresholds
    change what later layers see).
    """
    return _calibrate(collect_cats, install_cats, model, batches, sparsity, passes, options)


def calibrate_teal(model: nn.Module, batches: Iterable, sparsity: float, *, passes: int = 1,
                   **options) -> TrainingFree:
    """TEAL (uniform) at ``sparsity``: :func:`collect_teal` then :func:`install_teal`.

    ``passes=1`` is the paper's calibration (dense activations). There, down's input is measured
    with gate/up reading the *dense* hidden state; once the input is sparsified, ``x1`` shrinks and
    more of it falls below the threshold (measured: 0.90 for a 0.80 target on a tiny LLaMA).
    ``passes=2`` re-measures under the first pass's thresholds, which brings ``x1``'s sparsity to the
    target.
    """
    return _calibrate(collect_teal, install_teal, model, batches, sparsity, passes, options)
