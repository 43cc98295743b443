"""LMEvaluation: what a language-model study reports of its final model, measured once at the
end of the fit on the held-out windows: perplexity, FFN activation sparsity, PPL-p% sparsity with
the per-layer activation ratio it implies, optionally under a training-free sparsifier (CATS or
TEAL calibrated on training text). An evaluation-only job (``train=False``) measures the model as
loaded, with no optimizer step: the pretrained and training-free rows of a study's grid.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import lightning as L
from actsparse.callbacks.final_evaluation import FinalEvaluation
from typing_extensions import override

from actsparse.evaluation.perplexity import perplexity
from actsparse.evaluation.ppl_sparsity import ppl_p_sparsity

METHODS = ("cats", "teal")


class LMEvaluation(FinalEvaluation):
    """At the end of the fit: ``eval/ppl``, ``eval/loss``, ``eval/sparsity`` (zero fraction of every
    FFN site's ``x1``, pooled: the ProSparse measure) on the datamodule's held-out windows, and for
    each ``p`` in ``ppl_p``: ``eval/ppl_p{p}_sparsity``, ``eval/ppl_p{p}_cett``, ``eval/ppl_p{p}_ratio``
    and ``eval/ppl_p{p}_activation_ratio/<layer>`` (1 - the layer's dropped fraction at the accepted
    CETT: the Sparsing Law's per-layer activation ratio) with their mean ``.../mean``.

    Values go to the trainer's loggers at the final step (:class:`FinalEvaluation`: W&B, CSV and
    ``summary.json``'s history, where the study engine reads them).

    Args:
        train: False: an evaluation job; the fit takes no optimizer step (the fit loop's
            ``max_steps`` is set to 0 at ``setup``), whatever ``trainer.max_steps`` says.
        method: None, ``"cats"`` or ``"teal"``: calibrate that training-free sparsifier at
            ``sparsity`` on ``calibration_tokens`` of training windows first
            (:func:`actsparse.plugins.calibrate_cats` / ``calibrate_teal``), evaluate under it, remove it.
        ppl_p: the PPL-p% budgets (percent) to search; empty: none (it costs ~6-10 passes each).
        ppl_p_options: passed to :func:`actsparse.evaluation.ppl_p_sparsity` (``tol``, ``max_batches``, ...).
        max_batches: evaluate on at most this many held-out batches (None: all).
    """

    def __init__(self, train: bool = True, method: str | None = None, sparsity: float | None = None,
                 calibration_tokens: int = 8192, passes: int = 1, ppl_p: Sequence[float] = (1.0,),
                 ppl_p_options: dict[str, Any] | None = None, max_batches: int | None = None) -> None:
        if method is not None and method not in METHODS:
            raise ValueError(f"method must be None or one of {METHODS}, got {method!r}.")
        if method is not None and (sparsity is None or not 0 < float(sparsity) < 1):
            raise ValueError(f"method={method!r} needs a target sparsity in (0, 1), got {sparsity!r}.")
        super().__init__(train)
        self.method, self.sparsity = method, None if sparsity is None else float(sparsity)
        self.calibration_tokens, self.passes = int(calibration_tokens), int(passes)
        self.ppl_p = [float(p) for p in (ppl_p or ())]
        self.ppl_p_options = dict(ppl_p_options or {})
        self.max_batches = max_batches

    @override
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Everything this callback reports, measured on ``trainer.datamodule``'s held-out windows."""
        from actsparse.plugins.training_free import calibrate_cats, calibrate_teal

        dm = trainer.datamodule
        network = getattr(pl_module, "model", pl_module)
        held_out = list(dm.val_dataloader())
        if self.max_batches is not None:
            held_out = held_out[: self.max_batches]
        values: dict[str, float] = {}
        installed = None
        start = time.perf_counter()
        if self.method is not None:
            if not hasattr(dm, "calibration_batches"):
                raise TypeError(f"{self.method.upper()} calibrates on training text: the datamodule "
                                f"{type(dm).__name__} needs calibration_batches(n_tokens) (PretrainedTextDataModule has it).")
            calibrate = calibrate_cats if self.method == "cats" else calibrate_teal
            installed = calibrate(network, dm.calibration_batches(self.calibration_tokens), self.sparsity,
                                  passes=self.passes)
            values["eval/target_sparsity"] = self.sparsity
        try:
            if installed is not None:
                installed.reset_counts()
            r = perplexity(network, held_out)
            values.update({"eval/ppl": r.perplexity, "eval/loss": r.loss, "eval/sparsity": r.sparsity,
                           "eval/tokens": float(r.tokens)})
            if installed is not None and installed.sparsifiers:
                values["eval/input_sparsity"] = installed.input_sparsity("input")
            for p in self.ppl_p:
                found = ppl_p_sparsity(network, held_out, p, **self.ppl_p_options)
                key = f"eval/ppl_p{p:g}"
                values.update({f"{key}_sparsity": found.sparsity, f"{key}_cett": found.cett,
                               f"{key}_ratio": found.ppl_ratio, f"{key}_passes": float(found.passes)})
                ratios = {name: 1.0 - s for name, s in found.site_sparsity.items()}
                for name, ratio in ratios.items():
                    values[f"{key}_activation_ratio/{name}"] = ratio
                values[f"{key}_activation_ratio/mean"] = sum(ratios.values()) / max(1, len(ratios))
        finally:
            if installed is not None:
                installed.remove()
        values["eval/seconds"] = time.perf_counter() - start
        return values

    @override
    def shown(self, name: str) -> bool:
        return "activation_ratio/" not in name or name.endswith("/mean")
