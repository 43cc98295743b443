"""Cost and accuracy of one PPL-p% sparsity evaluation, in units of one dense evaluation pass
(DESIGN §5), side by side in one run.

Trains the tiny LM (ReLU, gated FFNs) briefly on the stdlib docstring corpus (cached), then
times, on the same validation batches:
- one dense evaluation pass (the unit);
- ``ppl_p_sparsity`` with its defaults (thresholds exact on all tokens, CETT bracket 1e-3, the
  returned sparsity within 1e-4 of the boundary's: the midpoint of a bracket at most 2e-4 wide in
  dropped fraction; one target per pass);
- the previous defaults: a bracket 1e-4 wide with its accepted end returned, two targets per
  pass once the search settles (``sparsity_tol=5e-5, candidates=2``);
- the CETT bracket alone (``sparsity_tol=None``; DESIGN §5's "CETT target to 1e-3"), exact thresholds;
- the first version's calibration (1,024 sampled rows per site, CETT bracket 1e-3 only, its accepted end);
- the naive procedure (the reference code's): bisection on the CETT target to 1e-3, one
  truncated pass per step, thresholds on all tokens;
- the accuracy reference: all tokens in float64, brackets 1e-5 (CETT) and 1e-6 (sparsity);
  every row's sparsity error is against it.

    python bench/ppl_sparsity.py [--p 1] [--steps 300] [--val-batches 24] [--json bench/ppl_sparsity.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from actsparse.data.corpus import cache_dir
from actsparse.data.text import TextDataModule
from actsparse.evaluation.lm_loss import causal_lm_loss
from actsparse.evaluation.calibration import Calibration
from actsparse.evaluation.passes import dense_pass
from actsparse.evaluation.ppl_sparsity import ppl_p_sparsity
from actsparse.evaluation.truncation import truncate
from actsparse.models import TinyLM
from actsparse.plugins.sites import ffn_sites
from actsparse.report import print_table


def trained_lm(steps: int, activation: str, dm: TextDataModule, seed: int = 0) -> TinyLM:
    path = cache_dir(None) / "bench_ppl_sparsity" / f"tinylm-{activation}-{steps}-s{seed}.pt"
    torch.manual_seed(seed)
    model = TinyLM(activation=activation, max_seq_len=dm.hparams.seq_len)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    it = iter(dm.train_dataloader())
    for step in range(steps):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(dm.train_dataloader())
            x, y = next(it)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(f"  train step {step}: loss {loss.item():.3f}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def corpus() -> TextDataModule:
    """The benchmarks' data: the stdlib docstring corpus in 16 × 128-byte batches, set up."""
    dm = TextDataModule(seq_len=128, batch_size=16)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def val_batches(dm: TextDataModule, n: int) -> list:
    """The first ``n`` validation batches (the same ones every time)."""
    return [b for _, b in zip(range(n), dm.val_dataloader())]


