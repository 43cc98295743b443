"""The Sparsing Law study in miniature (``actsparse-train -m experiment=sparsing_law ...``).

Each job trains the tiny LM with one activation (``model.activation``) and one width/depth
shape (``sparsing_law.shape``), with :class:`~actsparse.callbacks.SparsityMonitor` sampling the
activation ratio (1 − sparsity) of the training forwards every few steps; it then fits the
activation's law to ratio-vs-tokens, measures PPL-p% sparsity of the final model on validation
batches, and writes ``results.json``. :class:`SparsingLawReport` (a Hydra callback) gathers the
jobs of a multirun into ``study.md``, ``ratio_vs_tokens.png`` and ``ratio_vs_width_depth.png``;
``python -m actsparse.experiments.sparsing_law DIR`` does the same for any directory of jobs.
"""

from __future__ import annotations

import copy
import csv
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra.experimental.callback import Callback as HydraCallback  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from actsparse.evaluation import ppl_p_sparsity  # noqa: E402
from actsparse.metrics.functional.laws import ActivationLaw, fit_activation_law  # noqa: E402
from actsparse.report import plot_activation_laws  # noqa: E402
from actsparse.report import print_table  # noqa: E402
from actsparse.tasks.lm import CausalLM  # noqa: E402
from actsparse.train import train  # noqa: E402


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
    return None if law is None else {k: getattr(law, k) for k in ("kind", "c", "alpha", "b", "A0", "r2")}


