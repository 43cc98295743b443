"""S-ConvKAN against a CNN of similar size on scikit-learn's digits (issue 13; arXiv 2408.08338).

    actsparse-train experiment=skan_digits
    actsparse-train experiment=skan_digits skan_digits.epochs=60 'skan_digits.channels=[8,16]'   # larger

For every seed: ``sconvkan`` (S-ConvKAN, all seven spaces, three-phase training, evaluated after
pruning), ``convkan_<space>`` for each space in ``skan_digits.single_spaces`` (single-space
ConvKANs of the same shape) and ``cnn`` (actsparse's digits CNN with the channel widths whose
parameter count is closest to the pruned S-ConvKAN's). All train with the ``classify`` task
(Adam, same learning rate, epochs and batch size) on the same stratified split. Writes
``results.md``/``results.json`` (test accuracy mean ± std, parameters, chosen spaces).
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from actsparse.callbacks.skan import SKANTraining
from actsparse.data.digits import DigitsDataModule
from actsparse.experiments import study
from actsparse.models.skan import SConvKAN
from actsparse.models.cnn import CNN
from actsparse.plugins.kan import SPACES, prune_spaces
from actsparse.plugins.kan.layers import skan_layers
from actsparse.tasks.classify import Classifier


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_cnn_channels(target: int) -> list[int]:
    """``[c, 2c]`` for the digits CNN whose parameter count is closest to ``target``."""
    return min(([c, 2 * c] for c in range(1, 65)), key=lambda ch: abs(_params(CNN(channels=ch)) - target))


def pruned_size(channels: list[int], spaces: list[str]) -> int:
    """Parameters of an S-ConvKAN after pruning (every node keeps one space of K = 8 functions)."""
    model = SConvKAN(channels=channels, spaces=spaces)
    prune_spaces(model)
    return _params(model)


def build(name: str, cfg: DictConfig) -> torch.nn.Module:
    s = cfg.skan_digits
    channels, spaces = [int(c) for c in s.channels], [str(x) for x in s.spaces]
    if name == "sconvkan":
        return SConvKAN(channels=channels, spaces=spaces)
    if name.startswith("convkan_"):
        space = name[len("convkan_"):]
        if space not in SPACES:
            raise ValueError(f"skan_digits model {name!r}: unknown space {space!r}; registered: {', '.join(SPACES)}.")
        return SConvKAN(channels=channels, spaces=space)
    if name == "cnn":
        return CNN(channels=matched_cnn_channels(pruned_size(channels, spaces)))
    raise ValueError(f"Unknown skan_digits model {name!r}; use sconvkan, cnn or convkan_<space>.")


def fit_one(cfg: DictConfig, name: str, seed: int) -> dict[str, Any]:
    s = cfg.skan_digits
    L.seed_everything(seed, verbose=False)
    dm = DigitsDataModule(batch_size=int(s.batch_size), flatten=False, seed=seed)
    dm.setup("fit")
    model = build(name, cfg)
    steps = int(s.epochs) * len(dm.train_dataloader())
    callbacks: list[L.Callback] = []
    if skan_layers(model):
        multi = name == "sconvkan"
        callbacks.append(SKANTraining(
            full_steps=int(round(steps * float(s.full_fraction))) if multi else steps,
            selective_steps=int(round(steps * float(s.selective_fraction))) if multi else 0,
            final_temperature=float(s.final_temperature)))
    params_trained = _params(model)
    task = Classifier(model, optimizer="adam", lr=float(s.lr))
    start = time.perf_counter()
    trainer = study.trainer(cfg, callbacks, max_steps=steps, max_epochs=-1, limit_val_batches=0,
                            num_sanity_val_steps=0, enable_progress_bar=False, gradient_clip_val=None,
                            val_check_interval=None, check_val_every_n_epoch=None, log_every_n_steps=50)
    trainer.fit(task, train_dataloaders=dm.train_dataloader())
    x, y = dm.test_set.tensors
    task.eval()
    with torch.no_grad():
        acc = float((task(x).argmax(1) == y).float().mean())
    chosen = {n: m.chosen_spaces() for n, m in skan_layers(model)} if name == "sconvkan" else {}
    return {"model": name, "seed": seed, "test_acc": acc, "params": _params(model),
            "params_trained": params_trained, "seconds": time.perf_counter() - start, "chosen": chosen}


@study.entry
def run(cfg: DictConfig) -> dict[str, Any]:
    s = cfg.skan_digits
    out = study.prepare(cfg, threads=s.get("threads"))
    warnings.filterwarnings("ignore", category=UserWarning)
    models = ["sconvkan", *[f"convkan_{sp}" for sp in s.single_spaces], "cnn"]
    for name in models:  # fail on a bad name before any training
        build(name, cfg)
    runs = []
    start = time.perf_counter()
    for seed in s.seeds:
        for name in models:
            r = fit_one(cfg, name, int(seed))
            runs.append(r)
            print(f"seed {seed} {name:18s} test acc {r['test_acc']:.4f}  params {r['params']:,}  ({r['seconds']:.1f} s)",
                  flush=True)
    rows = []
    for name in models:
        rs = [r for r in runs if r["model"] == name]
        m, sd = study.mean_std([100 * r["test_acc"] for r in rs])
        rows.append({"model": name, "test accuracy (%)": f"{m:.2f} ± {sd:.2f}", "params": rs[0]["params"],
                     "params while training": rs[0]["params_trained"],
                     "seconds per run": round(sum(r["seconds"] for r in rs) / len(rs), 1)})
    counts = Counter(sp for r in runs for picks in r["chosen"].values() for sp in picks)
    total = sum(counts.values()) or 1
    space_rows = [{"space": sp, "share of S-ConvKAN nodes": f"{100 * counts.get(sp, 0) / total:.0f}%"} for sp in SPACES
                  if sp in [str(x) for x in s.spaces]]
    tables = {f"Digits test accuracy (mean ± std over {len(s.seeds)} seeds, {s.epochs} epochs)": rows,
              "Spaces chosen by S-ConvKAN nodes (all layers and seeds)": space_rows}
    payload = {"runs": runs, "seconds": round(time.perf_counter() - start, 1),
               "cnn_channels": matched_cnn_channels(pruned_size([int(c) for c in s.channels], [str(x) for x in s.spaces]))}
    study.write_results(out, tables, payload, title="S-ConvKAN vs CNN on digits")
    study.log_to_wandb(cfg, out, tables={"skan_digits/accuracy": rows, "skan_digits/spaces": space_rows})
    return {"rows": rows, "seconds": payload["seconds"]}


if __name__ == "__main__":
    study.alias_main("skan_digits")
