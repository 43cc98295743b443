"""The GPU check script's own plumbing, on CPU: its dry run goes through the same steps (shim,
preflight, build, tests, benchmark, decode, report) as the H200 run, from the repository root,
with Hydra, omegaconf and wandb unimportable (the GPU machine has none of them; transformers is
absent there too, but torchmetrics imports it whenever its metadata says it is installed, so it
cannot be blocked here: the tests guard it with importorskip). Plus the small pure pieces:
ptxas parsing, the verdict, nvcc flags in sync."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(1800)  # builds the extension when the session's cache is cold (~25 s quiet, minutes loaded)
def test_cpu_dry_run_of_the_gpu_check(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "ACTSPARSE_CHECK_BLOCK_IMPORTS": "hydra,omegaconf,wandb",
           "PYTHON": os.environ.get("PYTHON", __import__("sys").executable)}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--device", "cpu", "--quick", "--out", str(out),
         "--pytest-args", "-k 'opcheck or leading_dims or no_cuda_kernels_warns or cuda_graph_capture'"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1700,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    for step in ("preflight", "build", "tests", "bench", "decode"):
        assert results[step]["ok"], (step, results[step])
    assert results["build"]["available"] and results["build"]["fake_kernels"]
    tests = results["tests"]
    assert tests["tests"] >= 3 and tests["failures"] == 0 and tests["errors"] == 0
    assert tests["skipped"] >= 1, "the CUDA-graph tests skip on CPU and are counted as such"
    rows = results["bench"]["tables"]["grid"]
    assert {(r["batch"], r["sparsity"]) for r in rows} == {(b, s) for b in (1, 32) for s in (0, 90)}
    assert all(r["max_rel_err"] < 1e-5 for r in rows)
    assert results["decode"]["rows"][0]["same_tokens"]
    md = (out / "results.md").read_text()
    assert "| shape | batch | sparsity %" in md and "## Verdict" in md and "## Decode" in md


def test_verdict_from_rows():
    check = _load("gpu_check")
    row = dict(shape="7b", batch=1, sparsity=90, speedup_vs_dense=2.6, actsparse_ms=0.030)
    results = {"device": "cuda", "tests": {"ok": True, "failures": 0, "errors": 0},
               "bench": {"tables": {"grid": [row, {**row, "batch": 4, "sparsity": 0, "speedup_vs_dense": 0.8}]}}}
    v = check.summarize(results)
    assert v["7b_b1_90"] == {"us": 30.0, "speedup": 2.6, "meets_33us": True, "meets_2.5x": True}
    assert v["never_slower_than_dense"] is False and v["worst_case"]["batch"] == 4
    assert v["batches_where_dense_wins_at_0pct"] == [4] and v["tests_passed"]


def test_ptxas_parsing_and_flags_in_sync():
    nvcc_check = _load("sparse_ffn_nvcc_check")
    log = (
        "ptxas info    : Compiling entry function '_Z3fooILi1EEvv' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z3fooILi1EEvv\n"
        "    0 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads\n"
        "ptxas info    : Used 64 registers, used 1 barriers, 773 bytes smem\n"
    )
    (row,) = nvcc_check.parse_ptxas(log)
    assert (row["registers"], row["spill_stores"], row["spill_loads"], row["smem"]) == (64, 12, 16, 773)
    from actsparse import ext

    assert nvcc_check.CUDA_FLAGS == ext.CUDA_FLAGS


def test_shell_wrapper_finds_an_interpreter():
    text = (REPO / "bench" / "gpu_check.sh").read_text()
    assert "python3" in text and "exec \"$PY\" bench/gpu_check.py" in text and "set -e" not in text
