"""Monitors: callbacks that watch training and keep what they saw."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


class MetricHistory(Callback):
    """Keeps the scalar curves of a run (``step -> value`` per key) for plots and summaries.

    Records every ``train/*`` metric each ``every_n_steps`` optimizer steps and every
    ``val/*`` metric after each validation. Loggers stream the same values; this keeps them in
    memory (and in checkpoints, so a resumed run plots its whole history).

    Example:
        >>> history = MetricHistory(every_n_steps=5)
        >>> history.state_key
        "MetricHistory{'every_n_steps': 5, 'prefixes': ('train/', 'val/')}"
    """

    def __init__(self, every_n_steps: int = 10, prefixes: tuple[str, ...] = ("train/", "val/")) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}.")
        self.every_n_steps = every_n_steps
        self.prefixes = tuple(prefixes)
        self.history: dict[str, list[tuple[int, float]]] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, prefixes=self.prefixes)

    def _record(self, trainer: L.Trainer, prefix: str) -> None:
        step = trainer.global_step
        for key, value in trainer.callback_metrics.items():
            if key.startswith(prefix) and value.numel() == 1:
                points = self.history.setdefault(key, [])
                if points and points[-1][0] == step:
                    points[-1] = (step, float(value))
                else:
                    points.append((step, float(value)))

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step % self.every_n_steps == 0 and "train/" in self.prefixes:
            self._record(trainer, "train/")

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and "val/" in self.prefixes:
            self._record(trainer, "val/")

    def last(self, key: str) -> float | None:
        points = self.history.get(key)
        return points[-1][1] if points else None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": {k: list(v) for k, v in self.history.items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {k: [tuple(p) for p in v] for k, v in state_dict["history"].items()}
