"""Cost and accuracy of PPL-p% sparsity across models, data sizes and budgets, side by side in
one run: forwards (in units of one dense pass over the data, the dense pass included) of
``ppl_p_sparsity`` at its defaults (CETT bracket 1e-3, returned sparsity within 1e-4 of the
boundary's: a bracket at most 2e-4 wide in dropped fraction, its midpoint returned; one target per
pass), at the previous defaults (a bracket 1e-4 wide with its accepted end returned, two targets
per pass where the search settles: ``sparsity_tol=5e-5, candidates=2``), at the defaults with two
targets per pass (``candidates=2``) and with the CETT bracket alone (``sparsity_tol=None``, DESIGN §5's "CETT target to 1e-3"). The defaults' error is measured
against the boundary inside their bracket, bisected on all the data to 1e-6 in target.

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

from ppl_sparsity import corpus, naive, trained_lm, val_batches  # noqa: E402  (bench/ppl_sparsity.py)
from ppl_sparsity_ddp import bigram_batches  # noqa: E402  (tests/ppl_sparsity_ddp.py)
from ppl_sparsity_ddp import trained_lm as bigram_lm  # noqa: E402

from actsparse.evaluation import ppl_p_sparsity  # noqa: E402
from actsparse.report import print_table  # noqa: E402

CASES = [("relu", 16, 1.0), ("relu", 16, 0.5), ("relu", 32, 2.0), ("relu", 32, 1.0),
         ("silu", 16, 0.5), ("silu", 32, 1.0), ("silu", 16, 2.0)]


def case_row(model_name: str, tokens: int, p: float, model, batches, **options) -> dict:
    """One table row: the defaults, the previous defaults and the CETT bracket alone on one case."""
    r = ppl_p_sparsity(model, batches, p, **options)
    previous = ppl_p_sparsity(model, batches, p, sparsity_tol=5e-5, candidates=2, **options)
    pairs = ppl_p_sparsity(model, batches, p, candidates=2, **options)
    loose = ppl_p_sparsity(model, batches, p, sparsity_tol=None, **options)
    boundary = naive(model, batches, p, 1e-6, r.cett, r.cett_rejected, **options)["sparsity"]  # inside the bracket
    return {"model": model_name, "tokens": tokens, "p": p, "forwards": r.forwards, "data passes": r.passes,
            "sparsity": r.sparsity, "sparsity bracket": r.sparsity_rejected - r.sparsity_accepted,
            "error vs boundary in bracket": abs(r.sparsity - boundary),
            "forwards, previous defaults": previous.forwards, "forwards, 2 targets per pass": pairs.forwards,
            "forwards, CETT 1e-3 only": loose.forwards,
            "its sparsity bracket": loose.sparsity_rejected - loose.sparsity_accepted}


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
        rows.append(case_row(f"tiny LM {activation}", n_batches * 2048, p, model, batches))
        print(rows[-1], flush=True)
    lm = bigram_lm().double()
    for seed, n_batches in [(0, 16), (3, 40)]:
        batches = bigram_batches(n_batches=n_batches, seed=seed)
        rows.append(case_row(f"bigram LM (seed {seed})", sum(y.numel() for _, y in batches), 1.0, lm, batches,
                             calibration_dtype=torch.float64))
    print_table(rows, title="PPL-p% sparsity: forwards per evaluation (dense pass included)")
    summary = {}
    for key in ("forwards", "forwards, previous defaults", "forwards, 2 targets per pass", "forwards, CETT 1e-3 only",
                "error vs boundary in bracket"):
        values = [row[key] for row in rows]
        summary[key] = {"mean": statistics.mean(values), "median": statistics.median(values),
                        "min": min(values), "max": max(values)}
        print(f"{key}: " + ", ".join(f"{k} {v:.3g}" for k, v in summary[key].items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
