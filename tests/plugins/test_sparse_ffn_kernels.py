"""The kernel sets of issue 26 items 1-2: ``kernel="persistent"`` (one persistent cooperative
kernel, batch 1) and ``kernel="tensor_core"`` (bf16/fp16 mma.sync, batches 2-8), against the
float64 reference, bitwise reproducible, captured in CUDA graphs and replayed on fresh inputs,
and under ``opcheck``. The CUDA cases skip without a GPU (bench/gpu_check.sh runs them on one);
the CPU cases check the names route (the CPU has one kernel set) and that the dispatch table can
pick the new kernels once they are measured. Runs without Hydra (--noconftest in the GPU check)."""

from __future__ import annotations

import warnings

import pytest
import torch
from actsparse.plugins import sparse_ffn_dispatch as dispatch
from actsparse.plugins.sparse_ffn import sparse_ffn, sparse_gated_ffn
from test_sparse_ffn import (  # noqa: F401
    CUDA,
    TOL,
    call,
    make,
    need,
    ops,
    ref_of,
    rel_err,
    threshold_for,
)

NEW = ["persistent", "tensor_core"]


def run(p, t, kernel, dense_above=1.0):
    if p["w_up"] is not None:
        return sparse_gated_ffn(p["x"], p["w_in"], p["w_up"], p["w_out_t"], t, b_gate=p.get("b_in"),
                                b_up=p.get("b_up"), b_down=p.get("b_out"), dense_above=dense_above, kernel=kernel,
                                backend="ext")
    return sparse_ffn(p["x"], p["w_in"], p["w_out_t"], t, b_fc=p.get("b_in"), b_proj=p.get("b_out"),
                      dense_above=dense_above, kernel=kernel, backend="ext")


# -- CPU: names route, the table can choose them ----------------------------------------------------------

@pytest.mark.parametrize("kernel", NEW)
def test_new_kernel_names_route_on_cpu(ops, kernel):
    """The CPU has one kernel set: any kernel name computes the same (bitwise) result there."""
    p = make(3, 67, 133, torch.float32, "cpu", bias=True, seed=3)
    t = threshold_for(p, "some")
    y = run(p, t, kernel)
    assert torch.equal(y, run(p, t, "three_kernel"))
    assert rel_err(y, ref_of(p, t)) < TOL[torch.float32]


def test_op_rejects_an_unknown_kernel_id(ops):
    p = make(1, 16, 40, torch.float32, "cpu", seed=1)
    with pytest.raises(RuntimeError, match="kernel must be 0.*3 \\(tensor cores"):
        ops.sparse_gated_ffn(p["x"], p["w_in"], p["w_up"], p["w_out_t"], 0.0, None, None, None, 1.0, 4, 0)
    with pytest.raises(ValueError, match="kernel must be one of"):
        run(p, 0.0, "persistant")


def test_dispatch_table_picks_a_measured_new_kernel():
    table = {"device_kind": "cuda:Example", "points": [
        {"batch": 1, "sparsity": 90, "dense_us": 80,
         "kernels_us": {"three_kernel": 40, "persistent": 30, "tensor_core": 45}},
        {"batch": 4, "sparsity": 90, "dense_us": 80,
         "kernels_us": {"three_kernel": 90, "persistent": 85, "tensor_core": 50}},
        {"batch": 4, "sparsity": 0, "dense_us": 80,
         "kernels_us": {"three_kernel": 150, "persistent": 150, "tensor_core": 82}}]}
    assert dispatch.choose_from(table, 1, 0.9).kernel == "persistent"
    assert dispatch.choose_from(table, 3, 0.9).kernel == "tensor_core"
    assert dispatch.choose_from(table, 4, 0.0).path == "dense"  # 80/82: slower than dense, so dense
    assert {"persistent", "tensor_core"} <= set(dispatch.KERNELS)


# -- CUDA ---------------------------------------------------------------------------------------------------

cuda_only = pytest.mark.skipif(not CUDA, reason="no CUDA device")
DTYPES = {"persistent": [torch.bfloat16, torch.float16, torch.float32], "tensor_core": [torch.bfloat16, torch.float16]}
CASES = [(k, dt) for k in NEW for dt in DTYPES[k]]


