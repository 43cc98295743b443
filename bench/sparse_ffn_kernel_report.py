"""The GPU check's side-by-side table of the sparse CUDA kernel sets and issue 26's targets.

``bench/gpu_check.py`` times every kernel set forced (``dense_above=1``) at every grid point
(``kernels_us`` in each raw row); this module turns those rows into the table the issue asks for
(persistent vs three_kernel vs cuBLAS at batch 1; tensor_core vs dense at 2/4/8) and the verdict
against its targets: 7B batch 1 at 90% >= 2.5x three-``F.linear`` dense and >= 2.2x fused dense;
batches 2/4/8 at 90% >= 2.0x / 1.6x / 1.3x, and >= 0.97x at 0%.

Example:
    >>> rows = [{"shape": "7b", "batch": 1, "sparsity": 90, "pattern": "random", "table": "grid", "dense_us": 80.0,
    ...          "dense_fused_us": 70.0, "kernels_us": {"three_kernel": 40.0, "persistent": 30.0}}]
    >>> v = kernel_verdict(rows)["7b_b1_90"]
    >>> v["best"], v["speedup"], v["meets_2.5x"], v["meets_2.2x_fused"]
    ('persistent', 2.67, True, True)
"""

from __future__ import annotations

KERNEL_ORDER = ("three_kernel", "three_kernel_pdl", "persistent", "tensor_core", "cpu")
TARGET_B1_90 = 2.5
TARGET_B1_90_FUSED = 2.2
TARGETS_90 = {2: 2.0, 4: 1.6, 8: 1.3}
TARGET_0 = 0.97


def _kernels(rows: list[dict]) -> list[str]:
    seen = {k for r in rows for k in r.get("kernels_us", {})}
    return [k for k in KERNEL_ORDER if k in seen] + sorted(seen - set(KERNEL_ORDER))


def best_kernel(row: dict) -> tuple[str | None, float | None]:
    """The fastest forced kernel set of a row and its time (µs)."""
    times = row.get("kernels_us", {})
    if not times:
        return None, None
    name = min(times, key=times.get)
    return name, times[name]


def kernel_table(rows: list[dict]) -> str:
    """Markdown: one line per grid point, every kernel set's µs, the best one against dense and fused dense."""
    names = _kernels(rows)
    head = ("| shape | batch | sparsity % | pattern | dense µs | fused dense µs | " + " | ".join(f"{k} µs" for k in names)
            + " | best | vs dense | vs fused |")
    lines = [head, "|---" * 4 + "|---:" * (2 + len(names)) + "|---|---:|---:|"]
    for r in rows:
        name, us = best_kernel(r)
        if name is None:
            continue
        cells = [f"{r['kernels_us'][k]:.1f}" if k in r["kernels_us"] else "" for k in names]
        lines.append(f"| {r['shape']} | {r['batch']} | {r['sparsity']:g} | {r.get('pattern', '')} | {r['dense_us']:.1f} | "
                     f"{r['dense_fused_us']:.1f} | " + " | ".join(cells)
                     + f" | {name} | {r['dense_us'] / us:.2f}x | {r['dense_fused_us'] / us:.2f}x |")
    return "\n".join(lines)


def kernel_verdict(rows: list[dict]) -> dict:
    """Issue 26's targets on the random-mask rows, each with the kernel set that met it (or came closest)."""
    random = [r for r in rows if r.get("pattern") == "random" and r.get("kernels_us")]
    out: dict = {}

    def at(shape, batch, sparsity):
        return next((r for r in random if r["shape"] == shape and r["batch"] == batch and r["sparsity"] == sparsity),
                    None)

    for shape in ("7b", "70b"):
        r = at(shape, 1, 90)
        if r is not None:
            name, us = best_kernel(r)
            speedup, fused = r["dense_us"] / us, r["dense_fused_us"] / us
            out[f"{shape}_b1_90"] = {"best": name, "us": round(us, 1), "speedup": round(speedup, 2),
                                     "speedup_vs_fused": round(fused, 2), "meets_2.5x": speedup >= TARGET_B1_90,
                                     "meets_2.2x_fused": fused >= TARGET_B1_90_FUSED,
                                     "per_kernel_speedup": {k: round(r["dense_us"] / v, 2)
                                                            for k, v in r["kernels_us"].items()}}
    for batch, target in TARGETS_90.items():
        for sparsity, want in ((90, target), (0, TARGET_0)):
            r = at("7b", batch, sparsity)
            if r is not None:
                name, us = best_kernel(r)
                out[f"7b_b{batch}_{sparsity}"] = {"best": name, "speedup": round(r["dense_us"] / us, 2),
                                                  "target": want, "met": r["dense_us"] / us >= want,
                                                  "tensor_core_speedup": round(r["dense_us"] / r["kernels_us"]["tensor_core"], 2)
                                                  if "tensor_core" in r["kernels_us"] else None}
    return out
