"""Cost of PPL-p% sparsity across models, data sizes and budgets: forwards (in units of one
dense pass over the data) of ``ppl_p_sparsity`` at its defaults (brackets 1e-3 in CETT and 1e-4
in dropped fraction) and with the CETT bracket alone (``sparsity_tol=None``, DESIGN §5's "CETT
target to 1e-3"), one row per case, side by side in one run.

Cases: the tiny LM (ReLU and SiLU, 200 steps, cached as in ``bench/ppl_sparsity.py``) on 16 or
32 validation batches of 2,048 tokens at p = 0.5, 1, 2; the bigram LM of the test suite on 16
and 40 small batches (its Δloss is rough: it crosses the limit more than once).

    python bench/ppl_sparsity_sweep.py [--json bench/ppl_sparsity_sweep.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ppl_sparsity import corpus, trained_lm, val_batches  # noqa: E402  (bench/ppl_sparsity.py)
from ppl_sparsity_ddp import bigram_batches  # noqa: E402  (tests/ppl_sparsity_ddp.py)
from ppl_sparsity_ddp import trained_lm as bigram_lm  # noqa: E402

from actsparse.evaluation import ppl_p_sparsity  # noqa: E402
from actsparse.report import print_table  # noqa: E402

CASES = [("relu", 16, 1.0), ("relu", 16, 0.5), ("relu", 32, 2.0), ("relu", 32, 1.0),
         ("silu", 16, 0.5), ("silu", 32, 1.0), ("silu", 16, 2.0)]


def case_row(model: str, tokens: int, p: float, r, loose) -> dict:
    """One table row: the defaults' result ``r`` and the CETT-bracket-only result ``loose``."""
    return {"model": model, "tokens": tokens, "p": p, "forwards": r.forwards, "data passes": r.passes,
            "sparsity": r.sparsity, "sparsity bracket": r.sparsity_rejected - r.sparsity,
            "forwards, CETT 1e-3 only": loose.forwards, "its sparsity bracket": loose.sparsity_rejected - loose.sparsity}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dm = corpus()
    rows = []
    for activation, n_batches, p in CASES:
        model = trained_lm(200, activation, dm).eval()
        batches = val_batches(dm, n_batches)
        rows.append(case_row(f"tiny LM {activation}", n_batches * 2048, p, ppl_p_sparsity(model, batches, p),
                        ppl_p_sparsity(model, batches, p, sparsity_tol=None)))
        print(rows[-1], flush=True)
    lm = bigram_lm().double()
    for seed, n_batches in [(0, 16), (3, 40)]:
        batches = bigram_batches(n_batches=n_batches, seed=seed)
        options = {"calibration_dtype": torch.float64}
        rows.append(case_row(f"bigram LM (seed {seed})", sum(y.numel() for _, y in batches), 1.0,
                        ppl_p_sparsity(lm, batches, 1.0, **options),
                        ppl_p_sparsity(lm, batches, 1.0, sparsity_tol=None, **options)))
    print_table(rows, title="PPL-p% sparsity: forwards per evaluation (dense pass included)")
    summary = {}
    for key in ("forwards", "forwards, CETT 1e-3 only"):
        values = [row[key] for row in rows]
        summary[key] = {"mean": statistics.mean(values), "median": statistics.median(values),
                        "min": min(values), "max": max(values)}
        print(f"{key}: " + ", ".join(f"{k} {v:.2f}" for k, v in summary[key].items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
