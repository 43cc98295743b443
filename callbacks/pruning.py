"""Iterative magnitude pruning with rewinding (``IterativeMagnitudePruning``) and
Activating-while-Pruning (``ActivatingWhilePruning``, DESIGN §4), on ``torch.nn.utils.prune``.

How AP hooks in: both ``IterativeMagnitudePruning`` and Lightning's ``ModelPruning`` prune
through a public method ``apply_pruning(amount)``, called at every pruning event *before*
rewinding (``ModelPruning._run_pruning`` calls ``apply_pruning`` and then
``apply_lottery_ticket_hypothesis``). At ``on_fit_start`` AP wraps that method of the pruning
callback it finds in ``trainer.callbacks``: the wrapped call reads the event's total ``amount``
(the pruning rate p: a fraction of the surviving weights, or a count), lets the original
method prune ``p - ap_rate`` by magnitude, then prunes ``ap_rate`` (of the weights surviving
before the event) among the surviving negative weights with the smallest change since the
round started. Rewinding then happens as configured. AP snapshots the round-start weights at
the first training epoch start after each event (after rewinding) and at the start of fit.
"""

from __future__ import annotations

from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelPruning
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.nn.utils import prune
from typing_extensions import override

from actsparse.callbacks.history import Curves
from actsparse.plugins.activations import FATReLU
from actsparse.plugins.pruning import (
    activating_prune, default_parameters, magnitude_prune, mask, surviving, total, values,
)
from actsparse.plugins.sites import find_sites


def _names(pl_module: nn.Module, params) -> list[str]:
    """``<module path>.<name>`` of each parameter, as in the module's ``state_dict``."""
    where = {id(m): n for n, m in pl_module.named_modules()}
    missing = [type(m).__name__ for m, _ in params if id(m) not in where]
    if missing:
        raise ValueError(f"Parameters to prune belong to modules outside the LightningModule: {missing}.")
    return [f"{where[id(m)]}.{n}" if where[id(m)] else n for m, n in params]


def _count(amount: float | int, alive: int) -> int:
    return int(amount) if isinstance(amount, int) else round(float(amount) * alive)


