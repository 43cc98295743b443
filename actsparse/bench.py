"""Kernel benchmarks: ``python -m actsparse.bench sparse-ffn`` (``actsparse-bench sparse-ffn``).

Times one gated FFN layer (LLaMA shapes) several ways, in the same run and interleaved:
dense PyTorch as users run it (``F.linear`` x3: MKL/oneDNN or cuBLAS), dense with gate and up
fused into one GEMM (as vLLM and gpt-fast do), a naive PyTorch gather of the active rows, and
actsparse's compiled kernels; reports medians, speedups, the useful bytes per second (the
bytes a perfect sparse kernel must read: all of ``w_gate`` plus the active rows of ``w_up`` and
``w_down_t``) and that rate as a percentage of the copy bandwidth measured in the same run.

Activation patterns are imposed exactly: token b is the scaled basis vector ``e_b`` and column b
of ``w_gate`` holds ``+1`` for the neurons the pattern activates and ``-1`` elsewhere, so the gate
pre-activation is ``±1`` and the threshold 0 selects the pattern; every other weight is random,
so all kernels read real bytes. ``random`` draws each (token, neuron) independently at the given
sparsity (the worst case for batch unions); ``recorded`` replays masks recorded from a trained
model (``--patterns FILE``: a saved bool tensor ``[tokens, neurons]``, or the packed file
``bench/gpu/record_masks.py`` writes from a ReLU TinyLM trained with an L1 penalty), tiled to the
layer width, so batch unions are realistic. Every weight set draws its own masks.

GPU timings exclude host submission latency: each capturable variant (dense cuBLAS, actsparse as
dispatched, and its kernels forced at every batch size) is captured as ``graph_calls`` layer calls
in ONE CUDA graph, and one event pair brackets each replay, so a call's time is the elapsed time
divided by the number of calls (cross-checked against eager dense, ``dense_eager_ms``). At least
:data:`MIN_WEIGHT_SETS` weight sets, each with its own masks, are rotated call by call inside the
graph, and enough of them that together they exceed L2 twice over, so no set is still cached when
it comes round again (the H200 runs of issue 12 replayed one layer's weights and masks).
The dense baseline is timed the same way in the same run. The naive gather syncs with the host
(``nonzero``) and cannot be captured; it is timed eagerly with events.

Example:
    >>> rows = run_sparse_ffn(shapes=["tiny"], sparsities=[90], batches=[1], device="cpu", repeats=3)
    >>> sorted(rows[0])[:4], rows[0]["max_rel_err"] < 1e-5
    (['actsparse_ms', 'batch', 'copy_gbs', 'd'], True)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

SHAPES = {  # name: (d_model, d_ff)
    "tiny": (128, 344),
    "7b": (4096, 11008),
    "13b": (5120, 13824),
    "70b": (8192, 28672),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MIN_WEIGHT_SETS = 4


# -- inputs -------------------------------------------------------------------------------------

def make_masks(pattern: str, batch: int, f: int, sparsity: float, gen: torch.Generator,
               recorded: torch.Tensor | None = None) -> torch.Tensor:
    """[batch, f] bool: which neurons each token activates."""
    if pattern == "random":
        return torch.rand(batch, f, generator=gen) >= sparsity / 100.0
    if recorded is None:
        raise ValueError("pattern 'recorded' needs --patterns FILE (a saved bool tensor [tokens, neurons], or "
                         "bench/gpu/record_masks.py's packed file).")
    rows = torch.randint(0, recorded.shape[0], (batch,), generator=gen)
    reps = math.ceil(f / recorded.shape[1])
    return recorded[rows].repeat(1, reps)[:, :f].bool()


def load_patterns(path) -> torch.Tensor:
    """Recorded masks ``[tokens, neurons]`` (bool) from a saved bool tensor or the packed dict
    ``{"packed": uint8 [tokens, ceil(neurons / 8)], "shape": [tokens, neurons], ...}``."""
    obj = torch.load(path, weights_only=True)
    if isinstance(obj, dict):
        n, f = obj["shape"]
        bits = (obj["packed"].unsqueeze(-1) >> torch.arange(7, -1, -1, dtype=torch.uint8)) & 1  # MSB first
        return bits.reshape(n, -1)[:, :f].bool()
    return obj.bool()


def make_layer(d: int, f: int, masks: torch.Tensor, dtype: torch.dtype, device: str, gen: torch.Generator):
    batch = masks.shape[0]
    if batch > d:
        raise ValueError(f"batch {batch} > d_model {d}: the imposed-pattern construction needs batch <= d.")
    scale = 1.0 / math.sqrt(d)
    w_gate = torch.randn(f, d, generator=gen) * scale
    w_gate[:, :batch] = masks.t().float() * 2 - 1  # z[b, j] = ±1 exactly
    w_up = torch.randn(f, d, generator=gen) * scale
    w_down = torch.randn(d, f, generator=gen) / math.sqrt(f)
    to = lambda t: t.to(dtype).to(device)  # noqa: E731
    return {"w_gate": to(w_gate), "w_up": to(w_up), "w_down": to(w_down), "w_down_t": to(w_down.t().contiguous()),
            "w_gate_up": to(torch.cat([w_gate, w_up]))}


# -- the three variants ----------------------------------------------------------------------------------

def dense_ffn(x, w):
    return F.linear(F.relu(F.linear(x, w["w_gate"])) * F.linear(x, w["w_up"]), w["w_down"])


def dense_fused_ffn(x, w):
    """Dense with gate and up as one GEMM (``[2f, d]``), the way vLLM and gpt-fast serve LLaMA."""
    gate, up = F.linear(x, w["w_gate_up"]).chunk(2, dim=-1)
    return F.linear(F.relu(gate) * up, w["w_down"])


def naive_gather_ffn(x, w):
    z = F.linear(x, w["w_gate"])
    idx = (z >= 0).any(0).nonzero().squeeze(1)
    h = F.relu(z.index_select(1, idx)) * F.linear(x, w["w_up"].index_select(0, idx))
    return h @ w["w_down_t"].index_select(0, idx)


def actsparse_ffn(x, w):
    from actsparse.plugins.sparse_ffn import sparse_gated_ffn

    return sparse_gated_ffn(x, w["w_gate"], w["w_up"], w["w_down_t"], 0.0, backend="ext")


def actsparse_kernel_ffn(x, w):
    """The sparse kernels at any batch size (``dense_above=1``): on CUDA the default sends 2+ rows
    to cuBLAS, so this column shows what the kernels themselves would do there."""
    from actsparse.plugins.sparse_ffn import sparse_gated_ffn

    return sparse_gated_ffn(x, w["w_gate"], w["w_up"], w["w_down_t"], 0.0, dense_above=1.0, backend="ext")


VARIANTS: dict[str, Callable] = {"dense": dense_ffn, "dense_fused": dense_fused_ffn, "naive": naive_gather_ffn,
                                 "actsparse": actsparse_ffn}
def actsparse_pdl_ffn(x, w):
    """The three kernels with programmatic dependent launch (sm_90+; unmeasured when written)."""
    from actsparse.plugins.sparse_ffn import sparse_gated_ffn

    return sparse_gated_ffn(x, w["w_gate"], w["w_up"], w["w_down_t"], 0.0, dense_above=1.0, kernel="three_kernel_pdl",
                            backend="ext")


def _pdl_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


def actsparse_persistent_ffn(x, w):
    """One persistent cooperative kernel (issue 26 item 1; unmeasured when written)."""
    from actsparse.plugins.sparse_ffn import sparse_gated_ffn

    return sparse_gated_ffn(x, w["w_gate"], w["w_up"], w["w_down_t"], 0.0, dense_above=1.0, kernel="persistent",
                            backend="ext")


def actsparse_tensor_core_ffn(x, w):
    """bf16/fp16 mma.sync over the union (issue 26 item 2; unmeasured when written)."""
    from actsparse.plugins.sparse_ffn import sparse_gated_ffn

    return sparse_gated_ffn(x, w["w_gate"], w["w_up"], w["w_down_t"], 0.0, dense_above=1.0, kernel="tensor_core",
                            backend="ext")


CUDA_VARIANTS = {**VARIANTS, "kernel": actsparse_kernel_ffn, "kernel_pdl": actsparse_pdl_ffn,
                 "kernel_persistent": actsparse_persistent_ffn, "kernel_tc": actsparse_tensor_core_ffn}
# The sparse CUDA kernel sets timed side by side, forced (dense_above=1): the dispatch table's
# columns, by the names actsparse.plugins.sparse_ffn_dispatch.KERNELS knows.
CUDA_KERNELS = {"three_kernel": "kernel", "three_kernel_pdl": "kernel_pdl", "persistent": "kernel_persistent",
                "tensor_core": "kernel_tc"}
CAPTURED = ("dense", "dense_fused", "actsparse", "kernel", "kernel_pdl", "kernel_persistent", "kernel_tc")


# -- timing ---------------------------------------------------------------------------------------------------

def copy_bandwidth(device: str, nbytes: int = 256 << 20, repeats: int = 9) -> float:
    """Copy bandwidth in bytes/s, counting read + write (the STREAM convention); on CUDA timed
    with the same graph method as the kernels."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    if device == "cuda":
        fn, calls = _graph(lambda: dst.copy_(src), 10)
        per_call = statistics.median(time_interleaved({"copy": fn}, device, repeats)["copy"]) / calls
        return 2 * nbytes / per_call
    times = time_interleaved({"copy": lambda: dst.copy_(src)}, device, repeats)["copy"]
    return 2 * nbytes / statistics.median(times)


