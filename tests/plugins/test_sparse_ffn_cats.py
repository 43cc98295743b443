"""CATS mode of the sparse FFN (issue 26 item 3, for the SmolLM2 work of issue 24): the gate
activation ``a = SiLU(z)`` kept where ``|a| > t`` (Lee et al. 2024), on every path (the CPU kernels,
the dense path, the union rule, the PyTorch reference, the CUDA kernels where a GPU exists),
against a float64 reference written from the definition; and ``convert_to_sparse`` turning a tiny
LLaMA calibrated with ``calibrate_cats`` into ``SparseFFN`` layers whose logits equal the CATS
model's. Runs without Hydra (the GPU check runs it with --noconftest)."""

from __future__ import annotations

import pytest
import torch
from actsparse.plugins.sparse_ffn import (
    SparseFFN,
    convert_to_sparse,
    sparse_ffn,
    sparse_gated_ffn,
)
from actsparse.plugins.training_free import CATSActivation, calibrate_cats
from test_sparse_ffn import CUDA, DEVICES, TOL, make, need, ops, rel_err  # noqa: F401  (ops: the fixture)
from torch import nn


def cats64(x, w_in, w_out_t, t, w_up=None, b_in=None, b_up=None, b_out=None):
    """The CATS FFN in float64 from the paper's formula, SiLU written out (not F.silu)."""
    d = lambda v: None if v is None else v.double().cpu()  # noqa: E731
    x, w_in, w_out_t, w_up, b_in, b_up, b_out = map(d, (x, w_in, w_out_t, w_up, b_in, b_up, b_out))
    z = x @ w_in.T + (0 if b_in is None else b_in)
    a = z / (1 + torch.exp(-z))
    h = torch.where(a.abs() > t, a, torch.zeros((), dtype=a.dtype))
    if w_up is not None:
        h = h * (x @ w_up.T + (0 if b_up is None else b_up))
    return h @ w_out_t + (0 if b_out is None else b_out)


def cats_threshold(p, keep: float = 0.25) -> float:
    """A magnitude threshold keeping about ``keep`` of the (token, neuron) pairs, placed in the
    widest gap near that quantile of |SiLU(z)| (no 32- vs 64-bit flips)."""
    z = p["x"].double() @ p["w_in"].double().T + (p["b_in"].double() if p.get("b_in") is not None else 0)
    s = (z / (1 + torch.exp(-z))).abs().flatten().sort().values.cpu()
    k = int((1 - keep) * (len(s) - 1))
    gaps = s[k - 5 : k + 5].diff()
    i = k - 5 + int(gaps.argmax())
    return float((s[i] + s[i + 1]) / 2)


def call(p, t, dense_above=None, backend="auto", kernel=None):
    if p["w_up"] is not None:
        return sparse_gated_ffn(p["x"], p["w_in"], p["w_up"], p["w_out_t"], t, b_gate=p.get("b_in"),
                                b_up=p.get("b_up"), b_down=p.get("b_out"), dense_above=dense_above, backend=backend,
                                activation="cats", kernel=kernel)
    return sparse_ffn(p["x"], p["w_in"], p["w_out_t"], t, b_fc=p.get("b_in"), b_proj=p.get("b_out"),
                      dense_above=dense_above, backend=backend, activation="cats", kernel=kernel)


def ref_of(p, t):
    return cats64(p["x"], p["w_in"], p["w_out_t"], t, p["w_up"], p.get("b_in"), p.get("b_up"), p.get("b_out"))


# -- the op on every path ----------------------------------------------------------------------------

# (backend, dense_above, batch): CPU fused single pass, three passes with the union rule, the MKL
# gate (batch > 8), the dense path, the reference with and without its gather.
CPU_PATHS = [("ext", 1.0, 1), ("ext", 1.0, 5), ("ext", 0.9, 3), ("ext", 1.0, 12), ("ext", 0.0, 2),
             ("reference", 1.0, 3), ("reference", 0.0, 3)]


