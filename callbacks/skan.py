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

Steps are ``trainer.global_step`` (optimizer steps). Resuming from a checkpoint restores the
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
        full_steps: length of phase 1 (optimizer steps).
        selective_steps: length of phase 2; pruning happens at ``full_steps + selective_steps``.
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

    def __init__(self, full_steps: int = 200, selective_steps: int = 100, initial_temperature: float = 1.0,
                 final_temperature: float = 1e-3, freeze_selection_in_full: bool = True,
                 grid_update_every: int = 0, grid_update_until: int | None = None, prune: bool = True,
                 out_dir: str | None = None) -> None:
        if full_steps < 0 or selective_steps < 0:
            raise ValueError(f"full_steps and selective_steps must be >= 0, got {full_steps}, {selective_steps}.")
        if not 0 < final_temperature <= initial_temperature:
            raise ValueError(f"temperatures must satisfy 0 < final_temperature <= initial_temperature, got "
                             f"{final_temperature}, {initial_temperature}.")
        if grid_update_every < 0:
            raise ValueError(f"grid_update_every must be >= 0 (0: no grid updates), got {grid_update_every}.")
        self.full_steps, self.selective_steps = int(full_steps), int(selective_steps)
        self.initial_temperature, self.final_temperature = float(initial_temperature), float(final_temperature)
        self.freeze_selection_in_full = freeze_selection_in_full
        self.grid_update_every = int(grid_update_every)
        self.grid_update_until = self.full_steps if grid_update_until is None else min(int(grid_update_until), self.full_steps)
        self.prune = prune
        self.out_dir = out_dir
        self.pruned_at: int | None = None
        self.chosen: dict[str, list[str]] = {}
        self.grid_updates = 0

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(full_steps=self.full_steps, selective_steps=self.selective_steps,
                                        prune=self.prune)

    # -- schedule (pure) ------------------------------------------------------------------------
    def phase(self, step: int) -> str:
        if step < self.full_steps:
            return "full"
        if step < self.full_steps + self.selective_steps or not self.prune:
            return "selective"
        return "pruned"

    def temperature(self, step: int) -> float:
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
        self.chosen = prune_spaces(pl_module)
        self.pruned_at = step
        after = sum(p.numel() for p in pl_module.parameters())
        # The pruned layers hold new parameters: the optimizers (and their schedulers) restart on them.
        trainer.strategy.setup_optimizers(trainer)
        rank_zero_info(f"SKANTraining: pruned at step {step}: {before:,} -> {after:,} parameters; "
                       f"spaces per layer: {json.dumps({k: dict(Counter(v)) for k, v in self.chosen.items()})}")
        self._log_choice(trainer)

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
        return {"pruned_at": self.pruned_at, "chosen": self.chosen, "grid_updates": self.grid_updates}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruned_at = state_dict.get("pruned_at")
        self.chosen = dict(state_dict.get("chosen", {}))
        self.grid_updates = int(state_dict.get("grid_updates", 0))


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
