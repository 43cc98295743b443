"""The S-KAN function-fitting study (issue 13; arXiv 2408.08338): MLP, every single-space KAN,
S-KAN (three-phase training) and pykan's own ``KAN`` on the same data, budget and seeds.

    actsparse-train experiment=skan_fit                          # 7 tasks x 10 models x 3 seeds
    actsparse-train experiment=skan_fit skan_fit.steps=2000 skan_fit.optimizer=lbfgs   # full size

For every task (``skan_fit.tasks``: name -> KAN widths) and seed, each model trains full-batch
for ``skan_fit.steps`` optimizer steps with the same optimizer and learning rate:

- ``mlp``: SiLU MLP, 2 hidden layers, width chosen to match the B-spline KAN's parameter count;
- one single-space KAN per activation space (B-spline grid updates as pykan: every
  ``grid_update_every`` steps up to ``grid_update_until``);
- ``skan``: S-KAN with all spaces, trained by :class:`~actsparse.callbacks.skan.SKANTraining`
  (full / selective / pruned fractions of the same budget), evaluated after pruning;
- ``pykan``: ``kan.KAN`` with the same widths, grid 5, order 3, trained by pykan's own ``fit``
  (same optimizer, learning rate and steps; its grid updates on).

Writes ``results.md``/``results.json`` (test RMSE mean ± std, parameter counts, the spaces S-KAN
chose), ``curves.png`` (training RMSE per step) and ``spaces.png`` into the run folder.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections import Counter
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from actsparse.callbacks.skan import SKANTraining
from actsparse.data.skan_functions import FunctionDataModule, get_task
from actsparse.experiments import study
from actsparse.models.skan import KAN, MLPRegressor, PyKAN, mlp_width_for
from actsparse.plugins.kan import SPACES
from actsparse.plugins.kan.layers import skan_layers
from actsparse.tasks.skan_regress import Regressor


class _Curve(L.Callback):
    """Training RMSE after every optimizer step (sqrt of the step's MSE loss)."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.values.append(float(loss.detach().sqrt()))


def _rmse(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x) - y).square().mean().sqrt())


def _count(model: torch.nn.Module) -> int:
    if isinstance(model, PyKAN):  # the parameters pykan trains in its numeric branch
        return sum(p.numel() for n, p in model.named_parameters() if ".act_fun." in n and p.requires_grad)
    return sum(p.numel() for p in model.parameters())


