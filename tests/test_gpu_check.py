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


CRASH_PROBE = """
import os, signal


def test_probe_crashes():
    os.kill(os.getpid(), signal.SIGSEGV)


def test_probe_passes():
    assert 1 + 1 == 2
"""


@pytest.mark.slow  # ~40 s: the whole GPU check script end to end; run it (-m slow) before a GPU session
@pytest.mark.timeout(1800)  # builds the extension when the build cache is cold (~25 s quiet, minutes loaded)
def test_cpu_dry_run_of_the_gpu_check(tmp_path):
    out = tmp_path / "check"
    probe = tmp_path / "test_crash_probe.py"
    probe.write_text(CRASH_PROBE)
    env = {**os.environ, "ACTSPARSE_CHECK_BLOCK_IMPORTS": "hydra,omegaconf,wandb",
           "PYTHON": os.environ.get("PYTHON", __import__("sys").executable)}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--dry-run", "--out", str(out), "--tests", "tests/plugins/test_sparse_ffn.py",
         str(probe), "--pytest-args",
         "-k 'opcheck or leading_dims or probe'"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1700,
    )
    # The probe's segfault fails the tests step (exit 1), and nothing else.
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    for step in ("preflight", "build", "bench", "decode"):
        assert results[step]["ok"], (step, results[step])
    assert results["build"]["available"] and results["build"]["fake_kernels"]
    tests = results["tests"]
    assert tests["crashed"] == [f"{probe}::test_probe_crashes"]
    assert tests["failures"] == 1 and any("crashed: SIGSEGV" in f for f in tests["failed"])
    assert tests["passed"] == 3, "opcheck, leading_dims and the probe's passing test, each in its own process"
    assert tests["skipped"] == 1, "the CUDA compile/opcheck test skips on CPU and is counted as such"
    assert tests["tests"] == tests["passed"] + tests["failures"] + tests["skipped"]
    assert "crashed: SIGSEGV" in (out / "tests.txt").read_text()
    assert results["commit"] and "--dry-run" in results["command"]
    rows = results["bench"]["tables"]["grid"]
    assert {(r["batch"], r["sparsity"]) for r in rows} == {(b, s) for b in (1, 32) for s in (0, 90)}
    assert all(r["max_rel_err"] < 1e-5 and r["weight_sets"] >= 4 for r in rows)
    assert results["decode"]["rows"][0]["same_tokens"]
    md = (out / "results.md").read_text()
    assert "| shape | batch | sparsity %" in md and "## Verdict" in md and "## Decode" in md
    assert "crashed or hung" in md and results["commit"] in md

    # The raw report (issue 26 item 6) and the dispatch table (item 3), written to OUT in a dry run.
    raw = json.loads(Path(results["written"]["raw"]).read_text())
    assert raw["commit"] == results["commit"] and raw["command"] == results["command"]
    keys = {"gpu", "shape", "batch", "sparsity", "dense_us", "dense_fused_us", "actsparse_us"}
    assert raw["rows"] and all(keys <= set(r) for r in raw["rows"])
    assert all(isinstance(r[k], (int, float)) and r[k] > 0 for r in raw["rows"] for k in
               ("dense_us", "dense_fused_us", "actsparse_us"))
    from actsparse.plugins import sparse_ffn_dispatch as dispatch

    table = dispatch.validate(json.loads(Path(results["written"]["dispatch_table"]).read_text()))
    assert table["device_kind"] == "cpu" and table["commit"] == results["commit"]
    assert {(p["batch"], p["sparsity"]) for p in table["points"]} == {(b, s) for b in (1, 32) for s in (0, 90)}


def test_verdict_from_rows():
    check = _load("gpu_check")
    row = dict(shape="7b", batch=1, sparsity=90, speedup_vs_dense=2.6, speedup_vs_dense_fused=2.1, actsparse_ms=0.030)
    results = {"device": "cuda", "tests": {"ok": True, "failures": 0, "errors": 0},
               "bench": {"tables": {"grid": [row, {**row, "batch": 4, "sparsity": 0, "speedup_vs_dense": 0.8}]}}}
    v = check.summarize(results)
    assert v["7b_b1_90"] == {"us": 30.0, "speedup": 2.6, "meets_33us": True, "meets_2.5x": True,
                             "speedup_vs_fused": 2.1, "meets_2.2x_fused": False}
    assert v["never_slower_than_dense"] is False and v["worst_case"]["batch"] == 4
    assert "kernels" not in v  # rows without per-kernel times: no kernel verdict
    assert v["batches_where_dense_wins_at_0pct"] == [4] and not v["tests_passed"], "0 tests run is not a pass"
    results["tests"]["tests"] = 12
    assert check.summarize(results)["tests_passed"]


