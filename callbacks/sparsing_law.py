"""SparsingLaw: what the Sparsing Law study (Luo et al. 2024) measures of one training run: the
activation ratio against training tokens at one CETT searched jointly over the last checkpoints,
the law fitted to it, the zero-based ratio of the training forwards and its law, and the final
model's PPL-p% sparsity; all of it in the run's history and summary, so that a study aggregates
jobs with StudyReport like any other metric."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
from actsparse.callbacks.evaluator import SparsityEvaluator
from actsparse.callbacks.history import MetricHistory
from actsparse.callbacks.sparsity import SparsityMonitor
from actsparse.metrics.functional.laws import ActivationLaw, fit_activation_law
from actsparse.metrics.sparsity import MEAN
from actsparse.plugins.activations import FATReLU
from actsparse.plugins.sites import resolve_sites
from torch import nn
from typing_extensions import override

from actsparse.evaluation.ppl_sparsity import ppl_p_sparsity

log = logging.getLogger(__name__)

PREFIX = "sparsing_law/"


def law_values(law: ActivationLaw | None, prefix: str = "") -> dict[str, float]:
    """A fitted law's parameters as loggable numbers (nothing when the fit failed)."""
    if law is None:
        return {}
    values = {"A0": law.A0, "alpha": law.alpha, "c": law.c, "c_billions": law.c_billions, "r2": law.r2}
    if law.kind == "relu":
        values["b"] = law.b
    return {f"{prefix}{k}": float(v) for k, v in values.items()}


def fit_law(tokens: list[float], ratio: list[float], kind: str) -> ActivationLaw | None:
    """The law of ``kind`` fitted to the points, or None (logged) where it does not converge."""
    try:
        return fit_activation_law(tokens, ratio, kind=kind)
    except (RuntimeError, ValueError) as err:
        log.info("The %s law did not fit %d points: %s", kind, len(tokens), err)
        return None