def time_interleaved(fns: dict[str, Callable[[], object]], device: str, repeats: int) -> dict[str, list[float]]:
    """Seconds per call, variants interleaved each repetition so machine load hits them alike.
    On CUDA one event pair brackets each call (a graph replay: many kernel calls)."""
    for fn in fns.values():
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    out = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                out[k].append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                out[k].append(time.perf_counter() - t0)
    return out


def _graph(fn: Callable[[], object], iters: int) -> tuple[Callable[[], None], int]:
    """Capture ``iters`` calls of fn in one CUDA graph; return (replay, iters)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()  # warm-up outside capture (allocator, cuBLAS workspaces, lazy init)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            fn()
    return graph.replay, iters


def weight_sets_for(set_bytes: int, device: str) -> int:
    """Copies of a layer to rotate so that together they exceed the last-level cache 2x over
    (the GPU's L2; 256 MB as a safe bound for CPU caches)."""
    if device == "cuda":
        cache = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    else:
        cache = 128 << 20
    return max(MIN_WEIGHT_SETS, min(16, math.ceil(2 * cache / set_bytes)))


def bench_config(d, f, batch, sparsity, pattern, dtype, device, repeats, weight_sets, gen, recorded=None,
                 graph_calls: int = 100) -> dict:
    masks = [make_masks(pattern, batch, f, sparsity, gen, recorded) for _ in range(weight_sets)]
    union = sum(int(m.any(0).sum()) for m in masks) / weight_sets  # mean over the sets
    token_sparsity = 100.0 * float(sum((~m).float().mean() for m in masks) / weight_sets)
    x = torch.zeros(batch, d)
    x[torch.arange(batch), torch.arange(batch)] = 1.0
    x = x.to(dtype).to(device)
    layers = [make_layer(d, f, m, dtype, device, gen) for m in masks]

    ref = dense_ffn(x.double(), {k: v.double() for k, v in layers[0].items()})
    got = actsparse_ffn(x, layers[0])
    rel = float((got.double() - ref).norm() / ref.norm().clamp_min(1e-30))

    def over_sets(variant):
        return lambda: [variant(x, w) for w in layers]

    calls = {k: 1 for k in VARIANTS}
    if device == "cuda":  # graphs for the capturable variants, ~graph_calls layer calls per replay
        variants = {k: v for k, v in CUDA_VARIANTS.items() if k != "kernel_pdl" or _pdl_supported()}
        fns = {k: over_sets(v) for k, v in variants.items()}
        for k in CAPTURED:
            if k in fns:
                fns[k], calls[k] = _graph(fns[k], max(1, graph_calls // weight_sets))
        # Eager dense (launch latency included) beside its graph replay: a cross-check of the
        # per-call arithmetic (the replay must be a bit faster, never several times off).
        fns["dense_eager"] = over_sets(dense_ffn)
        rel_kernel = max(float((fn(x, layers[0]).double() - ref).norm() / ref.norm().clamp_min(1e-30))
                         for k, fn in variants.items() if k.startswith("kernel"))
    else:
        fns = {k: over_sets(v) for k, v in VARIANTS.items()}
    times = time_interleaved(fns, device, repeats)
    med = {k: statistics.median(v) / weight_sets / calls.get(k, 1) for k, v in times.items()}
    elt = torch.finfo(dtype).bits // 8
    useful = (f * d + 2 * union * d) * elt
    extra = {}
    if device == "cuda":
        extra = {"dense_eager_ms": med["dense_eager"] * 1e3, "kernel_ms": med["kernel"] * 1e3,
                 "kernels_us": {name: med[col] * 1e6 for name, col in CUDA_KERNELS.items() if col in med},
                 "speedup_kernel_vs_dense": med["dense"] / med["kernel"], "max_rel_err_kernel": rel_kernel,
                 "graph_calls": calls["actsparse"] * weight_sets}
    return {**extra,
        "d": d, "f": f, "batch": batch, "sparsity": sparsity, "pattern": pattern, "dtype": str(dtype).split(".")[-1],
        "device": device, "union_active": union / f, "token_sparsity": token_sparsity, "weight_sets": weight_sets,
        "dense_ms": med["dense"] * 1e3, "dense_fused_ms": med["dense_fused"] * 1e3,
        "speedup_vs_dense_fused": med["dense_fused"] / med["actsparse"], "naive_ms": med["naive"] * 1e3, "actsparse_ms": med["actsparse"] * 1e3,
        "speedup_vs_dense": med["dense"] / med["actsparse"], "speedup_vs_naive": med["naive"] / med["actsparse"],
        "useful_gbs": useful / med["actsparse"] / 1e9, "dense_gbs": 3 * f * d * elt / med["dense"] / 1e9,
        "max_rel_err": rel,
    }


def run_sparse_ffn(shapes=("7b",), sparsities=(0, 50, 80, 90, 95), batches=(1, 4, 8, 32), device="cpu",
                   dtype: str | None = None, pattern="random", patterns_file=None, repeats=15, weight_sets=None,
                   seed=0, log=None, graph_calls=100, copy_bytes=256 << 20) -> list[dict]:
    """Run the benchmark grid; returns one dict per configuration (see the module docstring)."""
    from actsparse import ext

    if not ext.supports(device):
        raise SystemExit(f"actsparse-bench: no compiled kernels for {device}: {ext.load().reason}")
    dt = DTYPES[dtype or ("bfloat16" if device == "cuda" else "float32")]
    recorded = load_patterns(patterns_file) if pattern == "recorded" else None
    gen = torch.Generator().manual_seed(seed)
    copy_gbs = copy_bandwidth(device, copy_bytes) / 1e9
    rows = []
    for shape in shapes:
        d, f = SHAPES[shape]
        set_bytes = 4 * d * f * (torch.finfo(dt).bits // 8)
        sets = weight_sets or weight_sets_for(set_bytes, device)
        for batch in batches:
            for sparsity in (sparsities if pattern == "random" else [None]):
                row = bench_config(d, f, batch, sparsity if sparsity is not None else -1, pattern, dt, device,
                                   repeats, sets, gen, recorded, graph_calls)
                row.update(shape=shape, copy_gbs=copy_gbs, pct_of_copy=100 * row["useful_gbs"] / copy_gbs)
                rows.append(row)
                if log:
                    log(format_row(row))
    return rows


def format_header(device: str = "cpu") -> str:
    if device == "cuda":  # µs: a 7B layer is tens of microseconds there
        return ("| shape | batch | sparsity % | union active % | dense µs | fused dense µs | eager dense µs | "
                "naive gather µs | actsparse µs | vs dense | vs fused | kernels forced µs | forced vs dense | "
                "useful GB/s | % of copy BW | rel err |\n" + "|---" * 4 + "|---:" * 12 + "|")
    return ("| shape | batch | sparsity % | union active % | dense ms | fused dense ms | naive gather ms | actsparse ms | "
            "vs dense | vs fused | vs naive | useful GB/s | % of copy BW | rel err |\n" + "|---" * 4 + "|---:" * 10 + "|")


def format_row(r: dict) -> str:
    sp = f"rec {r['token_sparsity']:.0f}" if r["sparsity"] < 0 else f"{r['sparsity']:g}"
    if "dense_eager_ms" in r:  # CUDA: µs
        return (f"| {r['shape']} | {r['batch']} | {sp} | {100 * r['union_active']:.1f} | {1e3 * r['dense_ms']:.1f} | "
                f"{1e3 * r['dense_fused_ms']:.1f} | {1e3 * r['dense_eager_ms']:.1f} | {1e3 * r['naive_ms']:.1f} | "
                f"{1e3 * r['actsparse_ms']:.1f} | {r['speedup_vs_dense']:.2f}x | {r['speedup_vs_dense_fused']:.2f}x | "
                f"{1e3 * r['kernel_ms']:.1f} | {r['speedup_kernel_vs_dense']:.2f}x | "
                f"{r['useful_gbs']:.0f} | {r['pct_of_copy']:.0f}% | {max(r['max_rel_err'], r['max_rel_err_kernel']):.1e} |")
    return (f"| {r['shape']} | {r['batch']} | {sp} | {100 * r['union_active']:.1f} | {r['dense_ms']:.3f} | "
            f"{r['dense_fused_ms']:.3f} | {r['naive_ms']:.3f} | {r['actsparse_ms']:.3f} | {r['speedup_vs_dense']:.2f}x | "
            f"{r['speedup_vs_dense_fused']:.2f}x | {r['speedup_vs_naive']:.2f}x | {r['useful_gbs']:.1f} | "
            f"{r['pct_of_copy']:.0f}% | {r['max_rel_err']:.1e} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="actsparse-bench", description="actsparse kernel benchmarks")
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("sparse-ffn", help="sparse gated FFN vs dense PyTorch and a naive gather")
    p.add_argument("--shape", nargs="+", default=["7b"], choices=list(SHAPES))
    p.add_argument("--sparsity", nargs="+", type=float, default=[0, 50, 80, 90, 95], help="percent of zeros")
    p.add_argument("--batch", nargs="+", type=int, default=[1, 4, 8, 32])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: float32 (cpu), bfloat16 (cuda)")
    p.add_argument("--pattern", default="random", choices=["random", "recorded"])
    p.add_argument("--patterns", default=None, help="saved bool tensor [tokens, neurons] for --pattern recorded")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--weight-sets", type=int, default=None, help="weight copies rotated (default: 2x the LLC/L2)")
    p.add_argument("--graph-calls", type=int, default=100, help="layer calls captured per CUDA graph (cuda)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write rows and machine info here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else f" ({torch.get_num_threads()} threads, "
             f"{platform.processor() or platform.machine()})"), flush=True)
    print(format_header(args.device), flush=True)
    rows = run_sparse_ffn(args.shape, args.sparsity, args.batch, args.device, args.dtype, args.pattern,
                          args.patterns, args.repeats, args.weight_sets, args.seed,
                          log=lambda s: print(s, flush=True), graph_calls=args.graph_calls)
    print(f"# copy bandwidth (read + write) measured in this run: {rows[0]['copy_gbs']:.1f} GB/s", flush=True)
    if args.json:
        meta = {"argv": sys.argv, "torch": torch.__version__, "device": args.device,
                "threads": torch.get_num_threads(), "platform": platform.platform(),
                "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
