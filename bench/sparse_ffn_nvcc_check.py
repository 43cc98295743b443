"""Compile-check the CUDA kernels (``csrc/*.cu``) with nvcc for sm_90, no GPU needed.

Runs nvcc on each ``.cu`` file with the include paths and flags ``actsparse/ext.py`` would use,
plus ``-Xptxas -v``, and prints a table of registers, spill bytes and shared memory per kernel
instantiation (a register spill in a streaming kernel costs bandwidth: the table is how one
notices). Nothing built here runs.

Run it with a CUDA build of torch (the CPU venv has no CUDA headers), e.g.::

    python3 -m venv /work/venv-cuda && /work/venv-cuda/bin/pip install torch ninja
    /work/venv-cuda/bin/python bench/sparse_ffn_nvcc_check.py --arch 90 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"
# The same nvcc flags as actsparse/ext.py's CUDA_FLAGS (kept in sync by tests/test_gpu_check.py).
CUDA_FLAGS = ["-O3", "--use_fast_math", "-lineinfo"]
# The CUDA translation units (actsparse/ext.py's CUDA_SOURCES, kept in sync by tests/test_gpu_check.py).
CUDA_SOURCES = ["sparse_ffn_cuda.cu", "sparse_ffn_persistent.cu", "sparse_ffn_tensor_core.cu"]


def demangle(names: list[str]) -> list[str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return names
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return out if len(out) == len(names) else names


def parse_ptxas(log: str) -> list[dict]:
    """One row per kernel from ``ptxas -v`` output: registers, spill stores/loads, shared memory."""
    rows, current = [], None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+a?)'", line)
        if m:
            current = {"kernel": m.group(1), "arch": m.group(2), "registers": None, "spill_stores": 0,
                       "spill_loads": 0, "smem": 0}
            rows.append(current)
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["spill_stores"], current["spill_loads"] = int(m.group(1)), int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            current["smem"] = int(s.group(1)) if s else 0
    for row, pretty in zip(rows, demangle([r["kernel"] for r in rows])):
        row["kernel"] = pretty
    return rows


def compile_check(arch: str = "90", nvcc: str | None = None, sources: list[str] | None = None) -> dict:
    import torch
    from torch.utils import cpp_extension

    nvcc = nvcc or shutil.which("nvcc") or str(Path(cpp_extension.CUDA_HOME or "/usr/local/cuda") / "bin" / "nvcc")
    includes = [str(CSRC), *cpp_extension.include_paths(device_type="cuda")]
    cuda_home = Path(os.path.realpath(nvcc)).parents[1]
    includes.append(str(cuda_home / "include"))
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    ok, seconds, kernels, errors = True, 0.0, [], []
    for source in sources or CUDA_SOURCES:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [nvcc, "-c", str(CSRC / source), "-o", str(Path(tmp) / "k.o"),
                   *[f"-I{i}" for i in includes], "-std=c++20", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
                   "-DTORCH_EXTENSION_NAME=actsparse_C", "-DTORCH_API_INCLUDE_EXTENSION_H",
                   "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                   "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
                   "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
                   f"-gencode=arch=compute_{arch},code=sm_{arch}", *CUDA_FLAGS, "-Xptxas", "-v"]
            t0 = time.time()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            seconds += time.time() - t0
        log = proc.stdout + proc.stderr
        ok = ok and proc.returncode == 0
        kernels += [{**k, "source": source} for k in parse_ptxas(log)]
        errors += [f"{source}: {l}" for l in log.splitlines() if "error" in l.lower()][:40]
    return {"ok": ok, "seconds": seconds, "nvcc": nvcc, "arch": f"sm_{arch}", "torch": torch.__version__,
            "kernels": kernels, "errors": errors}


def format_table(result: dict) -> str:
    lines = [f"# nvcc compile check ({result['arch']}, torch {result['torch']}): "
             f"{'ok' if result['ok'] else 'FAILED'} in {result['seconds']:.0f} s",
             "| source | kernel | registers | spill stores B | spill loads B | smem B |", "|---|---|---:|---:|---:|---:|"]
    for k in result["kernels"]:
        name = k["kernel"].replace("actsparse::(anonymous namespace)::", "").replace("void ", "")
        name = re.sub(r"\(.*", "", name).replace("__nv_bfloat16", "bf16").replace("__half", "fp16")
        lines.append(f"| {k.get('source', '')} | `{name}` | {k['registers']} | {k['spill_stores']} | {k['spill_loads']} | {k['smem']} |")
    lines += [f"error: {e}" for e in result["errors"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="90", help="compute capability without the dot (90 = H100/H200)")
    p.add_argument("--nvcc", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--sources", nargs="*", default=None, help="files under csrc/ (default: all CUDA sources)")
    args = p.parse_args(argv)
    result = compile_check(args.arch, args.nvcc, args.sources)
    print(format_table(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    spills = sum(k["spill_stores"] + k["spill_loads"] for k in result["kernels"])
    return 0 if result["ok"] and spills == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
