"""Active dendrites + k-WTA against a plain MLP in context-dependent continual learning
(issue 14): ``actsparse-train experiment=dendrites``.

For every seed, each model in ``dendrites.models`` (by default ``model=dendrites``, the plain
MLP with the same number of effective parameters and, as an ablation, that MLP with k-WTA in
place of ReLU) is trained on the permuted-digits tasks one
after the other (``dendrites.epochs_per_task`` epochs each, a fresh optimizer per task, no
replay or regularization). After each task it measures the test accuracy on every task, so the
final row shows what was forgotten. After the last task it records the activation sparsity
(fraction of exact zeros) of every activation site over all tasks' test sets. Writes
``results.md`` / ``results.json``, ``accuracy_after_last.png`` and ``accuracy_matrix.png``.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from actsparse.experiments import study
from actsparse.models.dendrites import effective_parameters
from actsparse.plugins import record
from actsparse.tasks.dendrites_continual import ContextClassifier, evaluate_accuracy


def train_sequentially(cfg: DictConfig, model_cfg: DictConfig, seed: int) -> dict[str, Any]:
    """One model, one seed: accuracy matrix ``acc[i][j]`` (task j after training task i) and
    per-site sparsity after the last task."""
    settings = cfg.dendrites
    L.seed_everything(seed, verbose=False)
    datamodule = instantiate(cfg.data, seed=seed, _convert_="all")
    datamodule.setup()
    model = instantiate(model_cfg, _convert_="all")
    task = ContextClassifier(model, optimizer=settings.optimizer, lr=float(settings.lr))
    matrix: list[list[float]] = []
    for t in range(datamodule.num_tasks):
        datamodule.set_task(t)
        trainer = study.trainer(cfg, enable_progress_bar=False, limit_val_batches=0, num_sanity_val_steps=0)
        trainer.fit(task, datamodule=datamodule)
        matrix.append([evaluate_accuracy(model, datamodule.task_dataset(j, "test"))
                       for j in range(datamodule.num_tasks)])
    model.eval()
    with torch.no_grad(), record(model, what="zero_fraction") as rec:
        for j in range(datamodule.num_tasks):
            x, context, _ = datamodule.task_dataset(j, "test").tensors
            model(x, context)
    return {"accuracy": matrix, "sparsity": {name: r.zero_fraction for name, r in rec.items()},
            "parameters": effective_parameters(model)}


def summarize(runs: dict[str, list[dict[str, Any]]], num_tasks: int) -> tuple[list[dict], list[dict], dict]:
    """Tables: final accuracy per task and forgetting; sparsity per site (mean ± std over seeds)."""
    acc_rows, sparsity_rows, curves = [], [], {}
    for name, seeds in runs.items():
        final = np.array([r["accuracy"][-1] for r in seeds])  # [seeds, tasks]
        diag = np.array([[r["accuracy"][j][j] for j in range(num_tasks)] for r in seeds])
        forgetting = (diag - final)[:, :-1].mean(1) if num_tasks > 1 else np.zeros(len(seeds))
        seen = np.array([[np.mean(r["accuracy"][i][: i + 1]) for i in range(num_tasks)] for r in seeds])
        row: dict[str, Any] = {"model": name, "parameters": seeds[0]["parameters"], "seeds": len(seeds)}
        for j in range(num_tasks):
            m, s = study.mean_std(final[:, j])
            row[f"task {j}"] = f"{100 * m:.1f} ± {100 * s:.1f}"
        m, s = study.mean_std(final.mean(1))
        row["mean acc (%)"] = f"{100 * m:.1f} ± {100 * s:.1f}"
        m, s = study.mean_std(forgetting)
        row["forgetting (pts)"] = f"{100 * m:.1f} ± {100 * s:.1f}"
        acc_rows.append(row)
        curves[name] = {"final": final, "seen": seen, "matrix": np.array([r["accuracy"] for r in seeds]).mean(0)}
        for site in seeds[0]["sparsity"]:
            m, s = study.mean_std([r["sparsity"][site] for r in seeds])
            sparsity_rows.append({"model": name, "site": site, "zero fraction": f"{m:.3f} ± {s:.3f}"})
    return acc_rows, sparsity_rows, curves


def plot(curves: dict, out, num_tasks: int) -> dict[str, Any]:

    from actsparse.report import figure, save_figure

    figures = {}
    fig, axes = figure(1, 2, figsize=(10, 3.8), dpi=120)
    width = 0.8 / max(1, len(curves))
    for i, (name, c) in enumerate(curves.items()):
        x = np.arange(num_tasks)
        axes[0].bar(x + i * width, 100 * c["final"].mean(0), width, yerr=100 * c["final"].std(0), label=name, capsize=2)
        steps = np.arange(1, num_tasks + 1)
        axes[1].errorbar(steps, 100 * c["seen"].mean(0), yerr=100 * c["seen"].std(0), marker="o", capsize=2, label=name)
    axes[0].set_xticks(np.arange(num_tasks) + width * (len(curves) - 1) / 2, [f"task {j}" for j in range(num_tasks)])
    axes[0].set_ylabel("test accuracy after the last task (%)")
    axes[0].set_title("What is left of each task")
    axes[1].set_xticks(np.arange(1, num_tasks + 1))
    axes[1].set_xlabel("tasks learned")
    axes[1].set_ylabel("mean accuracy on tasks seen (%)")
    axes[1].set_title("Permuted digits, sequential training")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    figures["dendrites/accuracy_after_last"] = save_figure(fig, out / "accuracy_after_last.png")
    fig, axes = figure(1, len(curves), figsize=(4.2 * len(curves), 3.6), dpi=120, squeeze=False)
    for ax, (name, c) in zip(axes[0], curves.items()):
        im = ax.imshow(100 * c["matrix"], vmin=0, vmax=100, cmap="viridis")
        for i in range(num_tasks):
            for j in range(num_tasks):
                ax.text(j, i, f"{100 * c['matrix'][i, j]:.0f}", ha="center", va="center", fontsize=7, color="w")
        ax.set_xlabel("evaluated on task")
        ax.set_ylabel("after training task")
        ax.set_title(name)
    fig.colorbar(im, ax=axes[0, -1], label="test accuracy (%)")
    figures["dendrites/accuracy_matrix"] = save_figure(fig, out / "accuracy_matrix.png")
    return figures


@study.entry
def run(cfg: DictConfig) -> dict[str, Any]:
    settings = cfg.dendrites
    out = study.prepare(cfg, threads=settings.get("threads"))
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    start = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, model_cfg in settings.models.items():
        for seed in settings.seeds:
            t0 = time.perf_counter()
            result = train_sequentially(cfg, model_cfg, int(seed))
            runs.setdefault(name, []).append(result)
            final = result["accuracy"][-1]
            print(f"{name} seed {seed}: final accuracy per task {[round(100 * a, 1) for a in final]} "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
    num_tasks = int(cfg.data.num_tasks)
    acc_rows, sparsity_rows, curves = summarize(runs, num_tasks)
    elapsed = time.perf_counter() - start
    tables = {"Test accuracy on every task after the last one (%, mean ± std over seeds)": acc_rows,
              "Activation sparsity per site after the last task (fraction of exact zeros, all tasks' test sets)":
                  sparsity_rows}
    study.write_results(out, tables, {"runs": runs, "seconds": round(elapsed, 1)},
                        title=f"Active dendrites vs plain MLP: {num_tasks} permuted-digits tasks, "
                              f"{settings.epochs_per_task} epochs each ({elapsed:.0f} s)")
    figures = plot(curves, out, num_tasks)
    study.log_to_wandb(cfg, out, figures=figures, tables={"dendrites/accuracy": acc_rows,
                                                          "dendrites/sparsity": sparsity_rows})
    return {"runs": runs, "accuracy": acc_rows, "sparsity": sparsity_rows, "seconds": elapsed, "out": str(out)}


if __name__ == "__main__":
    study.alias_main("dendrites")
