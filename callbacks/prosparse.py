"""ProSparse: progressive, sine-scheduled L1 regularization of site activations (Song et al. 2024)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from actsparse.callbacks.sparsity import SparsityMonitor
from actsparse.plugins.activations import FATReLU
from actsparse.plugins.sites import Site, resolve_sites

NORMALIZATIONS = ("mean", "sum", "element")

PAPER_SCHEDULES: dict[str, tuple[tuple[float, int], ...]] = {
    # arXiv 2402.13516, Appendix L, Table 6: (lambda_i, T_i); stage 0 is the activation substitution.
    "llama2-7b": ((0.0, 5000), (5e-3, 6000), (5e-2, 10000), (5e-2, 12000), (2e-1, 16000), (2e-1, 16500)),
    "llama2-13b": ((0.0, 5500), (5e-3, 6750), (1e-2, 10750), (1e-2, 11000), (2e-2, 15000), (2e-2, 16000)),
    # Table 7 up to its last incremental stage; its decay (5e-2) and SFT (1e-2) stages hold constant
    # factors after training on other data and are not part of the progressive schedule.
    "minicpm-1b": ((0.0, 10000), (1e-3, 15000), (5e-3, 20000), (5e-3, 25000), (5e-2, 35000)),
}


def validate_stages(stages: Sequence[Sequence[float]]) -> list[tuple[float, int]]:
    """``[(lambda_i, end_step_i), ...]`` checked: non-empty, lambda >= 0, ends increasing."""
    if stages is None or len(stages) == 0:
        raise ValueError("ProSparse needs at least one stage: stages=[(lambda_1, end_step_1), ...].")
    checked = []
    for i, stage in enumerate(stages):
        if len(stage) != 2:
            raise ValueError(f"Stage {i} is {stage!r}; each stage is (lambda, end_step).")
        lam, end = float(stage[0]), stage[1]
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"Stage {i} has lambda={stage[0]!r}; lambdas must be finite and >= 0.")
        if int(end) != end or end < 0:
            raise ValueError(f"Stage {i} ends at step {end!r}; end steps are integers >= 0.")
        if checked and end <= checked[-1][1]:
            raise ValueError(
                f"Stage end steps must increase: stage {i} ends at {int(end)}, not after stage "
                f"{i - 1}'s end {checked[-1][1]}. They are cumulative optimizer steps (T_1 < T_2 < ...)."
            )
        checked.append((lam, int(end)))
    return checked


def warmup_index(stages: Sequence[tuple[float, int]]) -> int:
    """Index of the warm-up stage: the first with lambda > 0 (stages before it are the
    activation-substitution stage, lambda = 0). ``len(stages)`` if every lambda is 0."""
    return next((i for i, (lam, _) in enumerate(stages) if lam > 0), len(stages))


def paper_stages(name: str, total_steps: int | None = None, final_lambda: float | None = None) -> list[tuple[float, int]]:
    """A published schedule (:data:`PAPER_SCHEDULES`), its stage ends scaled to ``total_steps``
    (rounded; the last end is ``total_steps``) and its lambdas to end at ``final_lambda``.
    The shape (substitution share, warm-up length, ratios between lambdas) is the paper's."""
    if name not in PAPER_SCHEDULES:
        raise ValueError(f"Unknown ProSparse preset {name!r}; choose from {', '.join(PAPER_SCHEDULES)}.")
    table = PAPER_SCHEDULES[name]
    last_end, last_lam = table[-1][1], table[-1][0]
    steps = last_end if total_steps is None else int(total_steps)
    lam_scale = 1.0 if final_lambda is None else float(final_lambda) / last_lam
    stages = [(lam * lam_scale, round(end * steps / last_end)) for lam, end in table]
    try:
        return validate_stages(stages)
    except ValueError as err:
        raise ValueError(f"total_steps={steps} is too few for the {name!r} schedule's "
                         f"{len(table)} stages ({err})") from None