@cuda_only
@pytest.mark.parametrize("kernel,dtype", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("shape", [(256, 704, 256), (512, 1000, 192), (4096, 1376, 4096)],
                         ids=["small", "f-tail", "7b-width"])
@pytest.mark.parametrize("batch", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
def test_new_kernels_match_float64(ops, kernel, dtype, shape, batch, gated):
    need("cuda", dtype)
    d, f, d_out = shape
    previous = ops._set_debug_poison(True)  # scratch and outputs NaN-filled: every element must be written
    try:
        p = make(batch, d, f, dtype, "cuda", gated=gated, bias=True, d_out=d_out, seed=batch * 11 + f)
        for active in ("some", "none", "all"):
            t = threshold_for(p, active)
            y = run(p, t, kernel)
            assert y.shape == (batch, d_out) and y.dtype == dtype
            if active == "none":
                assert torch.equal(y, p["b_out"].expand(batch, d_out))
            else:
                assert rel_err(y, ref_of(p, t)) < TOL[dtype], (kernel, active)
    finally:
        ops._set_debug_poison(previous)


@cuda_only
@pytest.mark.parametrize("kernel", NEW)
def test_new_kernels_bitwise_reproducible(ops, kernel):
    need("cuda", torch.bfloat16)
    for batch in (1, 4, 8):
        p = make(batch, 1024, 2816, torch.bfloat16, "cuda", bias=True, seed=batch)
        t = threshold_for(p, "some")
        first = run(p, t, kernel)
        assert all(torch.equal(first, run(p, t, kernel)) for _ in range(3))


@cuda_only
@pytest.mark.parametrize("kernel", NEW)
@pytest.mark.parametrize("batch", [1, 4])
def test_new_kernels_graph_capture_on_fresh_inputs(ops, kernel, batch):
    """Captured once, replayed on new x: the persistent kernel's grid barrier and the tensor-core
    kernels' scratch must work on every replay, with nothing read back to the host."""
    need("cuda", torch.bfloat16)
    p = make(batch, 256, 704, torch.bfloat16, "cuda", seed=batch)
    static = {**p, "x": p["x"].clone()}
    run(static, 0.0, kernel)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run(static, 0.0, kernel)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run(static, 0.0, kernel)
    for seed in (100, 101, 102):
        fresh = make(batch, 256, 704, torch.bfloat16, "cuda", seed=seed)["x"]
        static["x"].copy_(fresh)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, run({**p, "x": fresh}, 0.0, kernel))


@cuda_only
def test_tensor_core_float32_falls_back_with_a_warning(ops):
    need("cuda", torch.float32)
    p = make(4, 256, 704, torch.float32, "cuda", bias=True, seed=7)
    t = threshold_for(p, "some")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        y = run(p, t, "tensor_core")
    assert torch.equal(y, run(p, t, "three_kernel"))  # the three kernels ran: bitwise their result


@cuda_only
@pytest.mark.parametrize("kernel", NEW)
def test_new_kernels_odd_shapes_fall_back_and_stay_correct(ops, kernel):
    need("cuda", torch.bfloat16)
    p = make(2, 67, 133, torch.bfloat16, "cuda", bias=True, d_out=67, seed=5)
    t = threshold_for(p, "some")
    assert rel_err(run(p, t, kernel), ref_of(p, t)) < TOL[torch.bfloat16]


@cuda_only
def test_new_kernels_opcheck(ops):
    need("cuda", torch.bfloat16)
    p = make(2, 128, 344, torch.bfloat16, "cuda", bias=True, seed=12)
    for kernel_id in (dispatch.KERNELS["persistent"], dispatch.KERNELS["tensor_core"]):
        args = (p["x"], p["w_in"], p["w_up"], p["w_out_t"], 0.0, p["b_in"], p["b_up"], p["b_out"], 1.0, kernel_id, 0)
        torch.library.opcheck(torch.ops.actsparse.sparse_gated_ffn.default, args)
