"""The dead-neuron-rate / Activating-while-Pruning study on scikit-learn digits (issue 6, DESIGN §4).

    python -m actsparse.experiments.ap_digits [--out DIR] [hydra overrides ...]
    python -m actsparse.experiments.ap_digits --out docs/ap_digits study.seeds=[0] study.rounds=4

Composes ``experiment=ap_digits`` (plus the overrides) and, in this process, trains every model
in ``study.models`` with every method in ``study.methods`` (``imp``: iterative magnitude pruning
with rewinding to the initial weights; ``ap``: the same plus ActivatingWhilePruning) and seed.
Each run has ``rounds + 1`` rounds of ``epochs_per_round`` epochs; at the end of every round,
before pruning, it records the remaining weight fraction, the test accuracy and the training
DNR of the round's last epoch. Writes ``results.json``, ``results.md`` and
``accuracy.png`` / ``dnr.png`` (mean ± std over seeds against remaining weights) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from actsparse.callbacks.dnr import DeadNeuronMonitor
from actsparse.callbacks.pruning import ActivatingWhilePruning, IterativeMagnitudePruning

METHODS = ("imp", "ap")


def compose_study(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="actsparse.conf", version_base="1.3"):
        return compose("train", overrides=["experiment=ap_digits", *overrides])


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
    study = cfg.study
    L.seed_everything(seed, verbose=False)
    datamodule = instantiate(cfg.data, seed=seed, _convert_="all")
    datamodule.setup("fit")
    model = instantiate(study.models[model_name], _convert_="all")
    task = instantiate(cfg.task, model=model, _convert_="all")
    dnr = DeadNeuronMonitor(heatmap=False, log=False)
    imp = IterativeMagnitudePruning(amount=float(study.amount), epochs_per_round=int(study.epochs_per_round),
                                    rounds=int(study.rounds), log=False)
    probe = _RoundEnd(int(study.epochs_per_round), imp, dnr, datamodule.test_set)
    callbacks = [dnr, probe, imp] + ([ActivatingWhilePruning(ap_rate=float(study.ap_rate))] if method == "ap" else [])
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=(int(study.rounds) + 1) * int(study.epochs_per_round), logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks,
    )
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        written.append(out / name)
    return written


def table(summary: dict, meta: dict) -> str:
    lines = [f"Command: `{meta['command']}` ({meta['seconds']} s, {meta['threads']} torch thread(s)).", ""]
    for model, methods in summary.items():
        lines += [f"### {model.upper()}", "",
                  "| round | remaining | IMP acc | IMP+AP acc | IMP DNR | IMP+AP DNR | IMP dead | IMP+AP dead |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        imp, ap = methods.get("imp"), methods.get("ap")
        for i, rem in enumerate((imp or ap)["remaining"]):
            def cell(stats, key, pct=True):
                if stats is None:
                    return "–"
                m, s = stats[key][i], stats[key + "_std"][i]
                return f"{100 * m:.1f} ± {100 * s:.1f}" if pct else f"{m:.1f} ± {s:.1f}"
            lines.append(f"| {i} | {100 * rem:.1f}% | {cell(imp, 'test_acc')} | {cell(ap, 'test_acc')} | "
                         f"{cell(imp, 'dnr')} | {cell(ap, 'dnr')} | {cell(imp, 'dead', False)} | {cell(ap, 'dead', False)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/ap_digits/study", help="where to write results and figures")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. study.seeds=[0] study.rounds=4")
    args = parser.parse_args(argv)
    cfg = compose_study(args.overrides)
    unknown = sorted(set(cfg.study.methods) - set(METHODS))
    if unknown:
        raise ValueError(f"Unknown study.methods {unknown}; choose from {', '.join(METHODS)}.")
    if cfg.study.get("threads"):
        torch.set_num_threads(int(cfg.study.threads))
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = []
    for model_name in cfg.study.models:
        for method in cfg.study.methods:
            for seed in cfg.study.seeds:
                t = time.perf_counter()
                rows = run_one(cfg, model_name, method, int(seed))
                runs.append({"model": model_name, "method": method, "seed": int(seed), "rows": rows})
                print(f"{model_name} {method:3s} seed {seed}: remaining {100 * rows[-1]['remaining']:.1f}%  "
                      f"acc {rows[0]['test_acc']:.3f} -> {rows[-1]['test_acc']:.3f}  "
                      f"DNR {rows[0]['dnr']:.3f} -> {rows[-1]['dnr']:.3f}  ({time.perf_counter() - t:.1f} s)", flush=True)
    elapsed = time.perf_counter() - start
    meta = {"command": " ".join(["python -m actsparse.experiments.ap_digits", "--out", args.out, *args.overrides]),
            "seconds": round(elapsed, 1), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "study": OmegaConf.to_container(cfg.study, resolve=True),
            "task": OmegaConf.to_container(cfg.task, resolve=True)}
    summary = summarize(runs)
    (out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1))
    figures = plot(summary, out)
    (out / "results.md").write_text(table(summary, meta))
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {', '.join(p.name for p in figures)} in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
