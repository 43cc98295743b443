"""Issue 26's defects of the sparse FFN, each pinned by a test that fails without its fix: the
threshold compared exactly (not rounded to float32 / the input dtype), a NaN gate propagating on
every path (as on the dense one), ``dense_above`` between 0 and 1 honoured on CUDA as on the CPU,
a misaligned ``x``, and the down kernel's last column tile. CUDA cases skip without a GPU; the
CPU cases run the same logic through the CPU kernels and the PyTorch reference."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from test_sparse_ffn import CUDA, DEVICES, TOL, call, make, need, ops, ref64, rel_err  # noqa: F401  (ops: the fixture)

from actsparse.plugins.sparse_ffn import sparse_gated_ffn


# (backend, dense_above, batch): every route through the op. CPU: the fused single pass
# (batch <= 8, dense_above 1), the three passes (0 < dense_above < 1), the MKL gate (batch > 8),
# the dense path, and the reference with and without its gather. CUDA: the kernels at 1 and 4
# rows, cuBLAS, and the per-call union decision.
PATHS = {
    "cpu": [("ext", 1.0, 1), ("ext", 1.0, 3), ("ext", 0.5, 3), ("ext", 1.0, 12), ("ext", 0.0, 2),
            ("reference", 1.0, 2), ("reference", 0.0, 2)],
    "cuda": [("ext", 1.0, 1), ("ext", 1.0, 4), ("ext", 0.0, 2), ("ext", 0.5, 2), ("reference", 1.0, 2)],
}


def _basis_layer(batch, dtype, device, gate_value, d=16, f=40, seed=0):
    """x rows = e_0, so z[:, j] = w_gate[j, 0] exactly: neuron 5 has ``gate_value``, every other -1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(batch, d)
    x[:, 0] = 1.0
    w_gate = torch.randn(f, d, generator=g)
    w_gate[:, 0] = -1.0
    w_gate[5, 0] = gate_value
    p = dict(x=x, w_in=w_gate, w_up=torch.randn(f, d, generator=g), w_out_t=torch.randn(f, d, generator=g))
    return {k: v.to(dtype).to(device) for k, v in p.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_threshold_is_compared_exactly(ops, device, dtype):
    """A gate equal to the dtype's value v nearest 0.1 and a threshold 1e-12 above v: v < t, so
    the neuron is inactive and y = 0. Rounding t to float32 (or to the dtype) gives v >= v: the
    neuron fires (the launcher's float(threshold) and the reference's Python-float compare did)."""
    need(device, dtype)
    v = float(torch.tensor(0.1, dtype=dtype))
    for backend, dense_above, batch in PATHS[device]:
        p = _basis_layer(batch, dtype, device, 0.1)
        above = call(p, v + 1e-12, dense_above=dense_above, backend=backend)
        assert torch.equal(above.cpu(), torch.zeros_like(above.cpu())), (backend, dense_above, batch)
        at = call(p, v, dense_above=dense_above, backend=backend)  # t == v exactly: active
        assert rel_err(at, ref64(p["x"], p["w_in"], p["w_out_t"], v, p["w_up"])) < TOL[dtype], (backend, dense_above, batch)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("threshold", [0.0, 0.05])
def test_nan_gate_propagates_on_every_path(ops, device, dtype, threshold):
    """A NaN in x's row 0 makes that row's gates NaN: dense computes relu(NaN) * up = NaN, so the
    row's output is NaN on every path (the sparse kernels counted NaN as inactive and returned
    finite numbers: batch 1 sparse and batch 2 dense disagreed); the other rows stay exact."""
    need(device, dtype)
    for backend, dense_above, batch in PATHS[device]:
        batch = max(batch, 2)
        p = make(batch, 40, 96, dtype, device, seed=batch)
        p["x"][0, 3] = float("nan")
        y = call(p, threshold, dense_above=dense_above, backend=backend).cpu()
        where = (backend, dense_above, batch)
        assert y[0].isnan().all(), where
        assert rel_err(y[1:], ref64(p["x"][1:], p["w_in"], p["w_out_t"], threshold, p["w_up"])) < TOL[dtype], where
    # A NaN in one gate weight row: neuron 7's gate is NaN for every token, so every output is NaN,
    # at batch 1 (CPU fused pass / CUDA kernels by default) and batch 2 alike.
    for batch in (1, 2):
        p = make(batch, 40, 96, dtype, device, seed=5)
        p["w_in"][7, 0] = float("nan")
        for backend in ("ext", "reference"):
            assert call(p, threshold, backend=backend).isnan().all(), (backend, batch)


def _probe_layer(batch, device, union=0.3, f=100, d=32, seed=0):
    """Imposed masks with a union of ``union`` * f neurons; the inactive neurons' up rows are NaN,
    so the dense path (0 * NaN) returns NaN and the sparse path (never reads them) is finite."""
    g = torch.Generator().manual_seed(seed)
    n_on = int(union * f)
    x = torch.zeros(batch, d)
    x[torch.arange(batch), torch.arange(batch)] = 1.0
    w_gate = torch.randn(f, d, generator=g)
    w_gate[:, :batch] = -1.0
    w_gate[:n_on, :batch] = 1.0
    w_up = torch.randn(f, d, generator=g)
    w_up[n_on:] = float("nan")
    w_out_t = torch.randn(f, d, generator=g)
    clean_up = torch.where(w_up.isnan(), 0.0, w_up)
    p = {k: v.to(device) for k, v in dict(x=x, w_in=w_gate, w_up=w_up, w_out_t=w_out_t).items()}
    return p, ref64(x, w_gate, w_out_t, 0.0, clean_up)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch", [1, 2, 4])
def test_dense_above_fraction_decides_from_the_union(ops, device, batch):
    """dense_above = 0.2 with a 30% union runs dense, 0.5 runs sparse (the schema's rule). CUDA
    ignored any value in (0, 1) and always ran the kernels."""
    need(device, torch.float32)
    p, ref = _probe_layer(batch, device)
    assert call(p, 0.0, dense_above=0.2, backend="ext").isnan().all(), "a 30% union above 0.2 must run dense"
    sparse = call(p, 0.0, dense_above=0.5, backend="ext")
    assert rel_err(sparse, ref) < 1e-5, "a 30% union below 0.5 must run sparse (never reading the NaN rows)"
    assert rel_err(call(p, 0.0, dense_above=0.5, backend="reference"), ref) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch", [1, 3])
def test_misaligned_x_view(ops, device, dtype, batch):
    """x a view one element into its storage (2 or 4 bytes off 16): same result as an aligned x."""
    need(device, dtype)
    p = make(batch, 128, 344, dtype, device, seed=batch)
    buf = torch.empty(batch * 128 + 1, dtype=dtype, device=device)
    x = buf[1:].view(batch, 128)
    x.copy_(p["x"])
    assert x.data_ptr() % 16 != 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CUDA says once per process that it copies x
        y = call({**p, "x": x}, 0.0, dense_above=1.0, backend="ext")
    assert rel_err(y, ref64(p["x"], p["w_in"], p["w_out_t"], 0.0, p["w_up"])) < TOL[dtype]
    assert torch.equal(y, call(p, 0.0, dense_above=1.0, backend="ext")), "alignment must not change the result"


cuda_only = pytest.mark.skipif(not CUDA, reason="no CUDA device")


@cuda_only
def test_cuda_fraction_under_graph_capture_is_refused(ops):
    need("cuda", torch.float32)
    p, _ = _probe_layer(2, "cuda")
    call(p, 0.0, dense_above=1.0, backend="ext")
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="CUDA graph cannot capture.*dense_above=0"):
        with torch.cuda.graph(graph):
            call(p, 0.0, dense_above=0.5, backend="ext")


