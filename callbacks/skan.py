"""SKANTraining: S-KAN's three-phase training as a Lightning callback (arXiv 2408.08338).

1. **full** (steps ``[0, full_steps)``): all spaces train; the selection stays uniform (its
   logits are frozen) so every space learns its best fit. Optional B-spline grid updates from
   the batch inputs (KAN paper §2.4) every ``grid_update_every`` steps.
2. **selective** (``[full_steps, full_steps + selective_steps)``): the selection logits train and
   the softmax temperature falls geometrically from ``initial_temperature`` to
   ``final_temperature``, so each node's weights sharpen onto one space.
3. **pruned** (from ``full_steps + selective_steps``): every S-KAN layer keeps one space per
   node (:func:`~actsparse.plugins.kan.prune_spaces`), the optimizers are rebuilt for the smaller
   parameter set, and training continues. The chosen spaces are logged: a W&B table and
   histogram when a ``WandbLogger`` is attached, a PNG (``skan_spaces.png``) otherwise.

Steps are ``trainer.global_step`` (optimizer steps). The phase lengths are step counts, or
``full_fraction`` / ``selective_fraction`` of the run's optimizer steps
(``trainer.estimated_stepping_batches``, resolved when fitting starts), so a config need not
repeat the run's length. After pruning, every training epoch's end logs the share of nodes that
chose each space (``skan/space_share/<space>``) and the parameter count before pruning
(``skan/parameters_unpruned``), so the choice reaches the loggers and a ``MetricHistory``
watching ``skan/`` (and with it the run's ``summary.json``). Resuming from a checkpoint restores the
phase exactly: a checkpoint written after pruning loads into the pruned layout (the layers
convert themselves) before the optimizers are built, and the temperature is a model buffer.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from typing_extensions import override

from actsparse.plugins.kan.layers import prune_spaces, skan_layers, update_grids

PHASES = ("full", "selective", "pruned")


class SKANTraining(Callback):
    """Full -> selective -> pruned training of every S-KAN layer in the module.

    Args:
        full_steps: length of phase 1 (optimizer steps; default 200 unless ``full_fraction``).
        selective_steps: length of phase 2; pruning happens at ``full_steps + selective_steps``
            (default 100 unless ``selective_fraction``).
        full_fraction, selective_fraction: the same lengths as fractions of the run's optimizer
            steps, ``round(fraction * trainer.estimated_stepping_batches)`` (give both, instead
            of the step counts).
        initial_temperature, final_temperature: the selection softmax temperature at the start
            and end of phase 2 (geometric schedule). The final one must make the selection
            one-hot in practice (1e-3: logit gaps of 0.01 give weights e^10 apart), so that
            pruning does not change the outputs.
        freeze_selection_in_full: keep the selection uniform during phase 1.
        grid_update_every: update B-spline grids from the batch inputs every this many steps of
            phase 1 (0: never); ``grid_update_until`` stops them earlier (pykan stops at 50).
        prune: False stops after phase 2 (a soft selection, nothing removed).
        out_dir: where the PNG goes without W&B (default: the trainer's ``log_dir`` or
            ``default_root_dir``).

    Example:
        >>> cb = SKANTraining(full_steps=100, selective_steps=50)
        >>> cb.phase(0), cb.phase(120), cb.phase(150)
        ('full', 'selective', 'pruned')
        >>> round(cb.temperature(125), 4)
        0.0316
    """

    def __init__(self, full_steps: int | None = None, selective_steps: int | None = None,
                 initial_temperature: float = 1.0, final_temperature: float = 1e-3,
                 freeze_selection_in_full: bool = True, grid_update_every: int = 0,
                 grid_update_until: int | None = None, prune: bool = True, out_dir: str | None = None,
                 full_fraction: float | None = None, selective_fraction: float | None = None) -> None:
        fractions = (full_fraction, selective_fraction)
        if any(f is not None for f in fractions):
            if any(f is None for f in fractions) or full_steps is not None or selective_steps is not None:
                raise ValueError("SKANTraining: give the phase lengths either as full_steps/selective_steps or as "
                                 f"full_fraction/selective_fraction (both), got full_steps={full_steps}, "
                                 f"selective_steps={selective_steps}, full_fraction={full_fraction}, "
                                 f"selective_fraction={selective_fraction}.")
            if min(fractions) < 0 or sum(fractions) > 1:
                raise ValueError(f"full_fraction and selective_fraction must be >= 0 and sum to <= 1 (the rest is the "
                                 f"pruned phase), got {full_fraction}, {selective_fraction}.")
        else:
            full_steps = 200 if full_steps is None else full_steps
            selective_steps = 100 if selective_steps is None else selective_steps
            if full_steps < 0 or selective_steps < 0:
                raise ValueError(f"full_steps and selective_steps must be >= 0, got {full_steps}, {selective_steps}.")
        if not 0 < final_temperature <= initial_temperature:
            raise ValueError(f"temperatures must satisfy 0 < final_temperature <= initial_temperature, got "
                             f"{final_temperature}, {initial_temperature}.")
        if grid_update_every < 0:
            raise ValueError(f"grid_update_every must be >= 0 (0: no grid updates), got {grid_update_every}.")
        self.full_fraction = None if full_fraction is None else float(full_fraction)
        self.selective_fraction = None if selective_fraction is None else float(selective_fraction)
        self.initial_temperature, self.final_temperature = float(initial_temperature), float(final_temperature)
        self.freeze_selection_in_full = freeze_selection_in_full
        self.grid_update_every = int(grid_update_every)
        self._grid_update_until = grid_update_until
        self.full_steps: int | None = None
        self.selective_steps: int | None = None
        self.grid_update_until: int | None = None
        if full_steps is not None:
            self._set_steps(int(full_steps), int(selective_steps))
        self.prune = prune
        self.out_dir = out_dir
        self.pruned_at: int | None = None
        self.parameters_unpruned: int | None = None
        self.chosen: dict[str, list[str]] = {}
        self.grid_updates = 0

    def _set_steps(self, full_steps: int, selective_steps: int) -> None:
        self.full_steps, self.selective_steps = full_steps, selective_steps
        until = self._grid_update_until
        self.grid_update_until = full_steps if until is None else min(int(until), full_steps)

    def resolve_steps(self, total_steps: float) -> tuple[int, int]:
        """Set the phase lengths from the fractions and the run's ``total_steps``; returns them."""
        if self.full_fraction is None:
            return self.full_steps, self.selective_steps
        if total_steps == float("inf"):
            raise ValueError("SKANTraining's full_fraction/selective_fraction need a finite run: set trainer.max_steps "
                             "or trainer.max_epochs (or give full_steps/selective_steps).")
        total = int(total_steps)
        self._set_steps(round(self.full_fraction * total), round(self.selective_fraction * total))
        return self.full_steps, self.selective_steps

    @property
    @override
    def state_key(self) -> str:
        if self.full_fraction is not None:  # known before the run's length is
            return self._generate_state_key(full_fraction=self.full_fraction,
                                            selective_fraction=self.selective_fraction, prune=self.prune)
        return self._generate_state_key(full_steps=self.full_steps, selective_steps=self.selective_steps,
                                        prune=self.prune)

    # -- schedule (pure) ------------------------------------------------------------------------
    def _check_resolved(self) -> None:
        if self.full_steps is None:
            raise RuntimeError("SKANTraining's phase lengths are fractions of the run, known when fitting starts; "
                               "call resolve_steps(total_steps) first.")

    def phase(self, step: int) -> str:
        self._check_resolved()
        if step < self.full_steps:
            return "full"
        if step < self.full_steps + self.selective_steps or not self.prune:
            return "selective"
        return "pruned"

    def temperature(self, step: int) -> float:
        self._check_resolved()
        if step < self.full_steps:
            return self.initial_temperature
        if self.selective_steps == 0:
            return self.final_temperature
        frac = min(1.0, (step - self.full_steps) / self.selective_steps)
        return self.initial_temperature * (self.final_temperature / self.initial_temperature) ** frac

    # -- hooks ----------------------------------------------------------------------------------
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not skan_layers(pl_module):
            raise ValueError(f"SKANTraining found no S-KAN layer in {type(pl_module).__name__}; build the model "
                             "from actsparse.plugins.kan.SKANLinear / SKANConv2d.")

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.full_fraction is not None:
            full, selective = self.resolve_steps(trainer.estimated_stepping_batches)
            rank_zero_info(f"SKANTraining: {full} full + {selective} selective steps of "
                           f"{int(trainer.estimated_stepping_batches)}, then pruned.")

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        phase = self.phase(step)
        layers = [m for _, m in skan_layers(pl_module)]
        if phase == "pruned" and not all(m.pruned for m in layers):
            self._prune(trainer, pl_module, step)
        if phase == "full" and self.grid_update_every and step < self.grid_update_until \
                and step % self.grid_update_every == 0:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            update_grids(pl_module, x)
            self.grid_updates += 1
        temperature = self.temperature(step)
        for m in layers:
            if m.selection_logits is not None:
                m.selection_logits.requires_grad_(not (phase == "full" and self.freeze_selection_in_full))
            m.temperature.fill_(temperature)
        if step % max(1, trainer.log_every_n_steps) == 0:
            pl_module.log("skan/phase", float(PHASES.index(phase)), on_step=True, on_epoch=False)
            pl_module.log("skan/temperature", temperature, on_step=True, on_epoch=False)
            with torch.no_grad():
                selections = torch.cat([m.selection.max(-1).values for m in layers])
            pl_module.log("skan/selection_max", float(selections.mean()), on_step=True, on_epoch=False)

    def _prune(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        before = sum(p.numel() for p in pl_module.parameters())
        self.parameters_unpruned = before
        self.chosen = prune_spaces(pl_module)
        self.pruned_at = step
        after = sum(p.numel() for p in pl_module.parameters())
        # The pruned layers hold new parameters: the optimizers (and their schedulers) restart on them.
        trainer.strategy.setup_optimizers(trainer)
        rank_zero_info(f"SKANTraining: pruned at step {step}: {before:,} -> {after:,} parameters; "
                       f"spaces per layer: {json.dumps({k: dict(Counter(v)) for k, v in self.chosen.items()})}")
        self._log_choice(trainer)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Epoch ends reach the loggers whatever log_every_n_steps is: the choice lands in the
        # logs (and a MetricHistory's curves) once per epoch after pruning.
        if not self.chosen:
            return
        picks = [space for spaces in self.chosen.values() for space in spaces]
        counts = Counter(picks)
        for space in dict.fromkeys(s for _, m in skan_layers(pl_module) for s in m.all_spaces):
            pl_module.log(f"skan/space_share/{space}", counts.get(space, 0) / len(picks), on_step=False, on_epoch=True)
        if self.parameters_unpruned is not None:
            pl_module.log("skan/parameters_unpruned", float(self.parameters_unpruned), on_step=False, on_epoch=True)

    @rank_zero_only
    def _log_choice(self, trainer: L.Trainer) -> None:
        rows = [(layer, node, space) for layer, spaces in self.chosen.items() for node, space in enumerate(spaces)]
        from lightning.pytorch.loggers import WandbLogger

        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if wandb_loggers:
            import wandb

            counts = Counter(space for _, _, space in rows)
            for lg in wandb_loggers:
                lg.experiment.log({
                    "skan/chosen_spaces": wandb.Table(columns=["layer", "node", "space"], data=[list(r) for r in rows]),
                    "skan/space_counts": wandb.Table(columns=["space", "nodes"], data=[[s, n] for s, n in counts.items()]),
                    "skan/space_histogram": wandb.Histogram([_space_index(s) for _, _, s in rows]),
                })
            return
        out = Path(self.out_dir or trainer.log_dir or trainer.default_root_dir)
        save_space_plot(self.chosen, out / "skan_spaces.png")

    # -- state ----------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"pruned_at": self.pruned_at, "chosen": self.chosen, "grid_updates": self.grid_updates,
                "parameters_unpruned": self.parameters_unpruned}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruned_at = state_dict.get("pruned_at")
        self.chosen = dict(state_dict.get("chosen", {}))
        self.grid_updates = int(state_dict.get("grid_updates", 0))
        self.parameters_unpruned = state_dict.get("parameters_unpruned")


def _space_index(space: str) -> int:
    from actsparse.plugins.kan.bases import SPACES

    return list(SPACES).index(space) if space in SPACES else -1


def save_space_plot(chosen: dict[str, list[str]], path: str | Path) -> Path:
    """A bar chart of how many nodes of each layer chose each space (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from actsparse.plugins.kan.bases import SPACES

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spaces = [s for s in SPACES if any(s in v for v in chosen.values())] or list(SPACES)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(spaces), 3.2), dpi=120)
    width = 0.8 / max(1, len(chosen))
    for i, (layer, picks) in enumerate(chosen.items()):
        counts = Counter(picks)
        ax.bar(np.arange(len(spaces)) + i * width, [counts.get(s, 0) for s in spaces], width, label=layer)
    ax.set_xticks(np.arange(len(spaces)) + 0.4 - width / 2, spaces, rotation=20)
    ax.set_ylabel("nodes")
    ax.set_title("S-KAN: chosen activation space per node")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
