"""GO-term prediction from residue graphs as a LightningModule (ProteinRPN's training, DESIGN §4).

Loss (per training batch of graphs), with the reference code's weights as defaults:

    L = BCE(logits, y)                                   multi-label GO terms
      + supcon_weight  * SupCon(z, y)                    graphs sharing terms pulled together
      + infonce_weight * InfoNCE(z, z')                  z' from a perturbed view (coordinate noise + edge dropout)
      + site_weight    * BCE(node_logits, site)          residue-level supervision when graphs carry ``site``

The paper pretrains its region proposal on PDBSite functional-site annotations; ``site_weight``
does that supervision jointly, and is skipped for models without a proposal or graphs without
``site``. SupCon for multi-label targets weights each pair by the Jaccard overlap of their term
sets. Logs ``train/loss`` (and each part), and after each validation/test ``<stage>/fmax`` with
``<stage>/fmax_coverage``, ``<stage>/aupr_micro``, ``<stage>/aupr_macro``, ``<stage>/smin``,
``<stage>/loss``, and for region-proposal models ``<stage>/site_precision`` / ``<stage>/site_recall``
of the anchors (score >= 0.5) against the known functional residues and ``<stage>/kept_recall``
(the fraction of those residues that survive node drop). The GO metrics follow the field's
conventions (:mod:`actsparse.metrics.functional.go_terms`); when the datamodule offers a GO graph
(``go_ancestors``) predictions are propagated up it, and Smin's information content is the
datamodule's ``information_content`` of the training labels (conditional on the parents when it
has the graph).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryPrecision, BinaryRecall

from actsparse.data.protein_rpn.perturb import perturbed_view
from actsparse.metrics.go_terms import AUPR, Fmax, Smin

__all__ = ["ProteinFunction", "info_nce_loss", "supervised_contrastive_loss"]


def supervised_contrastive_loss(z: torch.Tensor, y: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Multi-label SupCon: ``-Σ_j w_ij log softmax_j(sim_i·/τ) / Σ_j w_ij`` averaged over anchors
    with any positive, ``w_ij`` the Jaccard overlap of the term sets (0 on the diagonal).
    Zero when no two graphs share a term."""
    z = F.normalize(z, dim=-1)
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = (z @ z.t() / temperature).masked_fill(eye, float("-inf"))
    log_prob = torch.log_softmax(sim, dim=1).masked_fill(eye, 0.0)
    yb = (y > 0).float()
    inter = yb @ yb.t()
    union = yb.sum(1, keepdim=True) + yb.sum(1) - inter
    weight = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter)).masked_fill(eye, 0.0)
    has = weight.sum(1) > 0
    if not bool(has.any()):
        return z.sum() * 0.0
    per_anchor = -(weight * log_prob).sum(1)[has] / weight.sum(1)[has]
    return per_anchor.mean()


