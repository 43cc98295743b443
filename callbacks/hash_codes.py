"""``HashCodeMonitor``: neural hash-code metrics of the validation set after a validation, or of
the test set after a test."""

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
from actsparse.metrics.functional.code_categorization import METHODS, PROTOCOLS
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
    """After the validation of every ``every_n_epochs``-th epoch (``stage="validation"``), or at
    the end of a test (``stage="test"``: the codes of the test set), extract the neural codes
    (``1[out > 0]`` of the model's activation sites) of the evaluated set and log

    - ``hash/redundancy`` and ``hash/purity`` of the evaluated codes;
    - ``hash/<method>_acc`` for ``methods`` (``kmeans``, ``knn``, ``logreg``): classifiers fit on
      the codes of (up to ``max_fit_samples``) training samples, scored on the evaluated codes
      under ``protocol`` (``fit_predict``: held out; ``reference``: the authors' code, see
      :mod:`~actsparse.metrics.functional.code_categorization`);
    - ``hash/units``: the code length the classifiers see. Units that cannot tell samples apart
      are dropped first: those constant over the training codes (``fit_predict``) or over
      training ∪ evaluated codes (``reference``, as the authors' code);
    - with ``train_metrics=True`` also ``hash/train_redundancy``, ``hash/train_purity`` and
      ``hash/train_<method>_acc``: the same of the training codes (the classifiers scored on
      the codes they were fit on), for the study's train/test comparison, and
      ``hash/train_samples``, the number of training codes.

    Codes are extracted in extra eval-mode passes over the datasets behind the trainer's loaders
    (the training set from the datamodule when the trainer has no training loader, as in a
    test), in order, each DDP process taking every ``world``-th sample; the metrics gather all
    processes' codes (``dist_reduce_fx="cat"``) and the dropped units are decided from every
    process's counts, so every process logs the same values. Values go through ``pl_module.log``
    (hence ``trainer.loggers``, rank zero only, and ``trainer.callback_metrics``); with a
    ``WandbLogger`` the history so far is also sent as the table ``hash/history``. The history is
    kept in checkpoints.

    Any ``Recording`` another callback has attached also sees these extra forward passes.

    Example:
        >>> monitor = HashCodeMonitor(methods=("knn",), max_fit_samples=500)
        >>> monitor.state_key
        "HashCodeMonitor{'sites': None, 'methods': ('knn',), 'prefix': 'hash/', 'stage': 'validation', 'protocol': 'fit_predict'}"
    """

    STAGES = ("validation", "test")

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
        stage: str = "validation",
        protocol: str = "fit_predict",
        train_metrics: bool = False,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}.")
        if stage not in self.STAGES:
            raise ValueError(f"stage must be one of {', '.join(self.STAGES)} (which loop's end measures the codes), "
                             f"got {stage!r}.")
        if protocol not in PROTOCOLS:
            raise ValueError(f"Unknown categorization protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}.")
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise ValueError(f"Unknown categorization methods {unknown}; choose from {', '.join(METHODS)} (or none: []).")
        self.every_n_epochs = every_n_epochs
        self.sites = sites if sites is None or isinstance(sites, str) else tuple(sites)
        self.methods = tuple(methods)
        self.max_fit_samples, self.max_eval_samples = max_fit_samples, max_eval_samples
        self.categorization = dict(mapping=mapping, k=k, n_clusters=n_clusters, seed=seed)
        self.batch_size, self.prefix, self.log_table = batch_size, prefix, log_table
        self.stage, self.protocol, self.train_metrics = stage, protocol, train_metrics
        self.history = Curves()  # by optimizer step

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(sites=self.sites, methods=self.methods, prefix=self.prefix, stage=self.stage,
                                        protocol=self.protocol)

    # -- extraction ----------------------------------------------------------------------------
    def _codes(self, trainer: L.Trainer, pl_module: L.LightningModule, loader: DataLoader, limit: int | None):
        dataset = loader.dataset
        from actsparse.data.loader import EvalShardSampler  # the data room, only when codes are taken

        sampler = EvalShardSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank)
        ordered = DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=loader.collate_fn)
        per_rank = None if limit is None else -(-limit // trainer.world_size)
        # drop_constant=False: every process must keep the same units so the codes concatenate
        return neural_codes(pl_module, ordered, sites=self.sites, drop_constant=False, max_samples=per_rank)

    def _loaders(self, trainer: L.Trainer) -> tuple[DataLoader | None, DataLoader | None]:
        """(evaluated, fitting) loaders: the stage's own, and the training loader of the fit, or
        the datamodule's when the trainer has none (a test, a validate call)."""
        evaluated = _first_loader(trainer.test_dataloaders if self.stage == "test" else trainer.val_dataloaders)
        fitting = _first_loader(trainer.train_dataloader) if trainer.state.fn == "fit" else None
        datamodule = getattr(trainer, "datamodule", None)
        if fitting is None and datamodule is not None and callable(getattr(datamodule, "train_dataloader", None)):
            fitting = _first_loader(datamodule.train_dataloader())
        return evaluated, fitting

    def _kept_units(self, trainer: L.Trainer, *code_sets) -> torch.Tensor:
        """Units not constant over ``code_sets`` on every process (counts summed over DDP)."""
        ones = sum(c.bits().sum(0, dtype=torch.float64) for c in code_sets)
        n = torch.tensor(float(sum(len(c) for c in code_sets)), dtype=torch.float64)
        if trainer.world_size > 1:
            ones, n = trainer.strategy.reduce(ones, reduce_op="sum"), trainer.strategy.reduce(n, reduce_op="sum")
        return (ones > 0) & (ones < n)

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """The metrics now (all processes must call it together under DDP)."""
        eval_loader, train_loader = self._loaders(trainer)
        if eval_loader is None:
            where = "trainer.test_dataloaders" if self.stage == "test" else "trainer.val_dataloaders"
            raise RuntimeError(f"HashCodeMonitor(stage={self.stage!r}) needs a {self.stage} DataLoader ({where} is empty).")
        device = pl_module.device
        evaluated = self._codes(trainer, pl_module, eval_loader, self.max_eval_samples)
        if evaluated.labels is None:
            raise ValueError("HashCodeMonitor needs (x, y) batches: hash-code purity and categorization use labels.")
        out = self._code_stats(evaluated, "", device)
        out["units"] = float(evaluated.units)
        if self.methods and train_loader is not None:
            fit = self._codes(trainer, pl_module, train_loader, self.max_fit_samples)
            if self.train_metrics:
                samples = torch.tensor(float(len(fit)))
                if trainer.world_size > 1:
                    samples = trainer.strategy.reduce(samples, reduce_op="sum")
                out.update(self._code_stats(fit, "train_", device), train_samples=float(samples))
            kept = self._kept_units(trainer, fit, *([evaluated] if self.protocol == "reference" else []))
            categorize = CodeCategorization(methods=self.methods, protocol=self.protocol,
                                            train_accuracy=self.train_metrics, **self.categorization).to(device)
            categorize.update(fit.bits()[:, kept], fit.labels, split="train")
            categorize.update(evaluated.bits()[:, kept], evaluated.labels, split="test")
            out["units"] = float(kept.sum())
            out.update({f"{key}_acc": float(value) for key, value in categorize.compute().items()})  # train_knn_acc, knn_acc
        return out

    @staticmethod
    def _code_stats(codes, tag: str, device: torch.device) -> dict[str, float]:
        redundancy = RedundancyRatio(packed=True).to(device)
        purity = HashCodePurity(packed=True).to(device)
        redundancy.update(codes.packed)
        purity.update(codes.packed, codes.labels)
        return {f"{tag}redundancy": float(redundancy.compute()), f"{tag}purity": float(purity.compute())}

    # -- hooks ---------------------------------------------------------------------------------
    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stage != "validation" or trainer.sanity_checking:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._measure_and_log(trainer, pl_module)

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stage == "test":
            self._measure_and_log(trainer, pl_module)

    def _measure_and_log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
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
