"""CPU batch dispatch (issue 12): batches 16-32 against dense, before and after the fix, interleaved.

    python bench/sparse_ffn_batch_dispatch.py [--shape 7b] [--batch 8 12 16 24 32] [--sparsity 90] [--repeats 7]

Three variants on the same LLaMA-2-7B FFN layer (fp32) and inputs, interleaved each repetition:
``dense`` (F.linear x3, MKL), ``mask_pass`` (the op with ``dense_above=0.5``: the gate with MKL,
then a mask pass over the gate output, the union compaction, then the dense tail; the old default
for every batch > 8) and ``default`` (the op's default dispatch: straight to dense from 16 rows).
Prints medians and ratios to dense.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def main(argv=None) -> int:
    from actsparse.bench import SHAPES, dense_ffn, make_layer, make_masks
    from actsparse.plugins.sparse_ffn import default_dense_above, sparse_gated_ffn

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="7b", choices=list(SHAPES))
    p.add_argument("--batch", nargs="+", type=int, default=[8, 12, 16, 24, 32])
    p.add_argument("--sparsity", type=float, default=90.0)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    d, f = SHAPES[args.shape]
    gen = torch.Generator().manual_seed(0)
    print(f"# {args.shape} FFN (d {d}, f {f}), fp32, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"random patterns at {args.sparsity:g}% sparsity, medians of {args.repeats} interleaved repeats")
    print("| batch | union active % | default dense_above | dense ms | mask pass (old) ms | default ms | "
          "old vs dense | default vs dense |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for batch in args.batch:
        masks = make_masks("random", batch, f, args.sparsity, gen)
        w = make_layer(d, f, masks, torch.float32, "cpu", gen)
        x = torch.zeros(batch, d)
        x[torch.arange(batch), torch.arange(batch)] = 1.0
        fns = {
            "dense": lambda: dense_ffn(x, w),
            "mask_pass": lambda: sparse_gated_ffn(x, w["w_gate"], w["w_up"], w["w_down_t"], dense_above=0.5,
                                                  backend="ext"),
            "default": lambda: sparse_gated_ffn(x, w["w_gate"], w["w_up"], w["w_down_t"], backend="ext"),
        }
        ref = fns["dense"]()
        for k, fn in fns.items():
            assert torch.allclose(fn(), ref, rtol=1e-4, atol=1e-5), k
        times = {k: [] for k in fns}
        with torch.inference_mode():
            for _ in range(args.repeats):
                for k, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"| {batch} | {100 * masks.any(0).float().mean():.1f} | {default_dense_above('cpu', batch):g} | "
              f"{med['dense']:.2f} | {med['mask_pass']:.2f} | {med['default']:.2f} | "
              f"{med['dense'] / med['mask_pass']:.2f}x | {med['dense'] / med['default']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
