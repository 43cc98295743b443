"""The ProSparse experiment in miniature (``actsparse-train experiment=prosparse``).

1. Train the tiny LM with SiLU (the dense baseline); cached, so multiruns pay for it once.
2. Continue it for the same step budget under each regime, with actsparse's callbacks:
   ``silu_dense`` (keep SiLU), ``relu`` (ActivationSwap only), ``relu_fixed`` (ReLU + the final
   lambda held after the substitution stage, the paper's Table 5 ablation), ``prosparse`` (ReLU +
   the published schedule's shape, ``prosparse.schedule``, scaled to the step budget: substitution,
   a held warm-up, sine rises); ``prosparse_fatrelu`` is the ProSparse model after ThresholdShift
   (no further training).
3. Evaluate every model on the validation set: activation sparsity (zeros over all FFN sites
   and tokens), perplexity, and perplexity relative to ReLU-only; write ``results.md``,
   ``results.json`` and ``tradeoff.png``.

A multirun over ``prosparse.final_lambda`` draws the sparsity-vs-perplexity frontier of the
schedule against fixed lambda (:class:`FrontierPlot`, a Hydra callback).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from lightning import seed_everything  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

from actsparse.callbacks.prosparse import paper_stages, validate_stages  # noqa: E402
from actsparse.data.corpus import cache_dir  # noqa: E402
from actsparse.experiments import study  # noqa: E402
from actsparse.plugins import record, swap_activation  # noqa: E402
from actsparse.report import figure, print_table, save_figure  # noqa: E402
from actsparse.tasks.lm import CausalLM  # noqa: E402
from actsparse.train import fit

REGIMES = ("silu_dense", "relu", "relu_fixed", "prosparse", "prosparse_fatrelu")
LABELS = {
    "silu_dense": "SiLU dense",
    "relu": "ReLU only",
    "relu_fixed": "ReLU + fixed λ",
    "prosparse": "ProSparse schedule",
    "prosparse_fatrelu": "ProSparse + FATReLU",
}


def schedule(p: DictConfig) -> list[list[float]]:
    """The ProSparse regime's stages in continuation steps: the preset ``p.schedule`` scaled to
    ``p.steps`` and ``p.final_lambda``, or ``p.stage_fractions`` (fraction of final lambda, end)."""
    if p.get("stage_fractions"):
        stages = validate_stages([(float(frac) * p.final_lambda, int(end)) for frac, end in p.stage_fractions])
    else:
        stages = paper_stages(p.schedule, p.steps, p.final_lambda)
    return [[lam, end] for lam, end in stages]


def fixed_schedule(p: DictConfig) -> list[list[float]]:
    """Fixed lambda: after the schedule's substitution stage (Table 5's ablation), or from step 1."""
    stages = schedule(p)
    substitution_end = stages[0][1] if stages[0][0] == 0 and p.get("fixed_after_substitution", True) else 0
    if substitution_end == 0:
        return [[float(p.final_lambda), 0]]
    return [[0.0, substitution_end], [float(p.final_lambda), max(p.steps, substitution_end + 1)]]


def _regime_config(cfg: DictConfig, regime: str, init_from: Path, out_dir: Path) -> DictConfig:
    p = cfg.prosparse
    c = copy.deepcopy(cfg)
    with open_dict(c):
        c.paths.output_dir = str(out_dir)
        c.init_from = str(init_from)
        c.entry = "actsparse.train.fit"
        c.trainer.max_steps = p.steps
        c.trainer.val_check_interval = p.steps
        c.task.lr = p.lr
        c.task.warmup_steps = p.warmup_steps
        c.task_name = f"{cfg.task_name}-{regime}"
        c.callbacks = c.callbacks or {}
        if regime != "silu_dense":
            c.callbacks.activation_swap = {"_target_": "actsparse.callbacks.ActivationSwap", "activation": "relu"}
            c.callbacks.sparsity = {"_target_": "actsparse.callbacks.SparsityMonitor"}
        if regime in ("relu_fixed", "prosparse"):
            stages = fixed_schedule(p) if regime == "relu_fixed" else schedule(p)
            c.callbacks.prosparse = {"_target_": "actsparse.callbacks.ProSparse", "stages": stages,
                                     "normalize": p.normalize}
    return c


def _pretrain(cfg: DictConfig, run_dir: Path) -> Path:
    """The SiLU baseline's checkpoint, trained once per (model, data, task, steps, seed)."""
    p = cfg.prosparse
    key_cfg = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data", "task")}
    key_cfg.update(steps=p.pretrain_steps, seed=cfg.seed, trainer=cfg.trainer.get("precision"))
    key = hashlib.sha256(json.dumps(key_cfg, sort_keys=True).encode()).hexdigest()[:16]
    cached = cache_dir(cfg.data.get("cache_dir")) / "prosparse_pretrain" / f"silu-{key}.ckpt"
    if cached.exists():
        print(f"[prosparse] SiLU baseline from cache: {cached}", flush=True)
        return cached
    c = copy.deepcopy(cfg)
    with open_dict(c):
        c.paths.output_dir = str(run_dir / "pretrain_silu")
        c.entry = "actsparse.train.fit"
        c.trainer.max_steps = p.pretrain_steps
        c.task_name = f"{cfg.task_name}-pretrain"
        c.model.activation = "silu"
    print(f"[prosparse] training the SiLU baseline for {p.pretrain_steps} steps", flush=True)
    summary = fit(c)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    shutil.copyfile(summary["checkpoint"], tmp)
    tmp.replace(cached)
    return cached


