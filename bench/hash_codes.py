"""Speed of redundancy ratio and hash-code purity on 100,000 codes of 4,096 units (issue 7).

Codes are random with planted duplicates (10% of rows copy another row), so the answer is
known: redundancy = duplicates / N. Times the functional metrics on bool and on bit-packed
codes, the torchmetrics classes fed in 10 batches, and packing itself; prints a table.

    python bench/hash_codes.py [--n 100000] [--units 4096] [--repeats 3] [--json bench/hash_codes.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from actsparse.metrics.functional.hash_codes import hash_code_purity, pack_codes, redundancy_ratio
from actsparse.metrics.hash_codes import HashCodePurity, RedundancyRatio
from actsparse.report import print_table


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--units", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    bits = rng.random((args.n, args.units)) < 0.3  # ReLU-like: ~30% of units on
    dup = args.n // 10
    bits[-dup:] = bits[rng.integers(0, args.n - dup, dup)]  # planted duplicates
    labels = torch.from_numpy(rng.integers(0, 10, args.n))
    codes = torch.from_numpy(bits)
    packed = pack_codes(torch.from_numpy(bits))
    expected = dup / args.n  # random 4096-bit rows never collide by chance

    def streamed(metric_cls, with_labels: bool):
        metric = metric_cls(packed=True)
        for chunk, y in zip(packed.chunk(10), labels.chunk(10)):
            metric.update(chunk, y) if with_labels else metric.update(chunk)
        return metric.compute()

    cases = {
        "pack bool -> uint8 (pack_codes: numpy.packbits)": lambda: pack_codes(torch.from_numpy(bits)),
        "redundancy_ratio(bool codes)": lambda: redundancy_ratio(codes),
        "redundancy_ratio(packed codes)": lambda: redundancy_ratio(packed, packed=True),
        "hash_code_purity(bool codes)": lambda: hash_code_purity(codes, labels),
        "hash_code_purity(packed codes)": lambda: hash_code_purity(packed, labels, packed=True),
        "RedundancyRatio, 10 updates + compute": lambda: streamed(RedundancyRatio, False),
        "HashCodePurity, 10 updates + compute": lambda: streamed(HashCodePurity, True),
    }
    rows, record = [], {}
    for name, fn in cases.items():
        seconds, value = timed(fn, args.repeats)
        scalar = isinstance(value, torch.Tensor) and value.dim() == 0  # packing returns the codes themselves
        shown = f"{float(value):.4f}" if scalar else "-"
        rows.append({"operation": name, "median (s)": round(seconds, 3), "value": shown})
        record[name] = {"seconds": seconds, "value": float(value) if scalar else None}
        if "redundancy" in name.lower():
            assert abs(float(value) - expected) < 1e-12, (name, float(value), expected)
    print(f"{args.n:,} codes x {args.units:,} units ({packed.shape[1]} bytes/code packed), "
          f"{dup:,} planted duplicates (expected redundancy {expected:.4f}); torch {torch.__version__}, "
          f"numpy {np.__version__}, {torch.get_num_threads()} threads, {platform.machine()}")
    print_table(rows, title="Neural hash-code metrics: median of %d runs" % args.repeats)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": record}, fh, indent=2)


if __name__ == "__main__":
    main()
