"""The dead-neuron-rate / Activating-while-Pruning study on scikit-learn digits (issue 6, DESIGN §4).

    actsparse-train experiment=ap_digits [overrides ...]
    actsparse-train experiment=ap_digits ap_digits.seeds=[0] ap_digits.rounds=4

Trains every model in ``ap_digits.models`` with every method in ``ap_digits.methods`` (``imp``: iterative magnitude pruning
with rewinding to the initial weights; ``ap``: the same plus ActivatingWhilePruning) and seed.
Each run has ``rounds + 1`` rounds of ``epochs_per_round`` epochs; at the end of every round,
before pruning, it records the remaining weight fraction, the test accuracy and the training
DNR of the round's last epoch. Writes ``results.json``, ``results.md`` and
``accuracy.png`` / ``dnr.png`` (mean ± std over seeds against remaining weights) into the run
folder. ``python -m actsparse.experiments.ap_digits [overrides]`` is the same run.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from actsparse.callbacks.dnr import DeadNeuronMonitor
from actsparse.callbacks.pruning import ActivatingWhilePruning, IterativeMagnitudePruning
from actsparse.experiments import study

METHODS = ("imp", "ap")


class _RoundEnd(L.Callback):
    """At the end of each round, before the pruning callback runs: remaining, accuracy, DNR."""

    def __init__(self, every: int, imp: IterativeMagnitudePruning, dnr: DeadNeuronMonitor, test_set) -> None:
        self.every, self.imp, self.dnr, self.test_set = every, imp, dnr, test_set
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every:
            return
        x, y = self.test_set.tensors
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            acc = float((pl_module(x).argmax(1) == y).float().mean())
        pl_module.train(was_training)
        dnr = self.dnr.last
        self.rows.append({
            "round": len(self.rows), "remaining": self.imp.remaining()["prune/remaining"], "test_acc": acc,
            "dnr": dnr["dnr/mean"], "dead": sum(v for k, v in dnr.items() if k.startswith("dead/")),
        })


def run_one(cfg: DictConfig, model_name: str, method: str, seed: int) -> list[dict[str, float]]:
    p = cfg.ap_digits
    L.seed_everything(seed, verbose=False)
    datamodule = instantiate(cfg.data, seed=seed, _convert_="all")
    datamodule.setup("fit")
    model = instantiate(p.models[model_name], _convert_="all")
    task = instantiate(cfg.task, model=model, _convert_="all")
    dnr = DeadNeuronMonitor(heatmap=False, log=False)
    imp = IterativeMagnitudePruning(amount=float(p.amount), epochs_per_round=int(p.epochs_per_round),
                                    rounds=int(p.rounds), log=False)
    probe = _RoundEnd(int(p.epochs_per_round), imp, dnr, datamodule.test_set)
    callbacks = [dnr, probe, imp] + ([ActivatingWhilePruning(ap_rate=float(p.ap_rate))] if method == "ap" else [])
    trainer = study.trainer(cfg, callbacks, max_steps=-1, max_epochs=(int(p.rounds) + 1) * int(p.epochs_per_round),
                            enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(task, datamodule=datamodule)
    return probe.rows


def summarize(runs: list[dict]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{model: {method: {key: per-round means / stds}}}`` over seeds."""
    out: dict = {}
    for run in runs:
        out.setdefault(run["model"], {}).setdefault(run["method"], []).append(run["rows"])
    summary: dict = {}
    for model, methods in out.items():
        for method, seeds in methods.items():
            stats = {}
            for key in ("remaining", "test_acc", "dnr", "dead"):
                arr = np.array([[r[key] for r in rows] for rows in seeds])
                stats[key], stats[key + "_std"] = arr.mean(0).tolist(), arr.std(0).tolist()
            stats["seeds"] = len(seeds)
            summary.setdefault(model, {})[method] = stats
    return summary