def evaluate(cfg: DictConfig, checkpoint: str | Path, activation: str, threshold: float | None,
             datamodule: Any) -> dict[str, float]:
    """Validation loss, perplexity and activation sparsity of a checkpoint run with ``activation``."""
    task = CausalLM.load_from_checkpoint(checkpoint, map_location="cpu")
    swap_activation(task, activation, threshold=threshold)
    trainer = study.trainer(cfg, enable_progress_bar=False, limit_val_batches=cfg.trainer.get("limit_val_batches", 1.0))
    with record(task, what="zero_fraction") as rec:
        (metrics,) = trainer.validate(task, datamodule=datamodule, verbose=False)
    return {"val_loss": metrics["val/loss"], "val_ppl": metrics["val/ppl"], "sparsity": rec.zero_fraction()}


def run(cfg: DictConfig) -> dict[str, Any]:
    p = cfg.prosparse
    unknown = [r for r in p.regimes if r not in REGIMES]
    if unknown:
        raise ValueError(f"Unknown prosparse.regimes {unknown}; choose from {', '.join(REGIMES)}.")
    run_dir = study.prepare(cfg)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    base = _pretrain(cfg, run_dir)

    results: dict[str, dict[str, float]] = {}
    checkpoints: dict[str, str] = {}
    trained = [r for r in p.regimes if r != "prosparse_fatrelu"]
    if "prosparse_fatrelu" in p.regimes and "prosparse" not in trained:
        trained.append("prosparse")
    for regime in trained:
        print(f"[prosparse] regime {regime}: {p.steps} steps from the SiLU baseline", flush=True)
        seed_everything(cfg.seed, workers=True)
        summary = fit(_regime_config(cfg, regime, base, run_dir / regime))
        checkpoints[regime] = summary["checkpoint"]
    for regime in p.regimes:
        if regime == "prosparse_fatrelu":
            results[regime] = evaluate(cfg, checkpoints["prosparse"], "fatrelu", p.threshold, datamodule)
        else:
            activation = "silu" if regime == "silu_dense" else "relu"
            results[regime] = evaluate(cfg, checkpoints[regime], activation, None, datamodule)
    reference = results.get("relu", {}).get("val_ppl")
    for values in results.values():
        values["ppl_ratio_to_relu"] = values["val_ppl"] / reference if reference else float("nan")

    rows = [{"regime": LABELS[r], "activation sparsity": f"{v['sparsity']:.2%}", "val perplexity": v["val_ppl"],
             "ppl / ReLU-only": v["ppl_ratio_to_relu"]} for r, v in results.items()]
    stage_rows = [{"regime": LABELS[r], "stages (λ, end step)": ", ".join(f"({lam:.3g}, {end})" for lam, end in st)}
                  for r, st in (("relu_fixed", fixed_schedule(p)), ("prosparse", schedule(p))) if r in p.regimes]
    payload = {"final_lambda": p.final_lambda, "schedule": p.get("schedule"), "stages": schedule(p),
               "fixed_stages": fixed_schedule(p), "steps": p.steps, "pretrain_steps": p.pretrain_steps,
               "threshold": p.threshold, "results": results}
    title = f"ProSparse in miniature (final λ = {p.final_lambda}, {p.steps} steps per regime)"
    study.write_results(run_dir, {title: rows, "Schedules": stage_rows}, payload)
    plot_tradeoff(results, run_dir / "tradeoff.png")
    return {"val loss": results.get("prosparse", next(iter(results.values())))["val_loss"], **payload}