def build_model(name: str, widths: list[int], spaces: list[str], seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if name == "mlp":
        target = _count(KAN(widths, spaces="bspline"))
        return MLPRegressor(widths[0], [mlp_width_for(target, widths[0], depth=2, out_features=widths[-1])] * 2,
                            widths[-1])
    if name == "skan":
        return KAN(widths, spaces=spaces)
    if name == "pykan":
        return PyKAN(widths, grid=5, k=3, seed=seed)
    if name in SPACES:
        return KAN(widths, spaces=name)
    raise ValueError(f"Unknown model {name!r} in skan_fit.models; use mlp, skan, pykan or a space: {', '.join(SPACES)}.")


def fit_one(cfg: DictConfig, task: str, widths: list[int], name: str, seed: int) -> dict[str, Any]:
    s = cfg.skan_fit
    L.seed_everything(seed, verbose=False)
    dm = FunctionDataModule(task, n_train=int(s.n_train), n_val=16, n_test=int(s.n_test), seed=seed,
                            full_batch_repeats=int(s.steps))
    dm.setup()
    x_train, y_train = dm.tensors("train")
    x_test, y_test = dm.tensors("test")
    model = build_model(name, widths, list(s.spaces), seed)
    steps = int(s.steps)
    start = time.perf_counter()
    chosen: dict[str, list[str]] = {}
    if name == "pykan":
        dataset = {"train_input": x_train, "train_label": y_train, "test_input": x_test, "test_label": y_test}
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            result = model.kan.fit(dataset, opt={"adam": "Adam", "lbfgs": "LBFGS"}[str(s.optimizer)], steps=steps,
                                   lr=float(s.lr), update_grid=True, lamb=0.0,
                                   grid_update_num=max(1, int(s.grid_update_until) // max(1, int(s.grid_update_every))),
                                   stop_grid_update_step=int(s.grid_update_until))
        curve = [float(v) for v in result["train_loss"]]
        params_trained = params = _count(model)
    else:
        curve_cb = _Curve()
        callbacks: list[L.Callback] = [curve_cb]
        is_kan = bool(skan_layers(model))
        if is_kan:
            if name == "skan":
                full = int(round(steps * float(s.full_fraction)))
                selective = int(round(steps * float(s.selective_fraction)))
            else:
                full, selective = steps, 0
            callbacks.append(SKANTraining(full_steps=full, selective_steps=selective,
                                          final_temperature=float(s.final_temperature),
                                          grid_update_every=int(s.grid_update_every),
                                          grid_update_until=int(s.grid_update_until)))
        params_trained = _count(model)
        task_module = Regressor(model, optimizer=str(s.optimizer), lr=float(s.lr))
        trainer = study.trainer(cfg, callbacks, max_steps=steps, max_epochs=-1, limit_val_batches=0,
                                num_sanity_val_steps=0, enable_progress_bar=False, gradient_clip_val=None,
                                val_check_interval=None, check_val_every_n_epoch=None, log_every_n_steps=max(1, steps))
        trainer.fit(task_module, train_dataloaders=dm.train_dataloader())
        curve = curve_cb.values
        params = _count(model)
        if name == "skan":
            chosen = {n: m.chosen_spaces() for n, m in skan_layers(model)}
    return {"task": task, "model": name, "seed": seed, "test_rmse": _rmse(model, x_test, y_test),
            "train_rmse": _rmse(model, x_train, y_train), "params": params, "params_trained": params_trained,
            "seconds": time.perf_counter() - start, "curve": curve, "chosen": chosen}


def _fmt(m: float, sd: float) -> str:
    return f"{m:.3e} ± {sd:.1e}"


def summarize(runs: list[dict[str, Any]], tasks: dict[str, list[int]], models: list[str]) -> dict[str, Any]:
    rmse_rows, param_rows, space_rows = [], [], []
    wins = {"skan_le_all_single": 0, "skan_lt_mlp": 0, "skan_lt_pykan": 0}
    single = [m for m in models if m in SPACES]
    per_task: dict[str, dict[str, tuple[float, float]]] = {}
    for task in tasks:
        stats = {}
        for model in models:
            vals = [r["test_rmse"] for r in runs if r["task"] == task and r["model"] == model]
            if vals:
                stats[model] = study.mean_std(vals)
        per_task[task] = stats
        rmse_rows.append({"task": task, "widths": str(tasks[task]),
                          **{m: _fmt(*stats[m]) for m in models if m in stats}})
        param_rows.append({"task": task, **{m: next(r["params"] for r in runs if r["task"] == task and r["model"] == m)
                                            for m in models if m in stats}})
        if "skan" in stats:
            sk = stats["skan"][0]
            wins["skan_le_all_single"] += all(sk <= stats[m][0] for m in single if m in stats)
            wins["skan_lt_mlp"] += "mlp" in stats and sk < stats["mlp"][0]
            wins["skan_lt_pykan"] += "pykan" in stats and sk < stats["pykan"][0]
            counts = Counter(sp for r in runs if r["task"] == task and r["model"] == "skan"
                             for picks in r["chosen"].values() for sp in picks)
            total = sum(counts.values())
            space_rows.append({"task": task, **{sp: f"{100 * counts.get(sp, 0) / total:.0f}%" for sp in SPACES}})
        if "skan" in stats:
            best_single = min((m for m in single if m in stats), key=lambda m: stats[m][0], default=None)
            rmse_rows[-1]["best single"] = best_single or "–"
    return {"rmse_rows": rmse_rows, "param_rows": param_rows, "space_rows": space_rows, "wins": wins,
            "per_task": {t: {m: list(v) for m, v in st.items()} for t, st in per_task.items()}}


def plot_curves(runs: list[dict[str, Any]], tasks: dict[str, list[int]], models: list[str], path) -> None:

    from actsparse.report import figure, save_figure

    cols = min(4, len(tasks))
    rows = (len(tasks) + cols - 1) // cols
    fig, axes = figure(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=110, squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for model in models:
            curves = [r["curve"] for r in runs if r["task"] == task and r["model"] == model and r["curve"]]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            mean = np.mean([c[:n] for c in curves], axis=0)
            style = {"lw": 2.2} if model in ("skan", "pykan", "mlp") else {"lw": 0.9, "alpha": 0.8}
            ax.plot(np.arange(1, n + 1), mean, label=model, **style)
        ax.set_yscale("log")
        ax.set_title(f"{task} {get_task(task).formula}", fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel("train RMSE")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, ncol=2)
    save_figure(fig, path)


def plot_spaces(space_rows: list[dict[str, str]], path) -> None:

    from actsparse.report import figure, save_figure

    if not space_rows:
        return
    spaces = list(SPACES)
    data = np.array([[float(r[s].rstrip("%")) for s in spaces] for r in space_rows])
    fig, ax = figure(figsize=(1.2 + 1.0 * len(spaces), 0.5 + 0.45 * len(space_rows)), dpi=120)
    im = ax.imshow(data, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(spaces)), spaces, rotation=25, fontsize=8)
    ax.set_yticks(range(len(space_rows)), [r["task"] for r in space_rows], fontsize=8)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            ax.text(j, i, f"{data[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if data[i, j] < 50 else "black")
    fig.colorbar(im, ax=ax, label="% of S-KAN nodes (all seeds)")
    ax.set_title("Activation space chosen by S-KAN nodes")
    save_figure(fig, path)


@study.entry
def run(cfg: DictConfig) -> dict[str, Any]:
    s = cfg.skan_fit
    out = study.prepare(cfg, threads=s.get("threads"))
    warnings.filterwarnings("ignore", category=UserWarning)
    tasks = {str(k): [int(w) for w in v] for k, v in OmegaConf.to_container(s.tasks, resolve=True).items()}
    for task, widths in tasks.items():
        if get_task(task).dim != widths[0]:
            raise ValueError(f"skan_fit.tasks.{task}: widths {widths} start with {widths[0]} inputs but the task "
                             f"has {get_task(task).dim}.")
    models = [str(m) for m in s.models]
    for m in models:
        if m not in ("mlp", "skan", "pykan") and m not in SPACES:
            raise ValueError(f"Unknown model {m!r} in skan_fit.models; use mlp, skan, pykan or a space: "
                             f"{', '.join(SPACES)}.")
    runs = []
    start = time.perf_counter()
    for task, widths in tasks.items():
        for seed in s.seeds:
            for model in models:
                r = fit_one(cfg, task, widths, model, int(seed))
                runs.append(r)
                print(f"{task:13s} seed {seed} {model:12s} test RMSE {r['test_rmse']:.3e}  params {r['params']:,}  "
                      f"({r['seconds']:.1f} s)", flush=True)
    summary = summarize(runs, tasks, models)
    plot_curves(runs, tasks, models, out / "curves.png")
    plot_spaces(summary["space_rows"], out / "spaces.png")
    n = len(tasks)
    wins = summary["wins"]
    target_rows = [
        {"claim": "S-KAN RMSE <= every single-space KAN", "tasks": f"{wins['skan_le_all_single']}/{n}",
         "target": "≥ 5/7"},
        {"claim": "S-KAN RMSE < MLP (matched parameters)", "tasks": f"{wins['skan_lt_mlp']}/{n}", "target": "≥ 5/7"},
        {"claim": "S-KAN RMSE < pykan KAN", "tasks": f"{wins['skan_lt_pykan']}/{n}", "target": "–"},
    ]
    tables = {
        f"Test RMSE (mean ± std over {len(s.seeds)} seeds; {s.steps} {s.optimizer} steps, lr {s.lr})": summary["rmse_rows"],
        "Parameters (S-KAN: after pruning)": summary["param_rows"],
        "Spaces chosen by S-KAN nodes (share of nodes, all layers and seeds)": summary["space_rows"],
        "Targets": target_rows,
    }
    payload = {"runs": [{k: v for k, v in r.items()} for r in runs], "summary": summary,
               "seconds": round(time.perf_counter() - start, 1)}
    study.write_results(out, tables, payload, title="S-KAN function fitting")
    study.log_to_wandb(cfg, out, figures={"skan_fit/curves": out / "curves.png", "skan_fit/spaces": out / "spaces.png"},
                       tables={"skan_fit/rmse": summary["rmse_rows"], "skan_fit/spaces": summary["space_rows"]})
    return {"wins": wins, "seconds": payload["seconds"]}


if __name__ == "__main__":
    study.alias_main("skan_fit")