def info_nce_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent / InfoNCE over 2N views: each view's positive is its pair, the other 2N - 2 are negatives."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    n = z1.shape[0]
    sim = (z @ z.t() / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


class StageMetrics(nn.Module):
    """The metrics of one stage (validation or test) for ``num_terms`` GO terms, propagated up
    ``ancestors`` when given."""

    def __init__(self, num_terms: int, ancestors: torch.Tensor | None = None, ic: torch.Tensor | None = None) -> None:
        super().__init__()
        self.fmax = Fmax(ancestors=ancestors, details=True)
        self.smin = Smin(ic=ic, ancestors=ancestors, num_terms=num_terms)
        self.aupr_micro, self.aupr_macro = AUPR("micro", ancestors), AUPR("macro", ancestors)
        self.loss = MeanMetric()
        self.site_precision, self.site_recall, self.kept_recall = BinaryPrecision(), BinaryRecall(), BinaryRecall()


class ProteinFunction(L.LightningModule):
    """Trains a ProteinRPN (or the GMT baseline, or any module returning ``.logits`` and
    ``.embedding`` for a batch of graphs) on multi-label GO terms; see the module docstring.

    Example:
        >>> from actsparse.models.protein_rpn import ProteinRPN
        >>> task = ProteinFunction(ProteinRPN(num_terms=3, hidden=16), lr=1e-3)
        >>> task.hparams.supcon_weight, task.hparams.infonce_weight
        (0.05, 0.05)
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0, supcon_weight: float = 0.05,
                 infonce_weight: float = 0.05, site_weight: float = 1.0, temperature: float = 0.1,
                 noise_sigma: float = 0.5, edge_drop: float = 0.1, anchor_threshold: float = 0.5) -> None:
        super().__init__()
        for name, value in (("supcon_weight", supcon_weight), ("infonce_weight", infonce_weight),
                            ("site_weight", site_weight)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.model = model
        self.save_hyperparameters(ignore=["model"])
        num_terms = int(getattr(model, "num_terms", 0)) or None
        self.val_metrics = self.test_metrics = None
        if num_terms:
            self.val_metrics, self.test_metrics = StageMetrics(num_terms), StageMetrics(num_terms)

    def forward(self, batch):
        return self.model(batch)

    def setup(self, stage: str) -> None:
        # the datamodule's GO graph and training-label IC, once it has read its data
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        terms = getattr(dm, "num_terms", None) if dm is not None else None
        if terms is None:
            if self.val_metrics is None:
                raise ValueError("ProteinFunction: the model has no num_terms and the datamodule names no terms.")
            return
        model_terms = getattr(self.model, "num_terms", terms)
        if model_terms != terms:
            raise ValueError(f"The model scores {model_terms} GO terms but the data has {terms}; set model.num_terms "
                             f"to {terms} (for the synthetic data: num_motifs * 3 / 2).")
        ancestors = getattr(dm, "go_ancestors", None)
        ic = getattr(dm, "information_content", None)
        self.val_metrics = StageMetrics(terms, ancestors, ic)
        self.test_metrics = StageMetrics(terms, ancestors, ic)

    def losses(self, batch, out) -> dict[str, torch.Tensor]:
        h = self.hparams
        y = batch.y.float()
        parts = {"bce": F.binary_cross_entropy_with_logits(out.logits, y)}
        if h.supcon_weight:
            parts["supcon"] = supervised_contrastive_loss(out.embedding, y, h.temperature)
        if h.infonce_weight:
            view = perturbed_view(batch, sigma=h.noise_sigma, p=h.edge_drop)
            parts["infonce"] = info_nce_loss(out.embedding, self.model(view).embedding, h.temperature)
        if h.site_weight and getattr(out, "node_logits", None) is not None and getattr(batch, "site", None) is not None:
            parts["site"] = F.binary_cross_entropy_with_logits(out.node_logits, batch.site.float())
        weights = {"bce": 1.0, "supcon": h.supcon_weight, "infonce": h.infonce_weight, "site": h.site_weight}
        parts["loss"] = sum(weights[k] * v for k, v in parts.items())
        return parts

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        out = self.model(batch)
        parts = self.losses(batch, out)
        n = int(batch.num_graphs)
        self.log("train/loss", parts["loss"], prog_bar=True, batch_size=n)
        for key, value in parts.items():
            if key != "loss":
                self.log(f"train/{key}", value, batch_size=n)
        return parts["loss"]

    def _evaluate(self, batch, metrics: StageMetrics) -> None:
        out = self.model(batch)
        y = batch.y.float()
        metrics.loss.update(F.binary_cross_entropy_with_logits(out.logits, y), weight=y.shape[0])
        probs = torch.sigmoid(out.logits)
        for metric in (metrics.fmax, metrics.smin, metrics.aupr_micro, metrics.aupr_macro):
            metric.update(probs, y)
        if getattr(out, "node_scores", None) is not None and getattr(batch, "site", None) is not None:
            anchors = (out.node_scores >= self.hparams.anchor_threshold).long()
            metrics.site_precision.update(anchors, batch.site.long())
            metrics.site_recall.update(anchors, batch.site.long())
        if getattr(out, "kept", None) is not None and getattr(batch, "site", None) is not None:
            metrics.kept_recall.update(out.kept.long(), batch.site.long())

    def _log_stage(self, metrics: StageMetrics, stage: str) -> None:
        fmax = metrics.fmax.compute()
        values: dict[str, Any] = {
            f"{stage}/loss": metrics.loss.compute(), f"{stage}/fmax": fmax.fmax,
            f"{stage}/fmax_coverage": fmax.coverage, f"{stage}/smin": metrics.smin.compute(),
            f"{stage}/aupr_micro": metrics.aupr_micro.compute(), f"{stage}/aupr_macro": metrics.aupr_macro.compute(),
        }
        if metrics.site_precision.update_count:
            values[f"{stage}/site_precision"] = metrics.site_precision.compute()
            values[f"{stage}/site_recall"] = metrics.site_recall.compute()
        if metrics.kept_recall.update_count:
            values[f"{stage}/kept_recall"] = metrics.kept_recall.compute()
        self.log_dict({k: v.float() for k, v in values.items()}, prog_bar=False)
        for metric in metrics.children():
            metric.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        if self.val_metrics.fmax.update_count:
            self._log_stage(self.val_metrics, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        if self.test_metrics.fmax.update_count:
            self._log_stage(self.test_metrics, "test")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