def run(cfg: DictConfig) -> dict[str, Any]:
    s = cfg.sparsing_law
    if s.shape not in s.shapes:
        raise ValueError(f"Unknown sparsing_law.shape {s.shape!r}; choose from {', '.join(s.shapes)}.")
    activation = str(cfg.model.activation)
    kind = "relu" if activation in ("relu", "fatrelu") else "silu"
    run_dir = Path(cfg.paths.output_dir)
    if s.get("threads"):
        torch.set_num_threads(int(s.threads))
    c = copy.deepcopy(cfg)
    with open_dict(c):
        c.entry = "actsparse.train.train"
        for key, value in s.shapes[s.shape].items():
            c.model[key] = value
    summary = train(c)
    tokens_per_step = int(cfg.data.batch_size) * int(cfg.data.seq_len) * int(cfg.trainer.get("devices", 1) or 1)
    zero_tokens, zero_ratio = ratio_curve(run_dir, tokens_per_step)
    tokens, ratio = ratio_curve(run_dir, tokens_per_step, f"val/ppl_p{float(s.ppl_p):g}_sparsity")
    fit_tokens, fit_ratio = tokens[s.skip_first:], ratio[s.skip_first:]
    try:
        law = fit_activation_law(fit_tokens, fit_ratio, kind=kind)
    except (RuntimeError, ValueError) as err:
        print(f"[sparsing_law] law fit failed: {err}", flush=True)
        law = None

    task = CausalLM.load_from_checkpoint(summary["checkpoint"], map_location="cpu")
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    r = ppl_p_sparsity(task.model, datamodule.val_dataloader(), float(s.ppl_p), max_batches=int(s.eval_batches))
    shape = dict(s.shapes[s.shape])
    model = task.model
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
    payload = {
        "activation": activation, "kind": kind, "shape": s.shape, **shape,
        "width_depth": shape["d_model"] / shape["n_layers"], "non_embedding_params": non_embedding,
        "tokens": tokens, "ratio": ratio, "law": _law_to_dict(law),
        "zero_tokens": zero_tokens, "zero_ratio": zero_ratio,
        "final_zero_ratio": float(np.mean(zero_ratio[-max(1, len(zero_ratio) // 5):])) if zero_ratio else None,
        "final_ratio": float(np.mean(ratio[-max(1, len(ratio) // 5):])),
        "skip_first": int(s.skip_first), "ppl_p": float(s.ppl_p), "ppl_sparsity": r.sparsity, "ppl_cett": r.cett,
        "ppl_dense": r.ppl_dense, "ppl_truncated": r.ppl_truncated, "ppl_forwards": r.forwards,
        "val_loss": summary.get("val loss"),
    }
    (run_dir / "results.json").write_text(json.dumps(payload, indent=2))
    print(f"[sparsing_law] {activation} {s.shape}: final ratio {payload['final_ratio']:.4f}, "
          f"law {law}, PPL-{s.ppl_p:g}% sparsity {r.sparsity:.4f}", flush=True)
    return {"val loss": summary.get("val loss"),
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
        try:
            r["law"] = _law_to_dict(fit_activation_law(r["tokens"][skip:], r["ratio"][skip:], kind=r["kind"]))
        except (RuntimeError, ValueError):
            r["law"] = None
        r["zero_law"] = None
        if r["kind"] == "relu" and len(r.get("zero_ratio", [])) > 6:  # exact zeros: meaningful for ReLU only
            try:
                r["zero_law"] = _law_to_dict(fit_activation_law(r["zero_tokens"][skip:], r["zero_ratio"][skip:], "relu"))
            except (RuntimeError, ValueError):
                pass
    curves = {}
    for r in runs:
        law = ActivationLaw(**r["law"]) if r["law"] else None
        curves[f"{r['activation']} {r['shape']} (d{r['d_model']}×L{r['n_layers']})"] = (r["tokens"], r["ratio"], law)
    plot_activation_laws(curves, out_dir / "ratio_vs_tokens.png",
                         title="Activation ratio (1 − PPL-1% sparsity) vs training tokens")
    zero_curves = {f"{r['activation']} {r['shape']} (d{r['d_model']}×L{r['n_layers']})":
                   (r["zero_tokens"], r["zero_ratio"], ActivationLaw(**r["zero_law"]) if r["zero_law"] else None)
                   for r in runs if r["kind"] == "relu" and r.get("zero_ratio")}
    if zero_curves:
        plot_activation_laws(zero_curves, out_dir / "zero_ratio_vs_tokens.png",
                             title="ReLU: fraction of nonzero activations vs training tokens")

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for act in sorted({r["activation"] for r in runs}):
        pts = sorted((r["width_depth"], r["final_ratio"]) for r in runs if r["activation"] == act)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=act)
    ax.set_xscale("log")
    ax.set_xlabel("width / depth (d_model / n_layers)")
    ax.set_ylabel("final activation ratio (1 − PPL-1% sparsity)")
    ax.set_title("Activation ratio vs width/depth (≈ fixed parameters)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "ratio_vs_width_depth.png")
    plt.close(fig)

    rows = []
    for r in runs:
        law = r["law"] or {}
        trend = "—" if len(r["ratio"]) < 2 else ("down" if r["ratio"][-1] < r["ratio"][0] else "up")
        rows.append({"activation": r["activation"], "shape": f"d{r['d_model']}×L{r['n_layers']}",
                     "width/depth": f"{r['width_depth']:.1f}", "params (non-emb.)": r["non_embedding_params"],
                     "PPL-1% ratio first→last": f"{r['ratio'][0]:.3f}→{r['ratio'][-1]:.3f} ({trend})",
                     "zero-based ratio (end)": f"{r['final_zero_ratio']:.3f}" if r.get("final_zero_ratio") is not None else "—",
                     "fitted A0": f"{law['A0']:.3f}" if law else "fit failed",
                     "R²": f"{law['r2']:.2f}" if law else "—",
                     "A0 of zero-based fit (R²)": f"{r['zero_law']['A0']:.3f} ({r['zero_law']['r2']:.2f})"
                     if r.get("zero_law") else "—",
                     f"PPL-{r['ppl_p']:g}% sparsity": f"{r['ppl_sparsity']:.3f}",
                     "CETT": f"{r['ppl_cett']:.3f}", "val ppl": f"{r['ppl_dense']:.2f}"})
    head = list(rows[0])
    md = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    md += ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows]
    (out_dir / "study.md").write_text("\n".join(md) + "\n")
    print_table(rows, title="Sparsing Law in miniature")
    return "\n".join(md)


class SparsingLawReport(HydraCallback):
    """Hydra callback: after the multirun, :func:`report` over every job's ``results.json``."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        report(sorted(sweep_dir.glob("*/results.json")), sweep_dir)


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    report(sorted(root.glob("**/results.json")), root)