@cuda_only
@pytest.mark.skipif(shutil.which("compute-sanitizer") is None, reason="no compute-sanitizer on PATH")
def test_cuda_down_kernel_reads_no_uninitialised_registers(ops, tmp_path):
    """d_out = 200 (not a multiple of the 256-column tile): the lanes past the end used to FMA
    uninitialised registers (discarded, still undefined); initcheck reports such reads."""
    code = (
        "import torch\nfrom actsparse.plugins.sparse_ffn import sparse_gated_ffn\n"
        "g = torch.Generator().manual_seed(0)\n"
        "r = lambda *s: torch.randn(*s, generator=g).bfloat16().cuda()\n"
        "y = sparse_gated_ffn(r(1, 256), r(512, 256), r(512, 256), r(512, 200), 0.0, dense_above=1.0, backend='ext')\n"
        "torch.cuda.synchronize(); assert torch.isfinite(y).all()\n"
    )
    proc = subprocess.run(["compute-sanitizer", "--tool", "initcheck", "--error-exitcode", "3", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=600, env={**os.environ})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


@cuda_only
@pytest.mark.parametrize("batch", [1, 2, 3, 8])
def test_cuda_pdl_kernel_set_matches_and_captures(ops, batch):
    """kernel="three_kernel_pdl" (issue 26 item 1's first step, unmeasured): the same kernels,
    launched with programmatic dependent launch: bitwise the default set's result, and it
    captures in a CUDA graph and replays on fresh inputs."""
    need("cuda", torch.bfloat16)
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm_90+")
    p = make(batch, 512, 1000, torch.bfloat16, "cuda", bias=True, seed=batch)

    def run(x, kernel):
        return sparse_gated_ffn(x, p["w_in"], p["w_up"], p["w_out_t"], 0.0, b_gate=p["b_in"], b_up=p["b_up"],
                                b_down=p["b_out"], dense_above=1.0, kernel=kernel, backend="ext")

    assert torch.equal(run(p["x"], "three_kernel_pdl"), run(p["x"], "three_kernel"))
    static_x = p["x"].clone()
    run(static_x, "three_kernel_pdl")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run(static_x, "three_kernel_pdl")
    fresh = make(batch, 512, 1000, torch.bfloat16, "cuda", seed=100 + batch)["x"]
    static_x.copy_(fresh)
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(out, ref64(fresh, p["w_in"], p["w_out_t"], 0.0, p["w_up"], p["b_in"], p["b_up"], p["b_out"])) < 1e-2


def test_default_backend_serves_dtypes_the_kernels_lack():
    """float64 on the CPU has no compiled kernel: the default backend takes the reference path (as the
    docstring says) instead of raising the kernel's dtype error."""
    g = torch.Generator().manual_seed(0)
    x, wg, wu, wd = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((3, 16), (40, 16), (40, 16), (40, 16)))
    with torch.no_grad():
        y = sparse_gated_ffn(x, wg, wu, wd, threshold=0.1)
    expected = (torch.where(x @ wg.T >= 0.1, x @ wg.T, 0) * (x @ wu.T)) @ wd
    assert y.dtype == torch.float64 and torch.allclose(y, expected, rtol=1e-12, atol=1e-12)