def plot_tradeoff(results: dict[str, dict[str, float]], path: Path) -> None:
    # A legend, not text next to the points: close points (ProSparse with and without FATReLU)
    # made annotations overlap.
    fig, ax = figure(figsize=(6.5, 4), dpi=120)
    markers = "osD^v"
    for i, (regime, v) in enumerate(results.items()):
        ax.scatter(v["sparsity"] * 100, v["val_ppl"], s=55, marker=markers[i % len(markers)], alpha=0.85,
                   label=f"{LABELS[regime]} ({v['sparsity']:.1%}, {v['val_ppl']:.3f})")
    ax.set_xlabel("activation sparsity (%)")
    ax.set_ylabel("validation perplexity")
    ax.set_title("Sparsity vs perplexity per regime")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    save_figure(fig, path)


class FrontierPlot(HydraCallback):
    """Hydra callback: after a multirun over ``prosparse.final_lambda``, collect every job's
    ``results.json`` and draw sparsity vs perplexity for the schedule and for fixed lambda
    (``frontier.png`` and ``frontier.md`` in the sweep directory)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        points: dict[str, list[tuple[float, float, float]]] = {}
        for path in sorted(sweep_dir.glob("*/results.json")):
            data = json.loads(path.read_text())
            for regime, v in data["results"].items():
                points.setdefault(regime, []).append((data["final_lambda"], v["sparsity"], v["val_ppl"]))
        if not points:
            return
        fig, ax = figure(figsize=(6.5, 4), dpi=120)
        rows = []
        for k, (regime, pts) in enumerate(points.items()):
            pts.sort()
            ax.plot([s * 100 for _, s, _ in pts], [q for _, _, q in pts], marker="o", label=LABELS[regime])
            for lam, s, q in pts:  # one regime's labels above its points, the next one's below
                ax.annotate(f"λ={lam:g}", (s * 100, q), textcoords="offset points", fontsize=7,
                            xytext=(-6, 8) if k % 2 == 0 else (4, -12))
                rows.append({"regime": LABELS[regime], "final λ": lam, "activation sparsity": f"{s:.2%}",
                             "val perplexity": q})
        ax.set_xlabel("activation sparsity (%)")
        ax.set_ylabel("validation perplexity")
        ax.set_title("Sparsity–perplexity frontier: schedule vs fixed λ")
        ax.grid(alpha=0.3)
        ax.legend()
        save_figure(fig, sweep_dir / "frontier.png")
        (sweep_dir / "frontier.md").write_text(study.markdown_table(rows) + "\n")
        print_table(rows, title="ProSparse frontier")


if __name__ == "__main__":
    study.alias_main("prosparse")
