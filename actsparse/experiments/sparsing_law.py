"""The Sparsing Law study in miniature (``actsparse-train -m experiment=sparsing_law ...``).

Each job trains the tiny LM with one activation (``model.activation``) and one width/depth
shape (``sparsing_law.shape``), with :class:`~actsparse.callbacks.SparsityMonitor` sampling the
exact-zero ratio of the training forwards every few steps and
:class:`~actsparse.callbacks.evaluator.SparsityEvaluator` measuring the PPL-p% activation ratio
along training. ``sparsing_law.cett`` chooses how:

- ``joint`` (default, the paper's protocol): a snapshot of the weights at every validation; at
  the end one CETT is searched jointly over the last ``joint_last`` snapshots
  (:func:`~actsparse.evaluation.joint_cett`) and every snapshot's activation ratio is measured at
  that CETT (:func:`~actsparse.evaluation.activation_ratio_at_cett`);
- ``per_checkpoint``: PPL-p% sparsity searched again at every validation (the previous study).

It then fits the activation's law to ratio-vs-tokens, measures the PPL-p% sparsity of the final
model, and writes ``results.json``/``results.md`` (:func:`actsparse.experiments.study.write_results`).
:class:`SparsingLawReport` (a Hydra callback) gathers the jobs of a multirun into ``study.md``,
``ratio_vs_tokens.png`` and ``ratio_vs_width_depth.png``; ``python -m
actsparse.experiments.sparsing_law DIR`` does the same for any directory of jobs.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback as HydraCallback
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, open_dict

from actsparse.callbacks.evaluator import SparsityEvaluator
from actsparse.evaluation import ppl_p_sparsity
from actsparse.experiments import study
from actsparse.metrics.functional.laws import ActivationLaw, fit_activation_law
from actsparse.report import figure, plot_activation_laws, save_figure

MODES = ("joint", "per_checkpoint")


def ratio_curve(run_dir: Path, tokens_per_step: int, column: str = "sparsity/mean") -> tuple[list[float], list[float]]:
    """(tokens seen, 1 − ``column``) from the run's CSV log: ``sparsity/mean`` (exact zeros of the
    training forwards) or ``val/ppl_p1_sparsity`` (PPL-1% sparsity at each validation)."""
    files = sorted(run_dir.glob("csv/version_*/metrics.csv"))
    if not files:
        raise FileNotFoundError(f"No CSV log under {run_dir}/csv: the study needs logger=csv.")
    tokens, ratio = [], []
    with files[-1].open() as fh:
        for row in csv.DictReader(fh):
            if row.get(column):
                step = int(float(row["step"]))
                if column.startswith("sparsity/"):
                    step += 1  # training-step logs carry the step before its increment
                tokens.append(float(step * tokens_per_step))
                ratio.append(1.0 - float(row[column]))
    return tokens, ratio


def _law_to_dict(law: ActivationLaw | None) -> dict[str, float] | None:
    if law is None:
        return None
    return {**{k: getattr(law, k) for k in ("kind", "c", "alpha", "b", "A0", "r2")}, "c_billions": law.c_billions}


def _law_from_dict(d: dict | None) -> ActivationLaw | None:
    return None if not d else ActivationLaw(**{k: d[k] for k in ("kind", "c", "alpha", "b", "A0", "r2")})


def _fit(tokens, ratio, kind: str) -> ActivationLaw | None:
    try:
        return fit_activation_law(tokens, ratio, kind=kind)
    except (RuntimeError, ValueError) as err:
        print(f"[sparsing_law] {kind} law fit failed: {err}", flush=True)
        return None


def run(cfg: DictConfig) -> dict[str, Any]:
    s = cfg.sparsing_law
    if s.shape not in s.shapes:
        raise ValueError(f"Unknown sparsing_law.shape {s.shape!r}; choose from {', '.join(s.shapes)}.")
    mode = str(s.get("cett", "joint"))
    if mode not in MODES:
        raise ValueError(f"Unknown sparsing_law.cett {mode!r}; choose from {', '.join(MODES)}.")
    activation = str(cfg.model.activation)
    kind = "relu" if activation in ("relu", "fatrelu") else "silu"
    cfg = cfg.copy()
    with open_dict(cfg):
        for key, value in s.shapes[s.shape].items():
            cfg.model[key] = value
    run_dir = study.prepare(cfg, threads=s.get("threads"))

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    task = instantiate(cfg.task, model=instantiate(cfg.model, _convert_="all"), _convert_="all")
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()
                 if isinstance(node, DictConfig) and "_target_" in node]
    # a study keeps no checkpoints (the evaluator keeps its snapshots) and prints no progress bar
    callbacks = [cb for cb in callbacks if not isinstance(cb, (ModelCheckpoint, ProgressBar))]
    evaluators = [cb for cb in callbacks if isinstance(cb, SparsityEvaluator)]
    if not evaluators:
        raise ValueError("The sparsing_law study needs the SparsityEvaluator callback (callbacks.ppl_sparsity).")
    evaluator = evaluators[0]
    evaluator.joint_last = int(s.joint_last) if mode == "joint" else None
    loggers = [instantiate(node) for node in (cfg.get("logger") or {}).values()
               if isinstance(node, DictConfig) and "_target_" in node]
    has_csv = any(isinstance(lg, CSVLogger) for lg in loggers)
    if not has_csv:
        rank_zero_warn("sparsing_law: no CSV logger (e.g. logger=none), so the zero-based ratio curve, read from "
                       "the CSV log, is left out of the results; keep the experiment's logger=csv to get it.")
    trainer = study.trainer(cfg, callbacks, logger=loggers or False)
    trainer.fit(task, datamodule=datamodule)
    val_loss = trainer.callback_metrics.get("val/loss")

    tokens_per_step = int(cfg.data.batch_size) * int(cfg.data.seq_len) * int(trainer.world_size)
    zero_tokens, zero_ratio = ratio_curve(run_dir, tokens_per_step) if has_csv else ([], [])
    if mode == "joint":
        points = [(step * tokens_per_step, ratio) for step, ratio, _ in evaluator.curve]
    else:
        key = evaluator.key(float(s.ppl_p))
        points = [(step * tokens_per_step, 1.0 - v[key]) for step, v in evaluator.history]
    tokens, ratio = [float(t) for t, _ in points], [float(r) for _, r in points]
    law = _fit(tokens[s.skip_first:], ratio[s.skip_first:], kind)

    model = task.model
    r = ppl_p_sparsity(model, datamodule.val_dataloader(), float(s.ppl_p), max_batches=int(s.eval_batches))
    shape = dict(s.shapes[s.shape])
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
    joint = evaluator.joint
    payload = {
        "activation": activation, "kind": kind, "shape": s.shape, **shape, "cett_mode": mode,
        "width_depth": shape["d_model"] / shape["n_layers"], "non_embedding_params": non_embedding,
        "tokens": tokens, "ratio": ratio, "law": _law_to_dict(law),
        "joint_cett": joint.cett if joint else None, "joint_last": int(s.joint_last) if mode == "joint" else None,
        "joint_ppl_ratios": joint.ppl_ratios if joint else None,
        "curve_ppl_ratio": [ppl for _, _, ppl in evaluator.curve] if mode == "joint" else None,
        "zero_tokens": zero_tokens, "zero_ratio": zero_ratio,
        "final_zero_ratio": float(np.mean(zero_ratio[-max(1, len(zero_ratio) // 5):])) if zero_ratio else None,
        "final_ratio": float(np.mean(ratio[-max(1, len(ratio) // 5):])) if ratio else None,
        "skip_first": int(s.skip_first), "ppl_p": float(s.ppl_p), "ppl_sparsity": r.sparsity, "ppl_cett": r.cett,
        "ppl_dense": r.ppl_dense, "ppl_truncated": r.ppl_truncated, "ppl_forwards": r.forwards,
        "val_loss": float(val_loss) if val_loss is not None else None,
    }
    row = {"activation": activation, "shape": s.shape, "CETT": mode,
           "ratio first→last": f"{ratio[0]:.3f}→{ratio[-1]:.3f}" if ratio else "—",
           "law": str(law) if law else "fit failed",
           "c (D in 1e9 tokens)": law.c_billions if law else float("nan"),
           f"PPL-{float(s.ppl_p):g}% sparsity (final)": r.sparsity}
    study.write_results(run_dir, {f"Sparsing Law job: {activation} {s.shape}": [row]}, payload,
                        title="Sparsing Law in miniature (one job)")
    print(f"[sparsing_law] {activation} {s.shape} ({mode} CETT"
          f"{f' {joint.cett:.4f}' if joint else ''}): final ratio {payload['final_ratio']}, law {law}, "
          f"PPL-{s.ppl_p:g}% sparsity {r.sparsity:.4f}", flush=True)
    return {"val loss": payload["val_loss"],
            **{k: v for k, v in payload.items() if k not in ("tokens", "ratio", "zero_tokens", "zero_ratio")}}


def report(run_files: list[Path], out_dir: Path) -> str:
    """study.md + the two figures from the jobs' results.json."""
    runs = [json.loads(p.read_text()) for p in run_files]
    if not runs:
        return ""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.sort(key=lambda r: (r["activation"], r["width_depth"]))
    for r in runs:  # refit with the current code (a job's own fit is kept in its results.json)
        skip = r.get("skip_first", 2)
        r["law"] = _law_to_dict(_fit(r["tokens"][skip:], r["ratio"][skip:], r["kind"])) if r["ratio"] else None
        r["zero_law"] = None
        if r["kind"] == "relu" and len(r.get("zero_ratio", [])) > 6:  # exact zeros: meaningful for ReLU only
            try:
                r["zero_law"] = _law_to_dict(fit_activation_law(r["zero_tokens"][skip:], r["zero_ratio"][skip:], "relu"))
            except (RuntimeError, ValueError):
                pass
    curves = {}
    for r in runs:
        law = _law_from_dict(r["law"])
        curves[f"{r['activation']} {r['shape']} (d{r['d_model']}×L{r['n_layers']})"] = (r["tokens"], r["ratio"], law)
    modes = {r.get("cett_mode", "per_checkpoint") for r in runs}
    how = "at one CETT searched jointly over the last checkpoints" if modes == {"joint"} else "PPL-1% per checkpoint"
    plot_activation_laws(curves, out_dir / "ratio_vs_tokens.png",
                         title=f"Activation ratio ({how}) vs training tokens")
    zero_curves = {f"{r['activation']} {r['shape']} (d{r['d_model']}×L{r['n_layers']})":
                   (r["zero_tokens"], r["zero_ratio"], _law_from_dict(r["zero_law"]))
                   for r in runs if r["kind"] == "relu" and r.get("zero_ratio")}
    if zero_curves:
        plot_activation_laws(zero_curves, out_dir / "zero_ratio_vs_tokens.png",
                             title="ReLU: fraction of nonzero activations vs training tokens")

    fig, ax = figure(figsize=(6, 4), dpi=120)
    for act in sorted({r["activation"] for r in runs}):
        pts = sorted((r["width_depth"], r["final_ratio"]) for r in runs
                     if r["activation"] == act and r.get("final_ratio") is not None)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=act)
    ax.set_xscale("log")
    ax.set_xlabel("width / depth (d_model / n_layers)")
    ax.set_ylabel("final activation ratio")
    ax.set_title("Activation ratio vs width/depth (≈ fixed parameters)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out_dir / "ratio_vs_width_depth.png")

    rows = []
    for r in runs:
        law = r["law"] or {}
        trend = "—" if len(r["ratio"]) < 2 else ("down" if r["ratio"][-1] < r["ratio"][0] else "up")
        joint = r.get("cett_mode", "per_checkpoint") == "joint"
        rows.append({"activation": r["activation"], "shape": f"d{r['d_model']}×L{r['n_layers']}",
                     "width/depth": f"{r['width_depth']:.1f}", "params (non-emb.)": r["non_embedding_params"],
                     "CETT": f"joint {r['joint_cett']:.4f}" if joint and r.get("joint_cett") is not None
                     else "per checkpoint",
                     "ratio first→last": f"{r['ratio'][0]:.3f}→{r['ratio'][-1]:.3f} ({trend})" if r["ratio"] else "—",
                     "zero-based ratio (end)": f"{r['final_zero_ratio']:.3f}" if r.get("final_zero_ratio") is not None else "—",
                     "fitted A0": f"{law['A0']:.3f}" if law else "fit failed",
                     "α": f"{law['alpha']:.3g}" if law else "—",
                     "c (D in tokens)": f"{law['c']:.3g}" if law else "—",
                     "c (D in 1e9 tokens)": f"{law['c_billions']:.3g}" if law and "c_billions" in law else "—",
                     "R²": f"{law['r2']:.2f}" if law else "—",
                     "A0 of zero-based fit (R²)": f"{r['zero_law']['A0']:.3f} ({r['zero_law']['r2']:.2f})"
                     if r.get("zero_law") else "—",
                     f"PPL-{r['ppl_p']:g}% sparsity (final)": f"{r['ppl_sparsity']:.3f}",
                     "its CETT": f"{r['ppl_cett']:.3f}", "val ppl": f"{r['ppl_dense']:.2f}"})
    text = study.write_results(out_dir, {"Sparsing Law in miniature": rows}, {"runs": runs}, name="study")
    return text


class SparsingLawReport(HydraCallback):
    """Hydra callback: after the multirun, :func:`report` over every job's ``results.json``."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        report(sorted(sweep_dir.glob("*/results.json")), sweep_dir)


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    report(sorted(root.glob("**/results.json")), root)