@pytest.mark.parametrize("path", CPU_PATHS, ids=lambda p: f"{p[0]}-{p[1]}-b{p[2]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
def test_cats_matches_float64_on_cpu(ops, path, dtype, gated):
    backend, dense_above, batch = path
    p = make(batch, 67, 133, dtype, "cpu", gated=gated, bias=True, seed=batch * 3 + int(gated))
    t = cats_threshold(p)
    y = call(p, t, dense_above=dense_above, backend=backend)
    ref = ref_of(p, t)
    assert rel_err(y, ref) < TOL[dtype]
    # FATReLU at the same threshold is a different function: the test can tell them apart.
    fat = sparse_gated_ffn if gated else sparse_ffn
    args = (p["x"], p["w_in"], p["w_up"], p["w_out_t"]) if gated else (p["x"], p["w_in"], p["w_out_t"])
    assert rel_err(fat(*args, t, dense_above=dense_above, backend=backend), ref) > 10 * TOL[dtype]


def test_cats_float64_reference_is_exact():
    p = make(4, 16, 40, torch.float64, "cpu", bias=True, seed=5)
    t = cats_threshold(p)
    for dense_above in (1.0, 0.0):
        y = call(p, t, dense_above=dense_above)
        assert torch.allclose(y, ref_of(p, t), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["ext", "reference"])
def test_cats_threshold_is_strict_and_exact(ops, backend):
    """|a| == t is dropped (the rule is |a| > t), and a t one float32 step above |a| is not
    rounded down onto it (CATS rounds the threshold down, FATReLU up)."""
    x = torch.zeros(1, 8)
    x[0, 0] = 1.0
    w_gate = torch.full((4, 8), -30.0)
    w_gate[0, 0] = 2.0                            # z = 2 for neuron 0, -30 (|a| ~ 3e-12) elsewhere
    w_up, w_down_t = torch.ones(4, 8), torch.eye(4, 8)
    a = float(torch.nn.functional.silu(torch.tensor(2.0)))   # SiLU(2) in float32
    for t, kept in ((a, False), (float(torch.nextafter(torch.tensor(a), torch.tensor(0.0))), True),
                    (a - 1e-12, True)):
        y = sparse_gated_ffn(x, w_gate, w_up, w_down_t, t, activation="cats", backend=backend, dense_above=1.0)
        assert (y[0, 0] != 0).item() is kept, (t, a)


@pytest.mark.parametrize("path", [("ext", 1.0, 1), ("ext", 0.0, 2), ("reference", 1.0, 2)])
def test_cats_nan_gate_is_dropped(ops, path):
    """CATSActivation's where(|a| > t, a, 0) drops a NaN activation; every path does the same
    (FATReLU keeps a NaN, which propagates: that is the dense relu's rule, not CATS's)."""
    backend, dense_above, batch = path
    p = make(batch, 16, 40, torch.float32, "cpu", seed=2)
    p["w_in"][:, 3] = float("nan")          # every gate pre-activation is NaN; up stays finite
    y = call(p, 0.0, dense_above=dense_above, backend=backend)
    assert torch.equal(y, torch.zeros_like(y))


def test_cats_errors(ops):
    p = make(1, 16, 40, torch.float32, "cpu", seed=1)
    with pytest.raises(ValueError, match="activation must be one of"):
        sparse_gated_ffn(p["x"], p["w_in"], p["w_up"], p["w_out_t"], activation="silu")
    with pytest.raises(ValueError, match="magnitude.*>= 0"):
        call(p, -0.1)
    with pytest.raises(RuntimeError, match="activation must be 0"):
        ops.sparse_gated_ffn(p["x"], p["w_in"], p["w_up"], p["w_out_t"], 0.0, None, None, None, 1.0, 0, 7)


def test_cats_opcheck(ops):
    p = make(3, 64, 96, torch.float32, "cpu", bias=True, seed=9)
    args = (p["x"], p["w_in"], p["w_up"], p["w_out_t"], cats_threshold(p), p["b_in"], p["b_up"], p["b_out"], 1.0, 0, 1)
    torch.library.opcheck(torch.ops.actsparse.sparse_gated_ffn.default, args)
    torch.library.opcheck(torch.ops.actsparse.sparse_ffn.default,
                          (p["x"], p["w_in"], p["w_out_t"], 0.01, p["b_in"], p["b_out"], 1.0, 0, 1))


cuda_only = pytest.mark.skipif(not CUDA, reason="no CUDA device")


@cuda_only
@pytest.mark.parametrize("kernel", ["three_kernel", "three_kernel_pdl", "persistent", "tensor_core"])
@pytest.mark.parametrize("batch", [1, 2, 5, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cats_cuda_kernels(ops, kernel, batch, dtype):
    need("cuda", dtype)
    if kernel == "three_kernel_pdl" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm_90")
    p = make(batch, 256, 704, dtype, "cuda", bias=True, seed=batch)
    t = cats_threshold(p)
    y = call(p, t, dense_above=1.0, backend="ext", kernel=kernel)
    assert rel_err(y, ref_of(p, t)) < TOL[dtype]
    assert torch.equal(y, call(p, t, dense_above=1.0, backend="ext", kernel=kernel))  # deterministic


@cuda_only
def test_cats_cuda_dense_and_union_paths(ops):
    need("cuda", torch.bfloat16)
    p = make(3, 256, 704, torch.bfloat16, "cuda", bias=True, seed=4)
    t = cats_threshold(p)
    for dense_above in (0.0, 0.5):
        assert rel_err(call(p, t, dense_above=dense_above, backend="ext"), ref_of(p, t)) < TOL[torch.bfloat16]


# -- conversion of a CATS model ------------------------------------------------------------------------

def tiny_llama(dtype):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).to(dtype).eval()


def sparsified(model, calibrate, tol):
    """``calibrate`` (CATS or TEAL) at 60% on random token batches: (calibration inputs, a 2 × 12
    prompt, the dense logits, the installed method, its logits), checked to differ from dense by far
    more than ``tol`` (so a conversion that stayed dense fails the comparison)."""
    g = torch.Generator().manual_seed(1)
    calib = [torch.randint(0, 61, (4, 16), generator=g) for _ in range(3)]
    prompt = torch.randint(0, 61, (2, 12), generator=g)
    with torch.no_grad():
        dense = model(prompt).logits
    installed = calibrate(model, [(t, t) for t in calib], 0.6)
    with torch.no_grad():
        want = model(prompt).logits
    assert (want - dense).abs().max() > 1e3 * tol
    return calib, prompt, dense, installed, want


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["float64", "float32"])
def test_convert_cats_llama_matches_cats_logits(dtype, tol):
    llama = tiny_llama(dtype)
    calib, prompt, _, cats, want = sparsified(llama, calibrate_cats, tol)
    sparse = convert_to_sparse(llama, inplace=False, calibration=calib)
    layers = [m for m in sparse.modules() if isinstance(m, SparseFFN)]
    assert len(layers) == 3 and all(m.activation == "cats" for m in layers)
    assert [m.threshold for m in layers] == [cats.thresholds[n]["activation"] for n in sorted(cats.thresholds)]
    assert all(0.4 < m.sparsity < 0.8 for m in layers)  # calibrated on the CATS model: about the target
    with torch.no_grad():
        got = sparse(prompt).logits
        rows = torch.cat([sparse(prompt[i : i + 1, :1]).logits for i in range(2)])  # batch 1 and 2 routes
    assert (got - want).abs().max() <= tol * want.abs().max()
    assert (rows - want[:, :1]).abs().max() <= tol * want.abs().max()
    cats.remove()


def test_convert_refuses_cats_over_another_activation():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=61, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, hidden_act="gelu")
    llama = transformers.LlamaForCausalLM(config).eval()
    mlp = llama.model.layers[0].mlp
    mlp.act_fn = CATSActivation(0.1, base=nn.GELU())
    with pytest.raises(TypeError, match="CATS over SiLU only"):
        convert_to_sparse(llama, inplace=False)