def tail_mean(values: list[float]) -> float:
    """Mean of the last fifth of a curve (at least one point): its end, less noisy than the last."""
    return float(np.mean(values[-max(1, len(values) // 5):])) if values else float("nan")


class SparsingLaw(SparsityEvaluator):
    """A :class:`SparsityEvaluator` (``joint_last=n``: the paper's protocol, one CETT searched
    jointly over the last n validation snapshots; ``joint_last=None``: PPL-p% sparsity searched
    again at every validation) that, at the end of training, turns its curve into the study's
    numbers:

    - ``sparsing_law/activation_ratio`` (1 − sparsity) and ``sparsing_law/tokens`` (training tokens
      seen) at every validation step, written into :class:`MetricHistory`'s curves at the steps
      they describe (the joint CETT is known only at the end), and the law of the run's activation
      kind fitted to them after ``skip_first`` points: ``sparsing_law/{A0, alpha, c, c_billions, b,
      r2}`` (``A(D) = exp(−c·D^α + b) + A0`` for ReLU, ``−c/D^α + A0`` for SiLU; DESIGN §4);
    - ``sparsing_law/zero_ratio``: 1 − the exact-zero fraction of the training forwards, from the
      run's :class:`SparsityMonitor` (when there is one), with the ReLU law fitted to it for ReLU
      runs (``sparsing_law/zero_A0``, ``zero_r2``; SiLU has no exact zeros);
    - ``sparsing_law/ppl_p{p}_sparsity`` (and ``_cett``, ``_ppl_dense``) of the final model, on
      ``final_batches`` validation batches; ``final_ratio``/``final_zero_ratio`` (means of the last
      fifth of each curve), ``joint_cett``, ``non_embedding_params``.

    It runs at ``on_train_end``, before :class:`RunSummary` writes ``summary.json`` at fit end.

    Args:
        kind: ``"relu"`` or ``"silu"`` law; None: ``"relu"`` when every site is ReLU/FATReLU.
        skip_first: curve points left out of the fits (the warm-up transient).
        final_batches: validation batches of the final PPL-p% search (None: ``max_batches``).
        p, max_batches, joint_last, options: as :class:`SparsityEvaluator` (joint_last defaults to 5).

    Example:
        >>> SparsingLaw(p=1.0, skip_first=2).joint_last
        5
    """

    def __init__(self, p: float = 1.0, kind: str | None = None, skip_first: int = 2, joint_last: int | None = 5,
                 max_batches: int | None = None, final_batches: int | None = None, **options: Any) -> None:
        super().__init__(p=p, max_batches=max_batches, joint_last=joint_last, **options)
        if kind not in (None, "relu", "silu"):
            raise ValueError(f"kind must be None (from the sites' activation), 'relu' or 'silu', got {kind!r}.")
        if skip_first < 0:
            raise ValueError(f"skip_first must be >= 0, got {skip_first}.")
        self.kind, self.skip_first = kind, int(skip_first)
        self.final_batches = max_batches if final_batches is None else int(final_batches)
        self.measured: dict[str, float] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(p=self.ps, joint_last=self.joint_last, kind=self.kind,
                                        skip_first=self.skip_first)

    def law_kind(self, pl_module: nn.Module) -> str:
        if self.kind is not None:
            return self.kind
        sites = resolve_sites(pl_module, self.options.get("sites"))
        return "relu" if sites and all(isinstance(s.activation, (nn.ReLU, FATReLU)) for s in sites) else "silu"

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: the snapshots were evaluated at ``on_train_end``, before the summary."""

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loaders = trainer.val_dataloaders
        loader = loaders[self.dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
        steps = max(trainer.global_step, 1)
        tokens_seen = getattr(pl_module, "tokens_seen", None)
        if not tokens_seen:
            raise ValueError(f"SparsingLaw needs the task's tokens_seen (CausalLM counts it); "
                             f"{type(pl_module).__name__} has none.")
        per_step = float(tokens_seen) / steps
        p = self.ps[0]
        if self.joint_last is not None:
            curve = [(step, ratio) for step, ratio, _ in self.evaluate_snapshots(pl_module, loader)]
        else:
            curve = [(step, 1.0 - values[self.key(p)]) for step, values in self.history if self.key(p) in values]
        kind = self.law_kind(pl_module)
        points: dict[int, dict[str, float]] = {}
        for step, ratio in curve:
            points.setdefault(step, {})[PREFIX + "activation_ratio"] = float(ratio)
        ratios = [r for _, r in curve]
        law = fit_law([s * per_step for s, _ in curve][self.skip_first:], ratios[self.skip_first:], kind)
        final = {"final_ratio": tail_mean(ratios), **law_values(law)}
        if self.joint is not None:
            final["joint_cett"] = self.joint.cett
        monitor = next((cb for cb in trainer.callbacks if isinstance(cb, SparsityMonitor)), None)
        if monitor is not None and monitor.history:
            zero = [(step, 1.0 - values[MEAN]) for step, values in monitor.history if MEAN in values]
            for step, ratio in zero:
                points.setdefault(step, {})[PREFIX + "zero_ratio"] = ratio
            final["final_zero_ratio"] = tail_mean([r for _, r in zero])
            if kind == "relu":
                zero_law = fit_law([s * per_step for s, _ in zero][self.skip_first:],
                                   [r for _, r in zero][self.skip_first:], "relu")
                final.update(law_values(zero_law, "zero_"))
        r = ppl_p_sparsity(pl_module, loader, p, max_batches=self.final_batches, **self.options)
        final.update({f"ppl_p{p:g}_sparsity": r.sparsity, f"ppl_p{p:g}_cett": r.cett,
                      f"ppl_p{p:g}_ppl_dense": r.ppl_dense,
                      "non_embedding_params": float(sum(q.numel() for n, q in pl_module.named_parameters()
                                                        if "embed" not in n and "lm_head" not in n))})
        self.measured = {PREFIX + k: float(v) for k, v in final.items()}
        points.setdefault(trainer.global_step, {}).update(self.measured)
        self._record(trainer, points, per_step)

    def _record(self, trainer: L.Trainer, points: dict[int, dict[str, float]], per_step: float) -> None:
        """Into the run's curves at the steps they describe (summary.json's history), and the final
        values to the loggers."""
        history = next((cb for cb in trainer.callbacks if isinstance(cb, MetricHistory)), None)
        if history is None:
            log.warning("SparsingLaw: no MetricHistory callback, so its curves stay out of summary.json.")
        else:
            for step in sorted(points):
                history.history.record(step, {PREFIX + "tokens": step * per_step, **points[step]})
        # MetricHistory hears loggers only for its own prefixes (sparsing_law/ is not one of them by
        # default), so the final values reach the history once, above.
        for logger in trainer.loggers:
            logger.log_metrics(self.measured, step=trainer.global_step)