@torch.no_grad()
def dense_pass_seconds(model, batches, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for b in batches:
            causal_lm_loss(model, b, 1)
        times.append(time.perf_counter() - t)
    return min(times)


@torch.no_grad()
def naive(model, batches, p: float, tol: float, lo: float = 0.0, hi: float = 1.0,
          calibration_dtype: torch.dtype = torch.float32) -> dict:
    """Bisection on the CETT target between ``lo`` (accepted) and ``hi`` (rejected), one data pass
    per step (the reference procedure, from [0, 1]); thresholds exact on all tokens."""
    start = time.perf_counter()
    sites = ffn_sites(model)
    gen = torch.Generator().manual_seed(0)
    dense, tokens, rows, zeros, _ = dense_pass(model, sites, batches, causal_lm_loss, None, None, gen)
    calib = Calibration(sites, rows, calibration_dtype, gen)
    dense_loss, passes = float(dense) / tokens, 1
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        eps = calib.thresholds([mid])[0]
        total = 0.0
        with truncate(model, eps, sites):
            for b in batches:
                total += float(causal_lm_loss(model, b, 1)[0])
        passes += 1
        if math.exp(total / tokens - dense_loss) <= 1 + p / 100:
            lo = mid
        else:
            hi = mid
    seconds = time.perf_counter() - start
    counts: dict = {}
    with truncate(model, calib.thresholds([lo])[0], sites, counts):  # (not timed) the sparsity at lo
        for b in batches:
            causal_lm_loss(model, b, 1)
    sparsity = float(sum(c[0].sum() for c in counts.values()) / sum(c[1].sum() for c in counts.values()))
    return {"cett": lo, "passes": passes, "seconds": seconds, "sparsity": sparsity}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p", type=float, default=1.0)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=300, help="training steps of the benchmarked LM")
    parser.add_argument("--val-batches", type=int, default=24)
    parser.add_argument("--candidates", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--machine", default="2 CPU cores", help="a note on the machine and its load, kept in the JSON")
    parser.add_argument("--reference-from", help="take the accuracy reference from this earlier JSON of the same "
                        "settings (the cached model is deterministic) instead of recomputing it (slow)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    dm = corpus()
    model = trained_lm(args.steps, "relu", dm).eval()
    batches = val_batches(dm, args.val_batches)
    unit = dense_pass_seconds(model, batches)
    r = ppl_p_sparsity(model, batches, args.p, tol=args.tol, candidates=args.candidates)
    previous = ppl_p_sparsity(model, batches, args.p, tol=args.tol, candidates=2, sparsity_tol=5e-5)
    cett_only = ppl_p_sparsity(model, batches, args.p, tol=args.tol, candidates=args.candidates, sparsity_tol=None)
    old = ppl_p_sparsity(model, batches, args.p, tol=args.tol, candidates=args.candidates,
                         calibration_tokens=1024, sparsity_tol=None)
    nv = naive(model, batches, args.p, args.tol)
    if args.reference_from:
        earlier = json.loads(Path(args.reference_from).read_text())
        ref_row = next(r for r in earlier["rows"] if r["procedure"].startswith("accuracy reference"))
        ref = type("Earlier", (), {"sparsity": earlier["reference_sparsity"], "passes": ref_row["data passes"],
                                   "forwards": ref_row["forwards"], "seconds": float("nan"), "cett": ref_row["CETT"]})
    else:
        ref = ppl_p_sparsity(model.double(), [tuple(t for t in b) for b in batches], args.p, tol=1e-5,
                             sparsity_tol=1e-6, calibration_dtype=torch.float64)
        model.float()

    def row(name, res, sparsity=None):
        sparsity = res.sparsity if sparsity is None else sparsity
        return {"procedure": name, "data passes": res.passes, "forwards": res.forwards, "seconds": res.seconds,
                "cost / dense pass": res.seconds / unit, "CETT": res.cett, "sparsity": sparsity,
                "|Δ sparsity| vs reference": abs(sparsity - ref.sparsity)}

    rows = [
        row(f"ppl_p_sparsity defaults (K={args.candidates})", r),
        row("CETT bracket 1e-3 only (sparsity_tol=None), exact thresholds", cett_only),
        row("previous defaults (bracket 1e-4 wide, accepted end, K=2)", previous, previous.sparsity_accepted),
        row("first version's calibration (1,024 rows, no sparsity bracket, accepted end, K=1)", old, old.sparsity_accepted),
        {"procedure": "naive bisection (reference code)", "data passes": nv["passes"], "forwards": nv["passes"],
         "seconds": nv["seconds"], "cost / dense pass": nv["seconds"] / unit, "CETT": nv["cett"],
         "sparsity": nv["sparsity"], "|Δ sparsity| vs reference": abs(nv["sparsity"] - ref.sparsity)},
        row("accuracy reference (float64, brackets 1e-5 / 1e-6)"
            + (" [from an earlier run]" if args.reference_from else ""), ref),
    ]
    tokens = sum(b[1].numel() for b in batches)
    print_table(rows, title=f"PPL-{args.p:g}% sparsity, tiny LM (ReLU, {args.steps} steps), {tokens} tokens, "
                            f"dense pass {unit:.3f} s")
    print(f"threshold search (no data pass): {r.calibration_seconds:.2f} s = {r.calibration_seconds / unit:.2f} dense passes")
    print(f"PPL-{args.p:g}% sparsity {r.sparsity:.4f} at CETT {r.cett:.4f} (rejected {r.cett_rejected:.4f}); "
          f"ppl {r.ppl_dense:.3f} -> {r.ppl_truncated:.3f} (ratio {r.ppl_ratio:.5f})")
    print("search history (target, ppl ratio):", [(round(t, 5), round(q, 5)) for t, q in r.history])
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "dense_pass_seconds": unit, "rows": rows,
                                               "sparsity": r.sparsity, "reference_sparsity": ref.sparsity,
                                               "history": r.history, "calibration_seconds": r.calibration_seconds,
                                               "machine": args.machine},
                                              indent=2))


if __name__ == "__main__":
    main()
