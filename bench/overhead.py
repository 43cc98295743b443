"""Overhead of recording activation-site statistics during training of the tiny LM (CPU).

Times full training steps (forward, backward, AdamW) of the default `actsparse-train` model
with and without `actsparse.plugins.record(...)`, interleaving the variants so that machine
noise hits all of them alike, and prints median step times and the overhead ratio.

    python bench/overhead.py [--steps 20] [--repeats 5] [--json bench/overhead.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time

import torch

from actsparse.models import TinyLM
from actsparse.plugins import record
from actsparse.report import print_table

VARIANTS = {
    "no recording": None,
    "zero_fraction + mean_abs + l1": ("zero_fraction", "mean_abs", "l1"),
    "+ neuron_counts": ("zero_fraction", "mean_abs", "l1", "neuron_counts"),
    "+ histogram (100 bins)": ("zero_fraction", "mean_abs", "l1", "histogram"),
    "codes (bit-packed, 1% of tokens)": ("codes",),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per timing")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions per variant")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = TinyLM(activation="relu", max_seq_len=args.seq)  # the default run's model, ReLU FFNs
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, 256, (args.batch, args.seq + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def step() -> None:
        logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed(what) -> float:
        ctx = record(model, what=what, subsample=0.01) if what else contextlib.nullcontext()
        with ctx as rec:
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            if rec is not None:  # read the statistics: includes any device sync
                rec.summary() if what != ("codes",) else [r.codes for r in rec.values()]
            return (time.perf_counter() - start) / args.steps

    for _ in range(3):
        step()  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, what in VARIANTS.items():
            samples[name].append(timed(what))

    base = statistics.median(samples["no recording"])
    rows = []
    for name, times in samples.items():
        median = statistics.median(times)
        rows.append({"variant": name, "median step (ms)": median * 1e3,
                     "overhead": f"{(median / base - 1) * 100:+.1f}%"})
    print(f"tiny LM: {model.num_parameters():,} parameters, batch {args.batch} x {args.seq} tokens, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print_table(rows, title="Training-step overhead of recording site statistics (4 FFN sites)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "median_step_s": {k: statistics.median(v) for k, v in samples.items()},
                       "samples_s": samples}, fh, indent=2)


if __name__ == "__main__":
    main()