class ProSparse(Callback):
    """Adds ``lambda(t) * sum_sites ||x1||_1`` to the training loss of any LightningModule.

    ``x1`` is each site's tensor (the input of an FFN's down projection, DESIGN §2).
    ``normalize`` sets the norm: ``"mean"`` (default) divides each site's L1 by its number of
    tokens (rows), ``"element"`` by its number of entries, ``"sum"`` not at all.

    Mechanism: the module is not modified. A hook on every site registers, during training
    forwards, a gradient hook on ``x1`` that adds ``d(lambda * L1)/d x1 = lambda * sign(x1) / N``
    to its gradient; Lightning then backpropagates exactly ``loss + lambda(t) * L1``. The
    injected term is divided by ``accumulate_grad_batches`` and multiplied by the AMP loss scale
    (16-mixed), as Lightning does to the loss, so gradients equal those of the hand-written
    ``(loss + lambda * L1) / accumulate`` under automatic optimization, gradient accumulation,
    ``bf16-mixed`` and ``16-mixed``. Limits: under manual optimization the term is added to every
    backward through the sites and is not divided by any accumulation the module does itself;
    activation checkpointing that recomputes forwards with gradients enabled would add it twice.
    The logged training loss is the module's own (without the penalty); ``prosparse/reg_loss``
    logs the penalty.

    Schedule (Alg. 1 and Table 6 of arXiv 2402.13516): ``stages`` is the paper's table,
    ``[(lambda_0, T_0), (lambda_1, T_1), ..., (lambda_S, T_S)]`` with cumulative end steps.
    Leading stages with lambda = 0 are the activation-substitution stage (ReLU, no penalty);
    the first stage with lambda > 0 is the warm-up, which holds lambda_1 from its first step
    (no ramp into it); each later stage rises from the previous lambda to its own along a
    half sine (two equal lambdas in a row give a constant stage); after T_S lambda stays at
    lambda_S. Steps count optimizer updates from t = 1 as in Alg. 1: the update that takes
    ``trainer.global_step`` from t - 1 to t uses ``coefficient(t)``. ``[(lam, 0)]`` is a fixed
    lambda from the first step; ``[(0, T_0), (lam, T)]`` is the paper's fixed-lambda ablation
    (Table 5: substitution, then a constant factor). :meth:`preset` gives the published
    schedules scaled to a step budget.

    Normalization and the paper's lambda values: the paper adds ``lambda * ||x1||_1`` per FFN
    layer, x1 being one token's intermediate vector (R^{d_ff}), to the token-averaged LM loss;
    ``normalize="mean"`` is exactly that (L1 over the intermediate dimension, averaged over
    tokens), so the paper's lambda values carry over unchanged to a model of the same width and
    activation scale. ``"element"`` averages over the d_ff entries as well: its lambda equals the
    paper's times d_ff (7B: 11008). ``"sum"`` sums over tokens too: the paper's lambda divided by
    the tokens per micro-batch. Lambda is not transferable across models in general: the L1 of
    x1 scales with the activation magnitudes and d_ff, so a small model needs its own values
    (the presets keep the published shape and take the final lambda as an argument).

    Args:
        stages: ``[(lambda_i, T_i), ...]`` as above. Paper (7B): ``[(0, 5000), (5e-3, 6000),
            (5e-2, 10000), (5e-2, 12000), (2e-1, 16000), (2e-1, 16500)]``, so lambda = 5e-3 from
            step 5001 (the first warm-up step) through 6000.
        normalize: ``"mean"`` | ``"element"`` | ``"sum"`` (above).
        sites: None (all sites) or glob pattern(s) on site names seen from the LightningModule.
        log_sparsity: also log ``sparsity/<site>``, ``sparsity/mean`` (and the heatmap): at
            ``setup`` a :class:`SparsityMonitor` of the same sites is added to the trainer's
            callbacks, right after this one, unless the trainer already has one. Lightning calls
            it like any callback and keeps its state in checkpoints under its own key.

    Logged every ``trainer.log_every_n_steps`` optimizer steps: ``prosparse/lambda`` (the
    lambda of the update just taken), ``prosparse/reg_loss``.

    Example:
        >>> cb = ProSparse([(0.0, 100), (1e-3, 200), (1e-2, 300)])
        >>> [round(cb.coefficient(t), 6) for t in (1, 100, 101, 200, 250, 300, 1000)]
        [0.0, 0.0, 0.001, 0.001, 0.0055, 0.01, 0.01]
        >>> ProSparse.preset("llama2-7b").coefficient(5500)
        0.005
        >>> ProSparse.preset("llama2-7b", total_steps=330, final_lambda=4e-3).stages
        [(0.0, 100), (0.0001, 120), (0.001, 200), (0.001, 240), (0.004, 320), (0.004, 330)]
    """

    def __init__(self, stages: Sequence[Sequence[float]], normalize: str = "mean",
                 sites: str | Sequence[str] | None = None, log_sparsity: bool = True) -> None:
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}.")
        self.stages = validate_stages(stages)
        self.normalize = normalize
        self.sites = sites if sites is None or isinstance(sites, str) else list(sites)
        self.log_sparsity = log_sparsity
        self._site_list: list[Site] = []
        self._handles: list = []
        self._lambda = 0.0
        self._accumulate = 1
        self._loss_scale = 1.0
        self._reg_sum = torch.zeros(())
        self._reg_count = 0
        self._last_step = -1

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(stages=self.stages, normalize=self.normalize, sites=self.sites)

    def coefficient(self, step: int) -> float:
        """lambda at optimizer update ``step`` (t = 1 is the first update; Alg. 1 of arXiv 2402.13516).

        Leading stages with lambda = 0 are the substitution stage (lambda = 0 for t <= T_0). The
        first stage with lambda > 0 is the warm-up: lambda = lambda_1 from its first step T_0 + 1
        through T_1 (held, no ramp). Every later stage rises along a half sine: for
        T_{i-1} < t <= T_i, ``lambda = lambda_{i-1} + eta (lambda_i - lambda_{i-1})``,
        ``eta = (sin(-pi/2 + pi (t - T_{i-1}) / (T_i - T_{i-1})) + 1) / 2``; equal consecutive
        lambdas give a constant stage. After the last stage lambda stays at its last value.
        """
        stages = self.stages
        first = warmup_index(stages)
        if first == len(stages):
            return 0.0
        if step <= stages[first][1]:
            return stages[first][0] if first == 0 or step > stages[first - 1][1] else 0.0
        for (lam_prev, start), (lam, end) in zip(stages[first:], stages[first + 1:]):
            if step <= end:
                eta = 0.5 * (math.sin(-math.pi / 2 + math.pi * (step - start) / (end - start)) + 1)
                return lam_prev + eta * (lam - lam_prev)
        return stages[-1][0]

    @classmethod
    def preset(cls, name: str, total_steps: int | None = None, final_lambda: float | None = None,
               **kwargs: Any) -> "ProSparse":
        """The published schedule ``name`` (``"llama2-7b"``, ``"llama2-13b"``, ``"minicpm-1b"``;
        :data:`PAPER_SCHEDULES`), stage ends scaled to ``total_steps`` and lambdas to end at
        ``final_lambda`` (both default to the paper's). ``kwargs`` go to the constructor.
        In Hydra: ``_target_: actsparse.callbacks.ProSparse.preset``, ``name: llama2-7b``."""
        return cls(paper_stages(name, total_steps, final_lambda), **kwargs)

    # -- wiring ------------------------------------------------------------------------------
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._site_list = resolve_sites(pl_module, self.sites)
        not_relu = [s.name for s in self._site_list if not isinstance(s.activation, (torch.nn.ReLU, FATReLU))]
        if not_relu:
            rank_zero_warn(
                f"ProSparse sites {not_relu} do not use ReLU, so the L1 penalty cannot create exact "
                "zeros there; add ActivationSwap('relu') before ProSparse (ProSparse step 1).",
                stacklevel=2,
            )
        self._handles = [s.register_hook(self._inject) for s in self._site_list]
        callbacks = trainer.callbacks
        if self.log_sparsity and not any(isinstance(cb, SparsityMonitor) for cb in callbacks):
            # Right after this callback: Lightning's setup loop reaches it next, and it stays
            # before ModelCheckpoint, so a checkpoint holds the history up to its own step.
            callbacks.insert(callbacks.index(self) + 1, SparsityMonitor(self.sites))

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _inject(self, site: Site, x1: torch.Tensor) -> None:
        if not (torch.is_grad_enabled() and x1.requires_grad) or self._lambda == 0.0:
            return
        rows = x1.numel() // x1.shape[-1] if x1.dim() > 1 else 1
        norm = {"mean": rows, "element": x1.numel(), "sum": 1}[self.normalize]
        coef = self._lambda / (norm * self._accumulate)
        with torch.no_grad():
            self._reg_sum = self._reg_sum.to(x1.device) + x1.abs().sum(dtype=torch.float32) * (self._lambda / norm)
        scale = self._loss_scale
        # A detached view (same storage): a hook that captured x1 itself would form a cycle
        # x1 -> hook -> x1 that the garbage collector cannot free, leaking x1 every step.
        values = x1.detach()

        def add_penalty_grad(grad: torch.Tensor) -> torch.Tensor:
            return grad + (coef * scale) * values.sign().to(grad.dtype)

        x1.register_hook(add_penalty_grad)

    # -- per batch -----------------------------------------------------------------------------
    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._lambda = self.coefficient(trainer.global_step + 1)  # this batch's update is number t = g + 1
        self._accumulate = trainer.accumulate_grad_batches
        # 16-mixed scales the loss by the GradScaler's factor, which changes only when the
        # optimizer steps: read once per batch (one device sync on CUDA) and applied in the hooks.
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self._loss_scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
        self._last_step = trainer.global_step
        self._reg_count += 1

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        stepped = trainer.global_step != self._last_step
        if stepped and trainer.global_step % trainer.log_every_n_steps == 0:
            reg = self._reg_sum.to(pl_module.device) / max(1, self._reg_count)  # per micro-batch
            pl_module.log("prosparse/lambda", self.coefficient(trainer.global_step), on_step=True, on_epoch=False)
            pl_module.log("prosparse/reg_loss", reg, on_step=True, on_epoch=False, sync_dist=True)
        if stepped:
            self._reg_sum = torch.zeros(())
            self._reg_count = 0

    @override
    def state_dict(self) -> dict[str, Any]:
        # lambda is a function of trainer.global_step, which Lightning restores.
        return {"stages": self.stages, "normalize": self.normalize}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if [tuple(s) for s in state_dict["stages"]] != self.stages:
            rank_zero_warn(f"Resuming with stages {self.stages}; the checkpoint used {state_dict['stages']}.",
                           stacklevel=2)