class IterativeMagnitudePruning(Callback):
    """Iterative global magnitude pruning with rewinding (lottery-ticket style).

    Training runs in rounds of ``epochs_per_round`` epochs. At the end of each round (up to
    ``rounds`` times) it prunes ``amount`` of the surviving weights (a fraction, or a count
    when an int) with the smallest ``|w|`` over all pruned parameters together, then rewinds
    every parameter of the module to its values at the end of epoch ``rewind_epoch`` (0: the
    initial weights) and, with ``reset_optimizer``, clears the optimizer state. Fit for
    ``(rounds + 1) * epochs_per_round`` epochs to train the last pruned network.

    Pruned parameters default to the ``weight`` of every ``nn.Linear``/``nn.ConvNd``. Logs
    ``prune/remaining`` (surviving fraction) and ``prune/remaining/<parameter>`` at the end of
    every round, before its pruning: the fraction that round trained with, which is what a
    validation at the same epoch end measured. ``history``
    (:class:`~actsparse.callbacks.history.Curves` by epoch) keeps the fractions after each event
    with the round number. Checkpoints hold ``weight = orig * mask`` (loadable
    without this callback) and the masks and rewind point in the callback state, so training
    resumes with the same masks.

    Example:
        >>> imp = IterativeMagnitudePruning(amount=0.2, epochs_per_round=3, rounds=8)
        >>> round(imp.remaining_after(8), 4)
        0.1678
    """

    def __init__(self, amount: float | int = 0.2, epochs_per_round: int = 1, rounds: int | None = None,
                 rewind_epoch: int = 0, parameters: Sequence[tuple[nn.Module, str]] | None = None,
                 reset_optimizer: bool = True, log: bool = True) -> None:
        if isinstance(amount, bool) or not ((isinstance(amount, float) and 0 < amount < 1) or (isinstance(amount, int) and amount > 0)):
            raise ValueError(f"amount must be a fraction in (0, 1) of the surviving weights or a positive count, got {amount!r}.")
        if epochs_per_round < 1 or (rounds is not None and rounds < 0):
            raise ValueError(f"epochs_per_round must be >= 1 and rounds >= 0, got {epochs_per_round}, {rounds}.")
        if not 0 <= rewind_epoch < epochs_per_round:
            raise ValueError(f"rewind_epoch={rewind_epoch} must be in [0, epochs_per_round={epochs_per_round}): "
                             "the rewind point is taken during the first round.")
        self.amount, self.epochs_per_round, self.rounds = amount, epochs_per_round, rounds
        self.rewind_epoch, self.reset_optimizer, self.log = rewind_epoch, reset_optimizer, log
        self._given = list(parameters) if parameters is not None else None
        self.parameters_to_prune: list[tuple[nn.Module, str]] = []
        self.names: list[str] = []
        self.rounds_done = 0
        self.history = Curves()
        self._rewind: dict[str, torch.Tensor] | None = None
        self._restored_masks: dict[str, torch.Tensor] | None = None
        self._module: nn.Module | None = None

    def remaining_after(self, rounds: int) -> float:
        """Surviving fraction after ``rounds`` events of a fractional ``amount``."""
        return (1 - float(self.amount)) ** rounds

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(amount=self.amount, epochs_per_round=self.epochs_per_round,
                                        rounds=self.rounds, rewind_epoch=self.rewind_epoch)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._module = pl_module
        self.parameters_to_prune = self._given or default_parameters(pl_module)
        self.names = _names(pl_module, self.parameters_to_prune)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restored_masks is not None:  # resuming: put the masks back on the loaded weights
            for (module, name), key in zip(self.parameters_to_prune, self.names):
                if key in self._restored_masks:
                    prune.custom_from_mask(module, name, mask=self._restored_masks[key].to(values(module, name).device))
            self._restored_masks = None
        if self._rewind is None and self.rewind_epoch == 0:
            self._rewind = self._snapshot(pl_module)

    @staticmethod
    def _snapshot(pl_module: nn.Module) -> dict[str, torch.Tensor]:
        return {k.removesuffix("_orig"): p.detach().clone() for k, p in pl_module.named_parameters()}

    @torch.no_grad()
    def rewind(self, pl_module: nn.Module) -> None:
        """Copy the rewind point into every parameter (pruned ones keep their masks)."""
        for key, p in pl_module.named_parameters():
            p.copy_(self._rewind[key.removesuffix("_orig")])
        for module, name in self.parameters_to_prune:
            if hasattr(module, name + "_mask"):
                setattr(module, name, values(module, name) * mask(module, name))

    def apply_pruning(self, amount: float | int) -> None:
        """Prune ``amount`` (fraction of surviving weights, or a count) by global magnitude."""
        magnitude_prune(self.parameters_to_prune, _count(amount, surviving(self.parameters_to_prune)))

    def remaining(self) -> dict[str, float]:
        params = self.parameters_to_prune
        out = {"prune/remaining": surviving(params) / total(params)}
        for (m, n), key in zip(params, self.names):
            out[f"prune/remaining/{key}"] = float(mask(m, n).sum()) / values(m, n).numel()
        return out

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        done = trainer.current_epoch + 1
        if self._rewind is None and done == self.rewind_epoch:
            self._rewind = self._snapshot(pl_module)
        if done % self.epochs_per_round:
            return
        if self.log:  # the fraction the finished round trained with: what its validation measured
            pl_module.log_dict(self.remaining(), on_step=False, on_epoch=True)
        if self.rounds is not None and self.rounds_done >= self.rounds:
            return
        self.apply_pruning(self.amount)
        self.rounds_done += 1
        self.rewind(pl_module)
        if self.reset_optimizer:
            for optimizer in trainer.optimizers:
                optimizer.state.clear()
        self.history.record(trainer.current_epoch, {"round": float(self.rounds_done), **self.remaining()})

    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is None:
            return
        for key in self.names:
            if key + "_mask" in state:
                state[key] = state.pop(key + "_orig") * state.pop(key + "_mask")

    @override
    def state_dict(self) -> dict[str, Any]:
        masks = {}
        for (m, n), key in zip(self.parameters_to_prune, self.names):
            if hasattr(m, n + "_mask"):
                masks[key] = mask(m, n).detach().cpu().bool()
        return {"rounds_done": self.rounds_done, "history": self.history.state(), "masks": masks,
                "rewind": None if self._rewind is None else {k: v.cpu() for k, v in self._rewind.items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rounds_done = int(state_dict["rounds_done"])
        self.history = Curves(state_dict["history"])
        self._restored_masks = dict(state_dict["masks"])
        rewind = state_dict["rewind"]
        device = None if self._module is None else next(self._module.parameters()).device
        self._rewind = None if rewind is None else {k: v.to(device) for k, v in rewind.items()}


class ActivatingWhilePruning(Callback):
    """Activating-while-Pruning (AP, DESIGN §4) inside iterative magnitude pruning.

    At every pruning event of the pruning callback in the same ``Trainer``
    (:class:`IterativeMagnitudePruning`, or Lightning's ``ModelPruning`` with
    ``use_global_unstructured=True``), whose rate p is the event's total: the magnitude step
    prunes ``p - ap_rate`` and AP prunes ``ap_rate`` — both fractions of the weights surviving
    before the event — taking, among the surviving *negative* weights, those whose change since
    the round started ``|w_T - w_start|`` is smallest. Removing such negative weights raises
    pre-activations, waking up ReLU neurons. The paper's defaults are p = 0.2, ap_rate = 0.02.
    (How the wrapping works: see the module docstring.) The round-start snapshot is part of the
    callback state, so it survives checkpoint/resume; ``events`` (:class:`~actsparse.callbacks.history.Curves`
    by epoch) records each event's counts.

    Raises (at fit start): ``ValueError`` when ``ap_rate`` is not below the pruning rate, when
    the model has no ReLU/FATReLU activation site, or when no (or more than one) pruning
    callback is found.

    Example:
        >>> from lightning.pytorch.callbacks import ModelPruning
        >>> callbacks = [ModelPruning("l1_unstructured", amount=0.2, use_lottery_ticket_hypothesis=True),
        ...              ActivatingWhilePruning(ap_rate=0.02)]
    """

    def __init__(self, ap_rate: float = 0.02) -> None:
        if isinstance(ap_rate, bool) or not isinstance(ap_rate, (int, float)) or not 0 < ap_rate < 1:
            raise ValueError(f"ap_rate must be a fraction in (0, 1) of the surviving weights (e.g. 0.02), got {ap_rate!r}.")
        self.ap_rate = float(ap_rate)
        self.start: dict[str, torch.Tensor] | None = None
        self.pending = True
        self.events = Curves()
        self.pruner: Callback | None = None
        self._original = None
        self._params: list[tuple[nn.Module, str]] = []
        self._names: list[str] = []
        self._epoch = 0

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(ap_rate=self.ap_rate)

    def _check_rate(self, amount: Any, alive: int | None = None) -> None:
        if callable(amount) or amount is None:
            return
        rate = amount / alive if isinstance(amount, int) and alive else amount
        if isinstance(amount, int) and not alive:
            return
        if self.ap_rate >= rate:
            raise ValueError(
                f"ap_rate={self.ap_rate} must be below the pruning rate ({amount!r} of the surviving weights): "
                "AP's share is part of each pruning event. Lower ap_rate (the paper uses 0.02 of 0.2) "
                "or raise the pruning callback's amount.")

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        try:
            sites = find_sites(pl_module)
        except ValueError as err:
            raise ValueError(f"ActivatingWhilePruning needs ReLU activation sites to activate: {err}") from err
        if not any(isinstance(s.activation, (nn.ReLU, FATReLU)) for s in sites):
            acts = sorted({type(s.activation).__name__ for s in sites})
            raise ValueError(
                f"ActivatingWhilePruning activates ReLU neurons, but {type(pl_module).__name__}'s activation sites use "
                f"{acts}. Use ReLU (e.g. model.activation=relu, or actsparse.callbacks.swap.ActivationSwap('relu')).")

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pruners = [cb for cb in trainer.callbacks if isinstance(cb, (IterativeMagnitudePruning, ModelPruning))]
        if len(pruners) != 1:
            raise ValueError(
                f"ActivatingWhilePruning needs exactly one pruning callback in the Trainer (IterativeMagnitudePruning or "
                f"lightning's ModelPruning), found {len(pruners)}: add one, e.g. IterativeMagnitudePruning(amount=0.2).")
        pruner = pruners[0]
        if isinstance(pruner, ModelPruning):
            if not pruner._use_global_unstructured:
                raise ValueError("ActivatingWhilePruning composes with ModelPruning(use_global_unstructured=True) only: "
                                 "AP's share is a global fraction of the surviving weights.")
            self._params = list(pruner._parameters_to_prune)
        else:
            self._params = list(pruner.parameters_to_prune)
        self._check_rate(pruner.amount, surviving(self._params))
        self._names = _names(pl_module, self._params)
        self.pruner, self._original = pruner, pruner.apply_pruning
        pruner.apply_pruning = self._apply_pruning  # instance attribute: shadows the method

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.pruner is not None:
            del self.pruner.apply_pruning  # back to the class's method
            self.pruner, self._original = None, None

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch = trainer.current_epoch
        if self.pending or self.start is None:
            self.start = {key: values(m, n).detach().clone() for (m, n), key in zip(self._params, self._names)}
            self.pending = False

    def _apply_pruning(self, amount: float | int) -> None:
        alive = surviving(self._params)
        self._check_rate(amount, alive)
        event = _count(amount, alive)
        k_ap = round(self.ap_rate * alive)
        self._original(event - k_ap)  # the magnitude step, as a count (ModelPruning: global)
        removed = activating_prune(self._params, [self.start[key] for key in self._names], k_ap)
        if removed < k_ap:
            rank_zero_warn(f"ActivatingWhilePruning: only {removed} surviving negative weights, fewer than the {k_ap} asked.")
        self.events.record(self._epoch, {"surviving_before": float(alive), "magnitude": float(event - k_ap),
                                         "activating": float(removed)})
        self.pending = True

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"start": None if self.start is None else {k: v.cpu() for k, v in self.start.items()},
                "pending": self.pending, "events": self.events.state()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        start = state_dict["start"]
        self.start = None if start is None else dict(start)
        self.pending = bool(state_dict["pending"])
        self.events = Curves(state_dict["events"])