def plot(summary: dict, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    from actsparse.report import save_figure

    written = []
    for key, label, name in (("test_acc", "test accuracy", "accuracy.png"), ("dnr", "training DNR (fraction of zero outputs)", "dnr.png")):
        fig, axes = plt.subplots(1, len(summary), figsize=(5.2 * len(summary), 3.8), dpi=120, squeeze=False)
        for ax, (model, methods) in zip(axes[0], summary.items()):
            for method, stats in methods.items():
                x = 100 * np.array(stats["remaining"])
                m, s = np.array(stats[key]), np.array(stats[key + "_std"])
                ax.plot(x, m, marker="o", ms=3, label={"imp": "IMP", "ap": "IMP + AP"}[method])
                ax.fill_between(x, m - s, m + s, alpha=0.25)
            ax.set_xscale("log")
            ax.invert_xaxis()
            ax.set_xlabel("remaining weights (%)")
            ax.set_ylabel(label)
            ax.set_title(f"{model.upper()} on digits (mean ± std, {stats['seeds']} seeds)")
            ax.grid(alpha=0.3)
            ax.legend()
        written.append(save_figure(fig, out / name))
    return written


def table_rows(methods: dict) -> list[dict[str, str]]:
    """One row per pruning round: remaining weights, accuracy, DNR and dead neurons per method."""
    imp, ap = methods.get("imp"), methods.get("ap")

    def cell(stats, key, i, pct=True):
        if stats is None:
            return "–"
        m, s = stats[key][i], stats[key + "_std"][i]
        return f"{100 * m:.1f} ± {100 * s:.1f}" if pct else f"{m:.1f} ± {s:.1f}"

    return [{"round": str(i), "remaining": f"{100 * rem:.1f}%",
             "IMP acc": cell(imp, "test_acc", i), "IMP+AP acc": cell(ap, "test_acc", i),
             "IMP DNR": cell(imp, "dnr", i), "IMP+AP DNR": cell(ap, "dnr", i),
             "IMP dead": cell(imp, "dead", i, False), "IMP+AP dead": cell(ap, "dead", i, False)}
            for i, rem in enumerate((imp or ap)["remaining"])]


@study.entry
def run(cfg: DictConfig) -> dict:
    """``actsparse-train experiment=ap_digits``: every model x method x seed of ``cfg.ap_digits``."""
    p = cfg.ap_digits
    unknown = sorted(set(p.methods) - set(METHODS))
    if unknown:
        raise ValueError(f"Unknown ap_digits.methods {unknown}; choose from {', '.join(METHODS)}.")
    out = study.prepare(cfg, threads=p.get("threads"))
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    start = time.perf_counter()
    runs = []
    for model_name in p.models:
        for method in p.methods:
            for seed in p.seeds:
                t = time.perf_counter()
                rows = run_one(cfg, model_name, method, int(seed))
                runs.append({"model": model_name, "method": method, "seed": int(seed), "rows": rows})
                print(f"{model_name} {method:3s} seed {seed}: remaining {100 * rows[-1]['remaining']:.1f}%  "
                      f"acc {rows[0]['test_acc']:.3f} -> {rows[-1]['test_acc']:.3f}  "
                      f"DNR {rows[0]['dnr']:.3f} -> {rows[-1]['dnr']:.3f}  ({time.perf_counter() - t:.1f} s)", flush=True)
    elapsed = time.perf_counter() - start
    summary = summarize(runs)
    figures = plot(summary, out)
    tables = {f"{model.upper()}: IMP vs IMP + AP (mean ± std over seeds)": table_rows(methods)
              for model, methods in summary.items()}
    study.write_results(out, tables, {"seconds": round(elapsed, 1), "summary": summary, "runs": runs},
                        title=f"Dead neurons and Activating-while-Pruning on digits ({elapsed:.0f} s)")
    study.log_to_wandb(cfg, out, figures={f.stem: f for f in figures}, tables=tables)
    final = {f"{m}/{meth}/test_acc": s["test_acc"][-1] for m, ms in summary.items() for meth, s in ms.items()}
    return {"seconds": elapsed, **final}


if __name__ == "__main__":
    study.alias_main("ap_digits")
