"""The Sparsing Law's activation-ratio protocol (Luo et al. 2024, arXiv 2411.02335): **one CETT
searched jointly over the last checkpoints of a run, applied to every checkpoint.**

The reference code (thunlp/SparsingLaw, ``calc_sparsity.sh`` → ``calc_cett.py`` → ``run_inspect.sh``)
takes the last 5 checkpoints, bisects the CETT target to 1e-3 with the *mean over those
checkpoints* of the perplexity ratio (truncated / dense) as the criterion (``< 1 + p/100``),
then measures every checkpoint's sparsity at that one CETT: per layer, the threshold whose CETT
on that checkpoint's activations equals it. The activation-ratio curve against training tokens
(and the laws fitted to it) is that sparsity, ``A = 1 − sparsity``, along training. Searching
the CETT again at every checkpoint (PPL-p% sparsity of each checkpoint,
:func:`~actsparse.evaluation.ppl_p_sparsity`) measures something else: a different truncation
level at every point of the curve.

- :func:`joint_cett` — the joint search (thresholds of each checkpoint exact on all its real
  tokens; the bracketing search of :func:`ppl_p_sparsity` instead of plain bisection, same
  acceptance rule: mean ratio ``<= 1 + p/100``).
- :func:`activation_ratio_at_cett` — one checkpoint's activation ratio at a given CETT (one dense
  and one truncated pass).

Differences from the reference code, all small: the perplexity ratio of a checkpoint is
token-weighted over the whole evaluation data (the reference averages per-batch ratios);
thresholds come from all evaluation tokens at once (the reference finds them per batch of
4,096-token sequences and averages); the returned CETT is the largest accepted target (the
reference returns the bracket's midpoint).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from actsparse.evaluation.lm_loss import LossFn, MaskFn
from actsparse.evaluation.bracket_search import BracketSearch
from actsparse.evaluation.passes import prepare_model, truncated_pass
from actsparse.runtime import all_sum

__all__ = ["ActivationRatioResult", "JointCETTResult", "activation_ratio_at_cett", "joint_cett", "load_lm"]


@dataclass
class JointCETTResult:
    """What :func:`joint_cett` found."""

    p: float
    cett: float  # the largest accepted target: mean ppl ratio over the checkpoints <= 1 + p/100
    cett_rejected: float  # the smallest rejected target above it (1.0 if none)
    ppl_ratio: float  # mean over the checkpoints at ``cett``
    ppl_ratios: list[float]  # each checkpoint's ratio at ``cett``
    sparsities: list[float]  # each checkpoint's dropped fraction at ``cett`` (real tokens)
    passes: int  # data passes over all checkpoints (dense ones included)
    seconds: float
    history: list[tuple[float, float]] = field(default_factory=list)  # (target, mean ppl ratio)


@dataclass
class ActivationRatioResult:
    """One checkpoint at a given CETT (see :func:`activation_ratio_at_cett`)."""

    cett: float
    activation_ratio: float  # 1 - sparsity
    sparsity: float  # dropped fraction over all FFN sites and real tokens
    site_sparsity: dict[str, float]
    thresholds: dict[str, float]
    ppl_dense: float
    ppl_truncated: float

    @property
    def ppl_ratio(self) -> float:
        return self.ppl_truncated / self.ppl_dense


def load_lm(path: str | Path) -> nn.Module:
    """A checkpoint of actsparse's ``CausalLM`` task, on the CPU (the default ``load`` of :func:`joint_cett`)."""
    from actsparse.tasks.lm import CausalLM

    return CausalLM.load_from_checkpoint(str(path), map_location="cpu")


def _models(models: Sequence[nn.Module | str | Path], load: Callable[[Any], nn.Module] | None) -> list[nn.Module]:
    out = []
    for m in models:
        out.append(m if isinstance(m, nn.Module) else (load or load_lm)(m))
    if not out:
        raise ValueError("joint_cett needs at least one model or checkpoint.")
    return out


def _counts_sparsity(counts: dict[str, torch.Tensor], i: int) -> tuple[float, dict[str, float]]:
    g = {name: all_sum(c[:, i].clone()) for name, c in counts.items()}
    total = sum(float(v[0]) for v in g.values()) / max(sum(float(v[1]) for v in g.values()), 1.0)
    return total, {name: float(v[0] / v[1]) if float(v[1]) else float("nan") for name, v in g.items()}


