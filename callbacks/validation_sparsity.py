"""ValidationSparsity: the activation sparsity of the validation forwards, and optionally the
perplexity and sparsity the model would have under FATReLU(t) (ProSparse step 3), logged at every
validation so that a study reads them from ``summary.json`` like any other metric."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import lightning as L
from actsparse.metrics.sparsity import MEAN, ActivationSparsity
from actsparse.plugins.activations import FATReLU
from actsparse.plugins.recording import Recording
from actsparse.plugins.sites import resolve_sites
from actsparse.plugins.swap import swap_activation
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from actsparse.evaluation.perplexity import perplexity


class ValidationSparsity(Callback):
    """Logs ``val/sparsity``: the fraction of exact zeros of the sites' tensors over the validation
    forwards (pooled over sites and tokens: ProSparse's and DESIGN §4's measure), read from an
    :class:`~actsparse.metrics.ActivationSparsity` fed during Lightning's own validation loop, so
    it costs no extra pass and covers exactly the batches ``val/loss`` covers.

    With ``threshold`` set, every validation also scores a copy of the model whose ReLU sites are
    FATReLU(threshold) (what :class:`~actsparse.callbacks.ThresholdShift` makes of it after
    training) on the same validation batches, with
    :func:`~actsparse.evaluation.perplexity`: ``val/fatrelu/loss``, ``val/fatrelu/ppl`` and
    ``val/fatrelu/sparsity``. The shift is measured, not trained through: the model keeps training
    with its own activation. Sites that are not ReLU (a SiLU baseline) are skipped with nothing logged.

    Args:
        sites: None (all sites) or glob pattern(s) on site names.
        threshold: None, or the FATReLU threshold t to score the model at (0.01 in the paper).
        max_batches: validation batches of the FATReLU pass (None: as many as Lightning's
            validation ran, so it scores the batches ``val/loss`` saw).

    Example:
        >>> ValidationSparsity(threshold=0.01).keys
        ['val/sparsity', 'val/fatrelu/loss', 'val/fatrelu/ppl', 'val/fatrelu/sparsity']
    """

    def __init__(self, sites: str | Sequence[str] | None = None, threshold: float | None = None,
                 max_batches: int | None = None) -> None:
        if threshold is not None and not float(threshold) >= 0:
            raise ValueError(f"threshold must be None or >= 0 (the FATReLU threshold), got {threshold!r}.")
        if max_batches is not None and int(max_batches) < 1:
            raise ValueError(f"max_batches must be None (all) or >= 1, got {max_batches!r}.")
        self.sites = sites if sites is None or isinstance(sites, str) else list(sites)
        self.threshold = None if threshold is None else float(threshold)
        self.max_batches = None if max_batches is None else int(max_batches)
        self.recording: Recording | None = None
        self.metric: ActivationSparsity | None = None

    @property
    def keys(self) -> list[str]:
        keys = ["val/sparsity"]
        if self.threshold is not None:
            keys += ["val/fatrelu/loss", "val/fatrelu/ppl", "val/fatrelu/sparsity"]
        return keys

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(sites=self.sites, threshold=self.threshold, max_batches=self.max_batches)

    def _observe(self, site, tensor) -> None:
        self.metric.update(tensor, name=site.name)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.recording is None:
            self.recording = Recording(pl_module, self.sites, what=(), observers=[self._observe]).attach()
            self.recording.enabled = False
            self.metric = ActivationSparsity(list(self.recording)).to(pl_module.device)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.recording is not None:
            self.recording.detach()
            self.recording = None

    @override
    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.recording is not None and not trainer.sanity_checking:
            self.recording.enabled = True

    @override
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.recording is not None:
            self.recording.enabled = False

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.metric is None:
            return
        try:
            values = self.metric.compute()  # a collective: synchronized over DDP processes
        except RuntimeError:  # no validation forward was recorded on any process
            return
        finally:
            self.metric.reset()
        logged = {"val/sparsity": float(values[MEAN])}
        if self.threshold is not None:
            logged.update(self.fatrelu_scores(trainer, pl_module))
        for key, value in logged.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False)

    def fatrelu_scores(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Loss, perplexity and sparsity of a FATReLU(threshold) copy of ``pl_module`` on the
        validation batches; empty when the sites are not ReLU (nothing to shift)."""
        sites = resolve_sites(pl_module, self.sites)
        if not sites or not all(isinstance(s.activation, (nn.ReLU, FATReLU)) for s in sites):
            return {}
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        shifted = copy.deepcopy(pl_module)
        swap_activation(shifted, "fatrelu", threshold=self.threshold, sites=self.sites)
        n = self.max_batches if self.max_batches is not None else int(trainer.num_val_batches[0])
        r = perplexity(shifted, loader, max_batches=n, sites=self.sites)
        return {"val/fatrelu/loss": r.loss, "val/fatrelu/ppl": math.exp(r.loss), "val/fatrelu/sparsity": r.sparsity}
