"""``HashCodeMonitor``: neural hash-code metrics of the validation set after each validation."""

from __future__ import annotations

from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from typing_extensions import override

from actsparse.callbacks.history import Curves
from actsparse.evaluation.hash_codes import neural_codes
from actsparse.metrics.functional.code_categorization import METHODS
from actsparse.metrics.hash_codes import CodeCategorization, HashCodePurity, RedundancyRatio


def _first_loader(loaders: Any) -> DataLoader | None:
    if isinstance(loaders, DataLoader):
        return loaders
    if isinstance(loaders, (list, tuple)) and loaders:
        return _first_loader(loaders[0])
    if isinstance(loaders, dict) and loaders:
        return _first_loader(next(iter(loaders.values())))
    return None


class HashCodeMonitor(Callback):
    """After the validation of every ``every_n_epochs``-th epoch, extract the neural codes
    (``1[out > 0]`` of the model's activation sites) of the validation set and log

    - ``hash/redundancy`` and ``hash/purity`` of the validation codes;
    - ``hash/<method>_acc`` for ``methods`` (``kmeans``, ``knn``, ``logreg``): classifiers fit on
      the codes of (up to ``max_fit_samples``) training samples, scored on the validation codes;
    - ``hash/units``: the code length.

    Codes are extracted in extra eval-mode passes over the datasets behind the trainer's val and
    train loaders, in order, each DDP process taking every ``world``-th sample; the metrics
    gather all processes' codes (``dist_reduce_fx="cat"``), so every process logs the same
    values. Values go through ``pl_module.log`` (hence ``trainer.loggers``, rank zero only, and
    ``trainer.callback_metrics``); with a ``WandbLogger`` the history so far is also sent as the
    table ``hash/history``. The history is kept in checkpoints.

    Any ``Recording`` another callback has attached also sees these extra forward passes.

    Example:
        >>> monitor = HashCodeMonitor(methods=("knn",), max_fit_samples=500)
        >>> monitor.state_key
        "HashCodeMonitor{'sites': None, 'methods': ('knn',), 'prefix': 'hash/'}"
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        sites: str | Sequence[str] | None = None,
        methods: Sequence[str] = METHODS,
        max_fit_samples: int | None = 10_000,
        max_eval_samples: int | None = None,
        mapping: str = "majority",
        k: int = 9,
        n_clusters: int = 10,
        seed: int = 0,
        batch_size: int = 512,
        prefix: str = "hash/",
        log_table: bool = True,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}.")
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise ValueError(f"Unknown categorization methods {unknown}; choose from {', '.join(METHODS)} (or none: []).")
        self.every_n_epochs = every_n_epochs
        self.sites = sites if sites is None or isinstance(sites, str) else tuple(sites)
        self.methods = tuple(methods)
        self.max_fit_samples, self.max_eval_samples = max_fit_samples, max_eval_samples
        self.categorization = dict(mapping=mapping, k=k, n_clusters=n_clusters, seed=seed)
        self.batch_size, self.prefix, self.log_table = batch_size, prefix, log_table
        self.history = Curves()  # by optimizer step

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(sites=self.sites, methods=self.methods, prefix=self.prefix)

    # -- extraction ----------------------------------------------------------------------------
    def _codes(self, trainer: L.Trainer, pl_module: L.LightningModule, loader: DataLoader, limit: int | None):
        dataset = loader.dataset
        from actsparse.data.loader import EvalShardSampler  # the data room, only when codes are taken

        sampler = EvalShardSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank)
        ordered = DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=loader.collate_fn)
        per_rank = None if limit is None else -(-limit // trainer.world_size)
        # drop_constant=False: every process must keep the same units so the codes concatenate
        return neural_codes(pl_module, ordered, sites=self.sites, drop_constant=False, max_samples=per_rank)

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """The metrics now (all processes must call it together under DDP)."""
        val_loader = _first_loader(trainer.val_dataloaders)
        if val_loader is None:
            raise RuntimeError("HashCodeMonitor needs a validation DataLoader (trainer.val_dataloaders is empty).")
        device = pl_module.device
        val = self._codes(trainer, pl_module, val_loader, self.max_eval_samples)
        if val.labels is None:
            raise ValueError("HashCodeMonitor needs (x, y) validation batches: hash-code purity and categorization use labels.")
        redundancy = RedundancyRatio(packed=True).to(device)
        purity = HashCodePurity(packed=True).to(device)
        redundancy.update(val.packed)
        purity.update(val.packed, val.labels)
        out = {"redundancy": float(redundancy.compute()), "purity": float(purity.compute()), "units": float(val.units)}
        train_loader = _first_loader(trainer.train_dataloader) if trainer.state.fn == "fit" else None
        if self.methods and train_loader is not None:
            fit = self._codes(trainer, pl_module, train_loader, self.max_fit_samples)
            categorize = CodeCategorization(methods=self.methods, packed=True, **self.categorization).to(device)
            categorize.update(fit.packed, fit.labels, split="train")
            categorize.update(val.packed, val.labels, split="test")
            out.update({f"{m}_acc": float(v) for m, v in categorize.compute().items()})
        return out

    # -- hooks ---------------------------------------------------------------------------------
    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        with torch.no_grad():
            values = self.measure(trainer, pl_module)
        # identical on every process (the metrics gathered all codes); sync_dist only averages equals
        pl_module.log_dict({self.prefix + k: v for k, v in values.items()}, on_step=False, on_epoch=True, sync_dist=True)
        self.history.record(trainer.global_step, {"epoch": float(trainer.current_epoch), **values})
        self._log_table(trainer)

    @rank_zero_only
    def _log_table(self, trainer: L.Trainer) -> None:
        if not self.log_table:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                columns = ["step", *self.history.last]
                data = [[step, *(values.get(c) for c in columns[1:])] for step, values in self.history]
                logger.log_table(key=f"{self.prefix}history", columns=columns, data=data, step=trainer.global_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.state()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = Curves(state_dict["history"])
