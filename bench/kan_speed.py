"""Forward+backward time per layer, side by side in one run: nn.Linear, every single-space KAN
layer, S-KAN before and after pruning, and pykan's ``KANLayer`` at the same width (issue 13).

    python bench/kan_speed.py                       # width 64, batch 256, 1 thread
    python bench/kan_speed.py --width 128 --batch 1024 --device cuda --json bench/kan_speed_gpu.json

Every variant runs ``--iters`` forward+backward passes per repeat; repeats are interleaved over
the variants (so drifting machine load hits all alike); the fastest repeat per pass is reported
(the median too, in the table and the JSON).
Targets: a single-space layer <= 6x an nn.Linear with the same parameter count; S-KAN after
pruning <= the single-space layer of its width; faster than pykan at equal width.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from actsparse.plugins.kan import DEFAULT_SPACES, KANLinear, SKANLinear


def _pykan_layer(width: int, grid: int, k: int):
    try:
        from kan.KANLayer import KANLayer
    except ImportError:
        return None

    class PyKANLayer(nn.Module):  # pykan's layer returns (y, preacts, postacts, postspline)
        def __init__(self) -> None:
            super().__init__()
            self.layer = KANLayer(in_dim=width, out_dim=width, num=grid, k=k)

        def forward(self, x):
            return self.layer(x)[0]

    return PyKANLayer()


def build(width: int, seed: int = 0) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    single = {f"KAN {s}": KANLinear(width, width, space=s) for s in DEFAULT_SPACES}
    per_edge = single["KAN bspline"].num_parameters() // (width * width)  # 1 + 1 + K (+ bias/width)
    layers: dict[str, nn.Module] = {
        "nn.Linear (same width)": nn.Linear(width, width),
        "nn.Linear (same params)": nn.Linear(width, width * per_edge),
        **single,
        "S-KAN (7 spaces)": SKANLinear(width, width),
    }
    mixed = SKANLinear(width, width)
    with torch.no_grad():  # every node keeps some space: all seven stay in the pruned layer
        mixed.selection_logits.copy_(torch.randn(width, len(DEFAULT_SPACES)))
    layers["S-KAN pruned (mixed spaces)"] = mixed.prune_()
    by_input = SKANLinear(width, width, select="inputs")
    with torch.no_grad():  # each input keeps some space (select="inputs")
        by_input.selection_logits.copy_(torch.randn(width, len(DEFAULT_SPACES)))
    layers["S-KAN pruned, select=inputs (mixed)"] = by_input.prune_()
    uniform = SKANLinear(width, width)
    with torch.no_grad():
        uniform.selection_logits.zero_()
        uniform.selection_logits[:, 0] = 1.0
    layers["S-KAN pruned (one space)"] = uniform.prune_()
    pykan = _pykan_layer(width, grid=5, k=3)
    if pykan is not None:
        layers["pykan KANLayer (B-spline)"] = pykan
    return layers


def time_layers(layers: dict[str, nn.Module], batch: int, width: int, iters: int, repeats: int,
                device: torch.device) -> dict[str, float]:
    x = torch.randn(batch, width, device=device)
    for m in layers.values():
        m.to(device)

    def run(m: nn.Module) -> None:
        out = m(x)
        out.sum().backward()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    samples: dict[str, list[float]] = {k: [] for k in layers}
    for m in layers.values():  # warm-up
        for _ in range(2):
            run(m)
    for _ in range(repeats):
        for name, m in layers.items():
            sync()
            t = time.perf_counter()
            for _ in range(iters):
                run(m)
            sync()
            samples[name].append((time.perf_counter() - t) / iters)
    # the fastest repeat: the one least disturbed by other work on a shared machine
    return {k: min(v) for k, v in samples.items()}, {k: statistics.median(v) for k, v in samples.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default="bench/kan_speed.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    layers = build(args.width)
    times, medians = time_layers(layers, args.batch, args.width, args.iters, args.repeats, device)
    params = {k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, m in layers.items()}
    lin = times["nn.Linear (same params)"]
    spline = times["KAN bspline"]
    rows = [{"layer": k, "params": params[k], "fwd+bwd (ms)": round(1e3 * t, 3), "median (ms)": round(1e3 * medians[k], 3),
             "x nn.Linear (same params)": round(t / lin, 2), "x KAN bspline": round(t / spline, 2)}
            for k, t in times.items()]
    header = list(rows[0])
    print(f"width {args.width}, batch {args.batch}, {args.threads} thread(s), {device}; best of {args.repeats} x {args.iters}")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(str(r[h]) for h in header))
    single = [k for k in times if k.startswith("KAN ")]
    checks = {
        "worst single-space / nn.Linear (same params)": round(max(times[k] for k in single) / lin, 2),
        "S-KAN pruned (mixed) / KAN bspline": round(times["S-KAN pruned (mixed spaces)"] / spline, 2),
        "S-KAN pruned (mixed) / slowest single-space": round(times["S-KAN pruned (mixed spaces)"] / max(times[k] for k in single), 2),
        "S-KAN pruned (one space) / KAN bspline": round(times["S-KAN pruned (one space)"] / spline, 2),
        "S-KAN pruned select=inputs (mixed) / KAN bspline": round(times["S-KAN pruned, select=inputs (mixed)"] / spline, 2),
        "S-KAN pruned select=inputs (mixed) / mean single-space": round(
            times["S-KAN pruned, select=inputs (mixed)"] / statistics.mean(times[k] for k in single), 2),
    }
    if "pykan KANLayer (B-spline)" in times:
        checks["pykan / KAN bspline (same width)"] = round(times["pykan KANLayer (B-spline)"] / spline, 2)
    for k, v in checks.items():
        print(f"{k}: {v}")
    result = {"args": vars(args), "rows": rows, "checks": checks,
              "meta": {"torch": torch.__version__, "machine": platform.machine(), "device": str(device),
                       "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None}}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
