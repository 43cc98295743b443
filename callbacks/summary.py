"""End-of-run report: a summary table, ``summary.json`` and PNG curves in the run directory."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from actsparse.callbacks.history import MetricHistory


class RunSummary(Callback):
    """At the end of ``fit`` (on rank zero): print a table of steps, tokens, the final
    validation metrics (loss, perplexity, any other ``val/*``) and parameters; write
    ``summary.json`` (the table's values, plus under ``"history"`` the curves kept by a
    :class:`MetricHistory` callback, ``{key: [[step, value], ...]}``); plot those curves
    (``loss.png``, ``perplexity.png``, one PNG per other validation metric) and send them to W&B.
    A ``trainer.test`` after the fit adds its ``test/*`` values to ``summary.json``.

    Runs inside the training process, so it also reports ``ddp_spawn`` runs.
    """

    def __init__(self, out_dir: str | None = None) -> None:
        self.out_dir = out_dir
        self._start = time.perf_counter()
        self._earlier = 0.0  # wall time of the run before the checkpoint this fit resumed from
        self.summary: dict[str, Any] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(out_dir=self.out_dir)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def wall_time(self) -> float:
        """Seconds of training behind the current state: this fit's, plus those before the
        checkpoint it resumed from (so a resumed run reports its whole wall time)."""
        return self._earlier + time.perf_counter() - self._start

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"wall_time_s": self.wall_time()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._earlier = float(state_dict.get("wall_time_s", 0.0))

    @override
    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out_dir = Path(self.out_dir or trainer.default_root_dir)
        metrics = trainer.callback_metrics
        history = next((cb for cb in trainer.callbacks if isinstance(cb, MetricHistory)), None)
        summary: dict[str, Any] = {
            "steps": trainer.global_step,
            "tokens": getattr(pl_module, "tokens_seen", None),
            "val loss": float(metrics["val/loss"]) if "val/loss" in metrics else None,
            "val perplexity": float(metrics["val/ppl"]) if "val/ppl" in metrics else None,
            # every other scalar validation metric (accuracy, sparsity, ...) under its own key
            **{k: float(v) for k, v in metrics.items()
               if k.startswith("val/") and k not in ("val/loss", "val/ppl") and v.numel() == 1},
            "parameters": sum(p.numel() for p in pl_module.parameters()),
            "processes": trainer.world_size,
            "wall time (s)": round(self.wall_time(), 1),
            "checkpoint": (trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path)
            if trainer.checkpoint_callback else None,
            "run dir": str(out_dir),
        }
        table = {k: v for k, v in summary.items() if v is not None}
        curves = history.history.by_key() if history else {}
        self.summary = {**table, "history": curves} if curves else table
        self._write(out_dir)
        from actsparse.report import plot_run_curves, print_summary  # matplotlib and rich only at fit end

        plots = plot_run_curves(curves, out_dir) if curves else []
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and plots:
                logger.log_image(key="curves", images=[str(p) for p in plots], step=trainer.global_step)
        print_summary(table)

    @override
    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A test after the fit (``test_after_fit``) joins the run's summary beside the validation values.
        if not self.summary:
            return
        self.summary.update({k: float(v) for k, v in trainer.callback_metrics.items()
                             if k.startswith("test/") and v.numel() == 1})
        self._write(Path(self.out_dir or trainer.default_root_dir))

    def _write(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "summary.json").write_text(json.dumps(self.summary, indent=2))
