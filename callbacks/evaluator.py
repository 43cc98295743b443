"""SparsityEvaluator: PPL-p% sparsity of the model on the validation data, every n epochs, or the
Sparsing Law's activation-ratio curve (one CETT searched jointly over the last checkpoints)."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from actsparse.callbacks.history import Curves
from actsparse.evaluation.joint_cett import JointCETTResult, activation_ratio_at_cett, joint_cett
from actsparse.evaluation.ppl_sparsity import PPLSparsityResult, ppl_p_sparsity


class SparsityEvaluator(Callback):
    """Activation sparsity at a perplexity budget, measured on the validation data.

    Two modes:

    - ``joint_last=None`` (per checkpoint): at the end of validation, every ``every_n_epochs``
      epochs, runs :func:`~actsparse.evaluation.ppl_p_sparsity` for each ``p`` and logs
      ``val/ppl_p{p}_sparsity``, ``val/ppl_p{p}_cett`` and ``val/ppl_p{p}_ratio``: the CETT is
      searched again at every validation.
    - ``joint_last=n`` (the Sparsing Law paper's protocol): every validation keeps a snapshot of
      the weights (on the CPU, in memory); at the end of fitting, one CETT is searched jointly
      over the last ``n`` snapshots (:func:`~actsparse.evaluation.joint_cett`, the paper uses 5)
      for the first ``p``, and every snapshot's activation ratio is measured at that CETT
      (:func:`~actsparse.evaluation.activation_ratio_at_cett`). ``curve`` holds
      ``(global_step, activation ratio, ppl ratio)``; ``joint`` the search's result; both are also
      sent to the trainer's loggers as ``val/joint_p{p}_activation_ratio`` (per snapshot step)
      and ``val/joint_p{p}_cett``. Snapshots are not checkpointed: a resumed run measures only
      the snapshots taken after resuming.

    The search reads the validation data several times (about 3–6 dense passes). Under DDP each
    process evaluates its shard of the validation data and the search synchronizes, so the
    logged values are global (logged without further reduction). Skipped during the sanity check.

    Args:
        p: allowed perplexity increase(s) in percent.
        every_n_epochs: run at the end of every n-th validation epoch.
        max_batches: use at most this many validation batches (None: all).
        dataloader_idx: which validation dataloader, when there are several.
        joint_last: None (per checkpoint) or the number of last snapshots of the joint search.
        **options: passed to ``ppl_p_sparsity`` / ``joint_cett`` (``tol``, ``candidates``, ``loss_fn``, ...).

    Example:
        >>> SparsityEvaluator(p=[1, 5], every_n_epochs=2).keys
        ['val/ppl_p1_sparsity', 'val/ppl_p5_sparsity']
    """

    def __init__(self, p: float | list[float] = 1.0, every_n_epochs: int = 1, max_batches: int | None = None,
                 dataloader_idx: int = 0, joint_last: int | None = None, **options: Any) -> None:
        ps = [p] if isinstance(p, (int, float)) else list(p)
        if not ps or any(not float(v) > 0 for v in ps):
            raise ValueError(f"p must be > 0 (percent perplexity increase), got {p!r}.")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}.")
        if joint_last is not None and int(joint_last) < 1:
            raise ValueError(f"joint_last must be None (per-checkpoint search) or >= 1, got {joint_last}.")
        self.ps = [float(v) for v in ps]
        self.every_n_epochs, self.max_batches, self.dataloader_idx = every_n_epochs, max_batches, dataloader_idx
        self.joint_last = None if joint_last is None else int(joint_last)
        self.options = options
        self.results: dict[float, PPLSparsityResult] = {}
        self.history = Curves()  # (global step, logged values) of each per-checkpoint search
        self.snapshots: list[tuple[int, dict[str, torch.Tensor]]] = []
        self.joint: JointCETTResult | None = None
        self.curve: list[tuple[int, float, float]] = []
        self._loader = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(p=self.ps, every_n_epochs=self.every_n_epochs, max_batches=self.max_batches,
                                        dataloader_idx=self.dataloader_idx, joint_last=self.joint_last)

    @staticmethod
    def key(p: float, what: str = "sparsity") -> str:
        return f"val/ppl_p{float(p):g}_{what}"

    @property
    def keys(self) -> list[str]:
        return [self.key(p) for p in self.ps]

    def _val_loader(self, trainer: L.Trainer):
        loaders = trainer.val_dataloaders
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[self.dataloader_idx]
        return loaders

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        loaders = self._val_loader(trainer)
        if loaders is None:
            return
        if self.joint_last is not None:
            self._loader = loaders
            state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
            if self.snapshots and self.snapshots[-1][0] == trainer.global_step:
                self.snapshots[-1] = (trainer.global_step, state)
            else:
                self.snapshots.append((trainer.global_step, state))
            return
        logged: dict[str, float] = {}
        for p in self.ps:
            r = ppl_p_sparsity(pl_module, loaders, p, max_batches=self.max_batches, **self.options)
            self.results[p] = r
            logged[self.key(p)] = r.sparsity
            logged[self.key(p, "cett")] = r.cett
            logged[self.key(p, "ratio")] = r.ppl_ratio
        self.history.record(trainer.global_step, logged)
        for name, value in logged.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=False)

    def evaluate_snapshots(self, pl_module: L.LightningModule, loader=None) -> list[tuple[int, float, float]]:
        """The joint search over the last ``joint_last`` snapshots, then every snapshot's
        activation ratio at its CETT (``fit`` calls it at the end; also callable by hand)."""
        loader = loader if loader is not None else self._loader
        if not self.snapshots or loader is None:
            return []
        p = self.ps[0]
        base = copy.deepcopy(pl_module).cpu()
        last = []
        for _, state in self.snapshots[-self.joint_last:]:
            m = copy.deepcopy(base)
            m.load_state_dict(state)
            last.append(m)
        self.joint = joint_cett(last, loader, p, max_batches=self.max_batches, **self.options)
        del last
        ratio_options = {k: v for k, v in self.options.items() if k in ("loss_fn", "mask_fn", "sites",
                                                                         "calibration_dtype")}
        self.curve = []
        for step, state in self.snapshots:
            base.load_state_dict(state)
            r = activation_ratio_at_cett(base, loader, self.joint.cett, max_batches=self.max_batches, **ratio_options)
            self.curve.append((step, r.activation_ratio, r.ppl_ratio))
        return self.curve

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.joint_last is None or not self.snapshots:
            return
        self.evaluate_snapshots(pl_module)
        p = self.ps[0]
        for logger in trainer.loggers:
            for step, ratio, ppl in self.curve:
                logger.log_metrics({f"val/joint_p{p:g}_activation_ratio": ratio, f"val/joint_p{p:g}_ppl_ratio": ppl},
                                   step=step)
            logger.log_metrics({f"val/joint_p{p:g}_cett": self.joint.cett}, step=trainer.global_step)
            logger.save()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.state()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = Curves(state_dict["history"])