def test_raw_rows_and_dispatch_table_from_results():
    """The issue's row format and the dispatch table, from a CUDA-shaped results dict."""
    check = _load("gpu_check")
    from actsparse.plugins import sparse_ffn_dispatch as dispatch

    def bench_row(batch, sparsity, dense, fused, kernel, pattern="random"):
        return dict(shape="7b", batch=batch, sparsity=sparsity if pattern == "random" else -1, token_sparsity=91.5,
                    pattern=pattern, dense_ms=dense / 1e3, dense_fused_ms=fused / 1e3, actsparse_ms=kernel / 1e3,
                    union_active=0.1, dtype="bfloat16", kernels_us={"three_kernel": kernel}, max_rel_err=1e-3,
                    max_rel_err_kernel=2e-3)

    results = {"device": "cuda", "commit": "abc123", "command": "python3 bench/gpu_check.py",
               "preflight": {"gpu": "NVIDIA H200"},
               "bench": {"tables": {"grid": [bench_row(1, 0, 80, 70, 75), bench_row(1, 90, 80, 70, 40),
                                             bench_row(2, 0, 80, 70, 93), bench_row(2, 90, 80, 70, 51)],
                                    "recorded": [bench_row(2, None, 80, 70, 45, pattern="recorded")]}}}
    rows = check.issue_rows(results)
    assert rows[0] == {**rows[0], "gpu": "NVIDIA H200", "shape": "7b", "batch": 1, "sparsity": 0, "dense_us": 80.0,
                       "dense_fused_us": 70.0, "actsparse_us": 75.0}
    assert rows[-1]["pattern"] == "recorded" and rows[-1]["sparsity"] == 91.5 and rows[-1]["max_rel_err"] == 2e-3
    kernels = check.kernel_report().kernel_verdict(rows)  # issue 26's targets per kernel set, from these rows
    assert kernels["7b_b1_90"]["best"] == "three_kernel" and kernels["7b_b1_90"]["speedup"] == 2.0
    assert not kernels["7b_b1_90"]["meets_2.5x"] and kernels["7b_b2_90"]["speedup"] == round(80 / 51, 2)
    table = dispatch.validate(check.dispatch_table(rows, "cuda:NVIDIA H200", "abc123", "cmd"))
    assert len(table["points"]) == 4, "the recorded rows are not table points"
    assert dispatch.choose_from(table, 1, None).path == "sparse"
    assert dispatch.choose_from(table, 2, 0.1).path == "dense" and dispatch.choose_from(table, 2, 0.9).path == "sparse"


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
    assert list(nvcc_check.CUDA_SOURCES) == list(ext.CUDA_SOURCES)


def test_shell_wrapper_finds_an_interpreter():
    text = (REPO / "bench" / "gpu_check.sh").read_text()
    assert "python3" in text and "exec \"$PY\" bench/gpu_check.py" in text and "set -e" not in text


def test_kernel_report_table_and_targets():
    """Issue 26's side-by-side table and targets from hand-made rows: the best kernel set per point,
    its ratios to dense and fused dense, and each target met or not (both sides of a threshold)."""
    report = _load("sparse_ffn_kernel_report")
    base = {"shape": "7b", "pattern": "random", "table": "grid", "dense_us": 80.0, "dense_fused_us": 72.0}
    rows = [dict(base, batch=1, sparsity=90, kernels_us={"three_kernel": 40.0, "persistent": 31.0}),
            dict(base, batch=2, sparsity=90, kernels_us={"three_kernel": 51.0, "tensor_core": 39.0}),
            dict(base, batch=8, sparsity=90, kernels_us={"three_kernel": 172.0, "tensor_core": 62.5}),
            dict(base, batch=8, sparsity=0, kernels_us={"three_kernel": 211.0, "tensor_core": 83.0})]
    verdict = report.kernel_verdict(rows)
    assert verdict["7b_b1_90"]["best"] == "persistent" and verdict["7b_b1_90"]["speedup"] == round(80 / 31, 2)
    assert verdict["7b_b1_90"]["meets_2.5x"] and verdict["7b_b1_90"]["meets_2.2x_fused"]  # 2.58x, 2.32x
    assert verdict["7b_b2_90"]["met"] and verdict["7b_b2_90"]["tensor_core_speedup"] == round(80 / 39, 2)  # 2.05x
    assert not verdict["7b_b8_90"]["met"]  # 80 / 62.5 = 1.28x < 1.3x
    assert not verdict["7b_b8_0"]["met"]  # 80 / 83 = 0.96x < 0.97x
    table = report.kernel_table(rows)
    assert "| persistent µs |" in table and "| tensor_core µs |" in table
    assert "| 7b | 1 | 90 | random | 80.0 | 72.0 | 40.0 | 31.0 |  | persistent | 2.58x | 2.32x |" in table


def test_hf_decode_runs_without_autograd():
    """bench/decode.py's greedy decode runs under no_grad: with autograd on, the sparse FFN takes its
    differentiable reference path (and dense decoding pays for the graph), so every timing would be wrong."""
    transformers = pytest.importorskip("transformers")
    import torch

    decode = _load("decode")
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2)).eval()
    seen = []
    model.model.layers[0].mlp.register_forward_hook(lambda mod, args, out: seen.append(torch.is_grad_enabled()))
    tokens, _ = decode.hf_decode(model, torch.randint(0, 50, (1, 4)), 3)
    assert tokens.shape == (1, 3) and len(seen) == 3 and not any(seen)