@torch.no_grad()
def joint_cett(
    models: Sequence[nn.Module | str | Path],
    dataloader: Iterable,
    p: float = 1.0,
    *,
    tol: float = 1e-3,
    candidates: int = 1,
    loss_fn: LossFn | None = None,
    mask_fn: MaskFn | None = None,
    sites=None,
    max_batches: int | None = None,
    max_passes: int = 40,
    calibration_dtype: torch.dtype = torch.float32,
    load: Callable[[Any], nn.Module] | None = None,
) -> JointCETTResult:
    """The largest CETT target at which the checkpoints' mean perplexity ratio stays within
    ``1 + p/100`` (the Sparsing Law's joint search; module docstring).

    Args:
        models: the checkpoints, as models or paths (loaded with ``load``, default :func:`load_lm`);
            the paper uses the last 5 of a run.
        dataloader: evaluation batches (read several times; the same for every checkpoint).
        p: allowed perplexity increase in percent.
        tol: width of the final bracket on the CETT target.
        candidates, loss_fn, mask_fn, sites, max_batches, calibration_dtype: as in
            :func:`~actsparse.evaluation.ppl_p_sparsity`.

    Example:
        >>> from actsparse.models import TinyLM
        >>> _ = torch.manual_seed(0)
        >>> lms = [TinyLM(d_model=32, n_layers=2, n_heads=2, activation="relu") for _ in range(2)]
        >>> data = [torch.randint(0, 256, (4, 33)) for _ in range(2)]
        >>> r = joint_cett(lms, data, p=1.0)
        >>> r.ppl_ratio <= 1.01, len(r.sparsities), r.cett_rejected - r.cett <= 1e-3
        (True, 2, True)
    """
    if not p > 0:
        raise ValueError(f"p must be > 0 (the allowed perplexity increase in percent), got {p}.")
    if not 0 < tol < 1:
        raise ValueError(f"tol must be in (0, 1), got {tol}.")
    start = time.perf_counter()
    mods = _models(models, load)
    modes = [m.training for m in mods]
    for m in mods:
        m.eval()
    try:
        preps = [prepare_model(m, dataloader, loss_fn=loss_fn, mask_fn=mask_fn, sites=sites, max_batches=max_batches,
                               calibration_dtype=calibration_dtype) for m in mods]
        cost = {"passes": len(preps)}
        records: dict[float, dict[str, Any]] = {}

        def evaluate(targets: list[float]) -> list[float]:
            ratios = torch.zeros(len(preps), len(targets), dtype=torch.float64)
            sparsity = torch.zeros(len(preps), len(targets), dtype=torch.float64)
            for j, prep in enumerate(preps):
                loss, counts = truncated_pass(prep, prep.calib.thresholds(targets))
                cost["passes"] += 1
                gloss = all_sum(loss)
                for i in range(len(targets)):
                    ratios[j, i] = math.exp(float(gloss[i]) / prep.total_tokens - prep.dense_loss)
                    sparsity[j, i] = _counts_sparsity(counts, i)[0]
            for i, t in enumerate(targets):
                records[t] = {"ratios": ratios[:, i].tolist(), "sparsities": sparsity[:, i].tolist()}
            return [math.log(float(ratios[:, i].mean())) for i in range(len(targets))]

        records[0.0] = {"ratios": [1.0] * len(preps),
                        "sparsities": [float(all_sum(pr.zero_local.clone())[:, 0].sum()
                                             / all_sum(pr.zero_local.clone())[:, 1].sum()) for pr in preps]}
        search = BracketSearch(evaluate, p, tol, max_k=candidates)
        search.run(max_rounds=max_passes)
        search.warn_if_open("joint_cett", max_passes)
        lo = search.lo
        rec = records[lo]
        return JointCETTResult(p=float(p), cett=lo, cett_rejected=1.0 if search.hi is None else search.hi,
                               ppl_ratio=float(sum(rec["ratios"]) / len(rec["ratios"])), ppl_ratios=rec["ratios"],
                               sparsities=rec["sparsities"], passes=cost["passes"],
                               seconds=time.perf_counter() - start,
                               history=sorted((t, math.exp(g)) for t, g in search.points.items()))
    finally:
        for m, mode in zip(mods, modes):
            m.train(mode)


@torch.no_grad()
def activation_ratio_at_cett(
    model: nn.Module | str | Path,
    dataloader: Iterable,
    cett: float,
    *,
    loss_fn: LossFn | None = None,
    mask_fn: MaskFn | None = None,
    sites=None,
    max_batches: int | None = None,
    calibration_dtype: torch.dtype = torch.float32,
    load: Callable[[Any], nn.Module] | None = None,
) -> ActivationRatioResult:
    """Activation ratio (1 − dropped fraction) of ``model`` when every FFN site drops its weak
    neurons at the CETT target ``cett`` (per-site thresholds exact on all real tokens of the data).

    Example:
        >>> from actsparse.models import TinyLM
        >>> _ = torch.manual_seed(0)
        >>> lm = TinyLM(d_model=32, n_layers=2, n_heads=2, activation="relu")
        >>> r = activation_ratio_at_cett(lm, [torch.randint(0, 256, (4, 33))], 0.1)
        >>> 0 < r.activation_ratio < 1, r.activation_ratio == 1 - r.sparsity
        (True, True)
    """
    if not 0 <= float(cett) <= 1:
        raise ValueError(f"cett must be in [0, 1], got {cett}.")
    (mod,) = _models([model], load)
    mode = mod.training
    mod.eval()
    try:
        prep = prepare_model(mod, dataloader, loss_fn=loss_fn, mask_fn=mask_fn, sites=sites, max_batches=max_batches,
                             calibration_dtype=calibration_dtype)
        (setting,) = prep.calib.thresholds([float(cett)])
        loss, counts = truncated_pass(prep, [setting])
        sparsity, per_site = _counts_sparsity(counts, 0)
        truncated = float(all_sum(loss)[0]) / prep.total_tokens
        return ActivationRatioResult(cett=float(cett), activation_ratio=1.0 - sparsity, sparsity=sparsity,
                                     site_sparsity=per_site, thresholds=dict(setting),
                                     ppl_dense=math.exp(prep.dense_loss), ppl_truncated=math.exp(truncated))
    finally:
        mod.train(mode)

