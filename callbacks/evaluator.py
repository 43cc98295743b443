"""SparsityEvaluator: PPL-p% sparsity of the model on the validation data, every n epochs."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from actsparse.evaluation.ppl_sparsity import PPLSparsityResult, ppl_p_sparsity


class SparsityEvaluator(Callback):
    """At the end of validation, every ``every_n_epochs`` epochs, runs
    :func:`~actsparse.evaluation.ppl_p_sparsity` for each ``p`` on the
    validation dataloader and logs ``val/ppl_p{p}_sparsity``, ``val/ppl_p{p}_cett`` and
    ``val/ppl_p{p}_ratio``.

    The search reads the validation data several times (about 3–6 dense passes). Under DDP each
    process evaluates its shard of the validation data and the search synchronizes, so the
    logged values are global (logged without further reduction). Skipped during the sanity check.

    Args:
        p: allowed perplexity increase(s) in percent.
        every_n_epochs: run at the end of every n-th validation epoch.
        max_batches: use at most this many validation batches (None: all).
        dataloader_idx: which validation dataloader, when there are several.
        **options: passed to ``ppl_p_sparsity`` (``tol``, ``candidates``, ``loss_fn``, ...).

    Example:
        >>> SparsityEvaluator(p=[1, 5], every_n_epochs=2).keys
        ['val/ppl_p1_sparsity', 'val/ppl_p5_sparsity']
    """

    def __init__(self, p: float | list[float] = 1.0, every_n_epochs: int = 1, max_batches: int | None = None,
                 dataloader_idx: int = 0, **options: Any) -> None:
        ps = [p] if isinstance(p, (int, float)) else list(p)
        if not ps or any(not float(v) > 0 for v in ps):
            raise ValueError(f"p must be > 0 (percent perplexity increase), got {p!r}.")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}.")
        self.ps = [float(v) for v in ps]
        self.every_n_epochs, self.max_batches, self.dataloader_idx = every_n_epochs, max_batches, dataloader_idx
        self.options = options
        self.results: dict[float, PPLSparsityResult] = {}
        self.history: list[tuple[int, dict[str, float]]] = []

    @staticmethod
    def key(p: float, what: str = "sparsity") -> str:
        return f"val/ppl_p{float(p):g}_{what}"

    @property
    def keys(self) -> list[str]:
        return [self.key(p) for p in self.ps]

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        loaders = trainer.val_dataloaders
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[self.dataloader_idx]
        if loaders is None:
            return
        logged: dict[str, float] = {}
        for p in self.ps:
            r = ppl_p_sparsity(pl_module, loaders, p, max_batches=self.max_batches, **self.options)
            self.results[p] = r
            logged[self.key(p)] = r.sparsity
            logged[self.key(p, "cett")] = r.cett
            logged[self.key(p, "ratio")] = r.ppl_ratio
        self.history.append((trainer.global_step, logged))
        for name, value in logged.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=False)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [(step, dict(v)) for step, v in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [(step, dict(v)) for step, v in state_dict["history"]]
