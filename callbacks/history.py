"""Curves: the one way callbacks keep what they measured over a run (``MetricHistory`` for the
logged scalars, the monitors and evaluators for their own values), kept in checkpoints so a
resumed run has its whole history."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from typing_extensions import override


class Curves(Sequence):
    """Rows ``(x, {key: value})`` in the order measured; ``x`` is an optimizer step or an epoch.

    Recording at the ``x`` of the last row adds to that row (a step's training and validation
    values are one row). ``series(key)`` is one curve; ``by_key()`` every curve.

    Example:
        >>> curves = Curves()
        >>> curves.record(10, {"train/loss": 2.0})
        >>> curves.record(10, {"val/loss": 2.5})
        >>> curves.record(20, {"train/loss": 1.5})
        >>> curves.series("train/loss"), curves.last
        ([(10, 2.0), (20, 1.5)], {'train/loss': 1.5})
    """

    def __init__(self, rows: Iterable[tuple[int, dict[str, float]]] = ()) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = [(int(x), dict(values)) for x, values in rows]

    def record(self, x: int, values: dict[str, float]) -> None:
        if self.rows and self.rows[-1][0] == int(x):
            self.rows[-1][1].update(values)
        else:
            self.rows.append((int(x), dict(values)))

    def series(self, key: str) -> list[tuple[int, float]]:
        return [(x, values[key]) for x, values in self.rows if key in values]

    def by_key(self) -> dict[str, list[tuple[int, float]]]:
        out: dict[str, list[tuple[int, float]]] = {}
        for x, values in self.rows:
            for key, value in values.items():
                out.setdefault(key, []).append((x, value))
        return out

    @property
    def last(self) -> dict[str, float]:
        """The latest row's values (empty before the first)."""
        return dict(self.rows[-1][1]) if self.rows else {}

    def state(self) -> list[tuple[int, dict[str, float]]]:
        """Plain lists, tuples and dicts (checkpoints load them weights-only)."""
        return [(x, dict(values)) for x, values in self.rows]

    def __getitem__(self, index: Any) -> Any:
        return self.rows[index]

    def __len__(self) -> int:
        return len(self.rows)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Curves):
            return self.rows == other.rows
        return isinstance(other, Sequence) and self.rows == [tuple(r) for r in other]

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return f"Curves({self.rows!r})"


class _LoggedValues(Logger):
    """What :class:`MetricHistory` hears of the run's logging: a logger receives every logged
    metric once, at the step it was logged, whichever hook logged it (validation, a callback's
    ``on_train_epoch_end``) — a callback reading ``callback_metrics`` would see values logged
    earlier again, or miss those logged by callbacks that run after it."""

    def __init__(self, record) -> None:
        super().__init__()
        self._forward = record

    @property
    @override
    def name(self) -> str:
        return "metric_history"

    @property
    @override
    def version(self) -> int:
        return 0

    @override
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    @override
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._forward(metrics)


class MetricHistory(Callback):
    """Keeps the logged scalar curves of a run (``history``: :class:`Curves` by optimizer step)
    for plots and summaries.

    Records every ``train/*`` metric each ``every_n_steps`` optimizer steps, and every metric with
    one of the other ``prefixes`` (default ``val/``; e.g. ``prune/`` and ``dnr/`` for pruning
    studies) whenever it is logged, at the optimizer step of that moment: a validation's values
    and those a callback logs at the same epoch's end share one row. Loggers stream the same values;
    this keeps them in memory (and in checkpoints, so a resumed run plots its whole history).

    Example:
        >>> history = MetricHistory(every_n_steps=5)
        >>> history.state_key
        "MetricHistory{'every_n_steps': 5, 'prefixes': ('train/', 'val/')}"
    """

    def __init__(self, every_n_steps: int = 10, prefixes: Sequence[str] = ("train/", "val/")) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}.")
        self.every_n_steps = every_n_steps
        self.prefixes = tuple(prefixes)
        self.history = Curves()
        self._trainer: L.Trainer | None = None
        self._listener = _LoggedValues(self._record_logged)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, prefixes=self.prefixes)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Listen to the run's logging as one more logger (Trainer.loggers is public and settable).
        self._trainer = trainer
        if self._listener not in trainer.loggers:
            trainer.loggers = [*trainer.loggers, self._listener]

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._listener in trainer.loggers:
            trainer.loggers = [lg for lg in trainer.loggers if lg is not self._listener]

    def _record_logged(self, metrics: dict[str, float]) -> None:
        trainer = self._trainer
        others = tuple(p for p in self.prefixes if p != "train/")
        if trainer is None or trainer.sanity_checking or not others:
            return
        values = {key: float(value) for key, value in metrics.items() if key.startswith(others)}
        if values:
            self.history.record(trainer.global_step, values)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step % self.every_n_steps == 0 and "train/" in self.prefixes:
            values = {key: float(value) for key, value in trainer.callback_metrics.items()
                      if key.startswith("train/") and value.numel() == 1}
            if values:
                self.history.record(trainer.global_step, values)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.state()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = Curves(state_dict["history"])
