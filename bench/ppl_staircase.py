"""Δloss against the CETT target near the PPL-1% crossing, at fine resolution: the evidence for
why a certified 1e-4 sparsity bracket needs bisection-like steps (bench/RESULTS.md).

Evaluates the tiny LM of ``bench/ppl_sparsity.py`` (cached) on a grid of CETT targets around the
crossing that ``ppl_p_sparsity`` finds (exact thresholds, all tokens; 8 targets per pass), prints
the table and draws ``bench/ppl_staircase.png`` (Δloss and dropped fraction against the target).

    python bench/ppl_staircase.py [--val-batches 32] [--p 1] [--points 41] [--half-width 2e-3]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ppl_sparsity import corpus, trained_lm, val_batches  # noqa: E402  (bench/ppl_sparsity.py)

from actsparse.evaluation.passes import prepare_model, truncated_pass  # noqa: E402
from actsparse.evaluation.ppl_sparsity import ppl_p_sparsity  # noqa: E402
from actsparse.report import print_table  # noqa: E402


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--val-batches", type=int, default=32)
    parser.add_argument("--p", type=float, default=1.0)
    parser.add_argument("--points", type=int, default=41)
    parser.add_argument("--half-width", type=float, default=2e-3)
    parser.add_argument("--out", default=str(Path(__file__).with_name("ppl_staircase.png")))
    args = parser.parse_args()
    torch.set_num_threads(1)
    dm = corpus()
    model = trained_lm(200, "relu", dm).eval()
    batches = val_batches(dm, args.val_batches)
    found = ppl_p_sparsity(model, batches, args.p)
    centre = 0.5 * (found.cett + found.cett_rejected)
    grid = [centre + args.half_width * (2 * i / (args.points - 1) - 1) for i in range(args.points)]
    prep = prepare_model(model, batches)
    rows = []
    for start in range(0, len(grid), 8):
        targets = grid[start:start + 8]
        loss, counts = truncated_pass(prep, prep.calib.thresholds(targets))
        for i, t in enumerate(targets):
            dropped = sum(float(c[0, i]) for c in counts.values())
            entries = sum(float(c[1, i]) for c in counts.values())
            rows.append({"target": t, "Δloss (nats)": float(loss[i]) / prep.total_tokens - prep.dense_loss,
                         "dropped fraction": dropped / entries})
    limit = math.log1p(args.p / 100)
    for a, b in zip(rows, rows[1:]):
        b["slope"] = (b["Δloss (nats)"] - a["Δloss (nats)"]) / (b["target"] - a["target"])
    print_table(rows, title=f"Δloss near the PPL-{args.p:g}% crossing (limit {limit:.6f} nats), "
                            f"{sum(b[1].numel() for b in batches)} tokens")
    slopes = [r["slope"] for r in rows[1:]]
    print(f"local slope between neighbouring targets: min {min(slopes):.3g}, max {max(slopes):.3g} nats per unit "
          f"target; crossings of the limit on the grid: "
          f"{sum((a['Δloss (nats)'] - limit) * (b['Δloss (nats)'] - limit) < 0 for a, b in zip(rows, rows[1:]))}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["target"] for r in rows], [r["Δloss (nats)"] for r in rows], "o-", ms=3, label="Δloss")
    ax.axhline(limit, color="k", lw=0.8, ls="--", label=f"limit log(1 + {args.p:g}%)")
    ax.axvspan(found.cett, found.cett_rejected, color="C1", alpha=0.3, label="bracket returned")
    ax.set_xlabel("CETT target")
    ax.set_ylabel("Δloss (nats per token)")
    ax2 = ax.twinx()
    ax2.plot([r["target"] for r in rows], [r["dropped fraction"] for r in rows], color="C2", lw=0.8)
    ax2.set_ylabel("dropped fraction", color="C2")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("PPL-p% near the crossing: a staircase at the 1e-4 scale")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
