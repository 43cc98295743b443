"""TEAL in the sparse FFN (issue 24): the op ``actsparse::teal_ffn`` on every CPU path against a
float64 reference written from the paper's definition; a kernel that reads a weight row of a zeroed
input is caught (those rows are NaN); the thresholds compare as the hooks do; and
``convert_to_sparse`` turning LLaMA (SiLU, gated) and GPT-2 (GELU-tanh, plain) models calibrated
with ``calibrate_teal`` into ``TealFFN`` layers whose logits and greedy tokens equal the hooked model's."""

from __future__ import annotations

import math

import pytest
import torch
from actsparse.plugins.sparse_ffn import convert_to_sparse
from actsparse.plugins.sparse_ffn_teal import TealFFN, reference_teal_ffn, teal_activation, teal_ffn
from actsparse.plugins.training_free import calibrate_teal, install_teal, teal_thresholds
from test_sparse_ffn import TOL, make, ops, rel_err  # noqa: F401  (ops: the fixture)
from test_sparse_ffn_cats import sparsified, tiny_llama
from torch import nn

ACT64 = {  # the activations written out in float64, not through F.*
    "silu": lambda z: z / (1 + torch.exp(-z)),
    "relu": lambda z: z.clamp_min(0),
    "gelu": lambda z: 0.5 * z * (1 + torch.special.erf(z / math.sqrt(2))),
    "gelu_tanh": lambda z: 0.5 * z * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3))),
}


def teal64(p, t_in, t_down, activation="silu", rounded_to=None):
    """TEAL's FFN in float64 from the definition; returns (y, x1 before its threshold). With
    ``rounded_to`` (bfloat16), z, u and x1 are rounded to that dtype where a model in it holds them."""
    d = lambda v: None if v is None else v.double().cpu()  # noqa: E731
    r = (lambda v: v) if rounded_to in (None, torch.float32) else (lambda v: v.to(rounded_to).double())  # noqa: E731
    x, w_in, w_up, w_out_t = d(p["x"]), d(p["w_in"]), d(p["w_up"]), d(p["w_out_t"])
    xs = torch.where(x.abs() > t_in, x, torch.zeros(()).double())
    x1 = ACT64[activation](r(xs @ w_in.T + (0 if p.get("b_in") is None else d(p["b_in"]))))
    if w_up is not None:
        x1 = r(x1 * r(xs @ w_up.T + (0 if p.get("b_up") is None else d(p["b_up"]))))
    h = torch.where(x1.abs() > t_down, x1, torch.zeros(()).double())
    return h @ w_out_t + (0 if p.get("b_out") is None else d(p["b_out"])), x1


def gap_threshold(values: torch.Tensor, keep: float) -> float:
    """A magnitude threshold keeping about ``keep`` of ``values``, in the widest nearby gap (no
    rounding flips between float64 and the op's dtype)."""
    s = values.double().abs().flatten().sort().values
    k = int((1 - keep) * (len(s) - 1))
    lo, hi = max(0, k - 5), min(len(s) - 1, k + 5)
    i = lo + int(s[lo : hi + 1].diff().argmax())
    return float((s[i] + s[i + 1]) / 2)


def case(batch, dtype, gated, activation="silu", seed=0, bias=True):
    p = make(batch, 67, 133, dtype, "cpu", gated=gated, bias=bias, seed=seed)
    t_in = gap_threshold(p["x"], 0.35)
    _, x1 = teal64(p, t_in, 0.0, activation)
    return p, t_in, gap_threshold(x1, 0.3)


def call(p, t_in, t_down, activation="silu", **kw):
    t = lambda w: None if w is None else w.t().contiguous()  # noqa: E731  (input-major, as TealFFN stores)
    return teal_ffn(p["x"], t(p["w_in"]), p["w_out_t"], t_in, t_down, w_up_t=t(p["w_up"]), b_in=p.get("b_in"),
                    b_up=p.get("b_up"), b_out=p.get("b_out"), activation=activation, **kw)


# (backend, dense_above, batch): sparse at batch 1 and 5 (one chunk), 12 (two chunks of <= 8 rows),
# the union rule going dense, the dense path, the reference.
PATHS = [("ext", 1.0, 1), ("ext", 1.0, 5), ("ext", 1.0, 12), ("ext", 0.2, 3), ("ext", 0.0, 2),
         ("reference", None, 3)]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"{p[0]}-{p[1]}-b{p[2]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
def test_teal_matches_float64(ops, path, dtype, gated):
    backend, dense_above, batch = path
    p, t_in, t_down = case(batch, dtype, gated, seed=batch + 7 * int(gated))
    ref, _ = teal64(p, t_in, t_down, rounded_to=dtype)
    y = call(p, t_in, t_down, dense_above=dense_above, backend=backend)
    assert y.dtype == dtype and y.shape == (batch, 67)
    if dtype == torch.bfloat16 and batch > 8:
        # 12 tokens in bf16: a few x1 entries sit within bf16 rounding of t_down and flip against any
        # float64 emulation (every path agrees with every other, measured). Here the chunked sparse
        # path is held to the op's dense (MKL) path, which the smaller batches tie to float64.
        ref = call(p, t_in, t_down, dense_above=0.0, backend=backend).double()
    assert rel_err(y, ref) < TOL[dtype]
    # the thresholds matter: the dense FFN is a different function, which the comparison tells apart
    dense, _ = teal64(p, 0.0, 0.0)
    assert rel_err(y, dense) > 3 * TOL[dtype]


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_teal_other_activations(ops, activation):
    p, t_in, t_down = case(2, torch.float32, gated=False, activation=activation, seed=3)
    ref, _ = teal64(p, t_in, t_down, activation)
    assert rel_err(call(p, t_in, t_down, activation, dense_above=1.0, backend="ext"), ref) < 1e-5
    assert rel_err(call(p, t_in, t_down, activation, backend="reference"), ref) < 1e-5


def test_teal_kernel_never_reads_weights_of_zeroed_inputs(ops):
    """Rows of W_inᵀ/W_upᵀ for inputs every token zeroes, and rows of W_out_t for neurons every
    token zeroes, are NaN: a kernel that read (and multiplied by 0) any of them returns NaN."""
    p, t_in, t_down = case(1, torch.float32, gated=True, seed=11, bias=False)
    ref, x1 = teal64(p, t_in, t_down)
    idle_in = (p["x"].abs() <= t_in).all(0)
    idle_out = (x1.abs() <= t_down).all(0)
    assert 0.3 < idle_in.float().mean() < 0.9 and 0.3 < idle_out.float().mean() < 0.9
    w_in_t, w_up_t, w_out_t = p["w_in"].t().contiguous(), p["w_up"].t().contiguous(), p["w_out_t"].clone()
    for w, idle in ((w_in_t, idle_in), (w_up_t, idle_in), (w_out_t, idle_out)):
        w[idle] = float("nan")
    y = teal_ffn(p["x"], w_in_t, w_out_t, t_in, t_down, w_up_t=w_up_t, dense_above=1.0, backend="ext")
    assert rel_err(y, ref) < 1e-5
    xs = torch.where(p["x"].abs() > t_in, p["x"], torch.zeros(()))
    assert torch.isnan(xs @ w_in_t).all() and torch.isnan(x1.float() @ w_out_t).all()  # a dense read: NaN


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_teal_threshold_compares_as_the_hooks_do(ops, dtype):
    """``|x| > t`` in x's dtype (t rounded to nearest), as ``MagnitudeSparsifier``: an entry equal to
    0.1 rounded to the dtype is dropped at t = 0.1 (exactly, 0.1f > 0.1 in float64); NaN is dropped."""
    p = make(1, 8, 16, dtype, "cpu", gated=True, seed=2)
    x = p["x"].clone()
    x[0, 0], x[0, 1], x[0, 2] = torch.tensor(0.1, dtype=dtype), float("nan"), 1.0
    t = lambda w: w.t().contiguous()  # noqa: E731
    args = (t(p["w_in"]), p["w_out_t"], 0.1, 0.0)
    got = teal_ffn(x, *args, w_up_t=t(p["w_up"]), dense_above=1.0, backend="ext")
    want = reference_teal_ffn(x, t(p["w_in"]), t(p["w_up"]), p["w_out_t"], 0.1, 0.0)
    assert torch.isfinite(got).all() and rel_err(got, want.double()) < TOL[dtype]
    keep = x.clone()
    keep[0, 0] = 0.0
    keep[0, 1] = 0.0
    assert rel_err(got, reference_teal_ffn(keep, t(p["w_in"]), t(p["w_up"]), p["w_out_t"], 0.0, 0.0).double()) \
        < TOL[dtype]


def test_teal_errors(ops):
    p = make(1, 16, 40, torch.float32, "cpu", seed=1)
    t = lambda w: w.t().contiguous()  # noqa: E731
    with pytest.raises(RuntimeError, match="input-major"):
        ops.teal_ffn(p["x"], p["w_in"], None, p["w_out_t"], 0.1, 0.1)  # [f, d]: the nn.Linear layout
    with pytest.raises(RuntimeError, match="activation must be 0"):
        ops.teal_ffn(p["x"], t(p["w_in"]), None, p["w_out_t"], 0.1, 0.1, None, None, None, 7)
    with pytest.raises(RuntimeError, match="float32 and bfloat16"):
        ops.teal_ffn(p["x"].double(), t(p["w_in"]).double(), None, p["w_out_t"].double(), 0.1, 0.1)
    with pytest.raises(ValueError, match="magnitude"):
        teal_ffn(p["x"], t(p["w_in"]), p["w_out_t"], -0.1, 0.1)
    with pytest.raises(ValueError, match="activation must be one of"):
        teal_ffn(p["x"], t(p["w_in"]), p["w_out_t"], 0.1, 0.1, activation="tanh")
    with pytest.raises(TypeError, match="TEAL's sparse FFN computes"):
        teal_activation(nn.Tanh())


def test_teal_opcheck(ops):
    p, t_in, t_down = case(3, torch.float32, gated=True, seed=5)
    t = lambda w: w.t().contiguous()  # noqa: E731
    args = (p["x"], t(p["w_in"]), t(p["w_up"]), p["w_out_t"], t_in, t_down, p["b_in"], p["b_up"], p["b_out"], 0, 1.0)
    torch.library.opcheck(torch.ops.actsparse.teal_ffn.default, args)
    torch.library.opcheck(torch.ops.actsparse.teal_ffn.default,
                          (p["x"], t(p["w_in"]), None, p["w_out_t"], t_in, t_down, None, None, None, 1, 0.5))


def test_teal_reference_has_gradients():
    p, t_in, t_down = case(2, torch.float32, gated=True, seed=4)
    w = p["w_in"].t().contiguous().requires_grad_()
    y = teal_ffn(p["x"], w, p["w_out_t"], t_in, t_down, w_up_t=p["w_up"].t().contiguous())  # routed to the reference
    y.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    # rows of zeroed inputs get no gradient: they took no part
    assert (w.grad[(p["x"].abs() <= t_in).all(0)] == 0).all()


# -- conversion ----------------------------------------------------------------------------------------

def _tiny(family, dtype):
    if family == "llama":
        return tiny_llama(dtype)
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=61, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    return transformers.GPT2LMHeadModel(config).to(dtype).eval()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["float64", "float32"])
def test_convert_teal_matches_hooked_model(family, dtype, tol):
    model = _tiny(family, dtype)
    _, prompt, dense, teal, want = sparsified(model, calibrate_teal, tol)
    converted = convert_to_sparse(model, inplace=False)
    layers = [m for m in converted.modules() if isinstance(m, TealFFN)]
    assert len(layers) == model.config.num_hidden_layers
    names = sorted(teal.thresholds)
    assert [(m.input_threshold, m.down_threshold) for m in layers] == \
        [(teal.thresholds[n]["input"], teal.thresholds[n]["down"]) for n in names]
    assert {m.activation for m in layers} == {"silu" if family == "llama" else "gelu_tanh"}
    with torch.no_grad():
        got = converted(prompt).logits
        rows = torch.cat([converted(prompt[i : i + 1, :1]).logits for i in range(2)])  # batch 1 routes
    assert (got - want).abs().max() <= tol * want.abs().max()
    assert (rows - want[:, :1]).abs().max() <= tol * want.abs().max()
    # greedy decoding produces the same tokens as the hooked model
    gen = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(converted.generate(prompt[:1], **gen), model.generate(prompt[:1], **gen))
    # inplace=False left the hooked model as it was; remove() restores it to dense
    assert all(teal_thresholds(s) is not None for s in _sites(model))
    teal.remove()
    assert all(teal_thresholds(s) is None for s in _sites(model))
    with torch.no_grad():
        assert torch.equal(model(prompt).logits, dense)


def _sites(model):
    from actsparse.plugins.sites import ffn_sites

    return ffn_sites(model)


def test_convert_teal_in_place_and_mixed_with_relu():
    """In place, with TEAL on some layers only: the others are ReLU and become SparseFFN layers."""
    from actsparse.plugins import swap_activation
    from actsparse.plugins.sparse_ffn import SparseFFN

    model = _tiny("llama", torch.float32)
    swap_activation(model, "relu", sites="model.layers.2.*")
    prompt = torch.randint(0, 61, (1, 10), generator=torch.Generator().manual_seed(3))
    install_teal(model, {f"model.layers.{i}.mlp": {"input": 0.5, "down": 0.01} for i in (0, 1)})
    with torch.no_grad():
        want = model(prompt).logits
        converted = convert_to_sparse(model)
        got = converted(prompt).logits
    assert converted is model
    kinds = [type(model.model.layers[i].mlp).__name__ for i in range(3)]
    assert kinds == ["TealFFN", "TealFFN", SparseFFN.__name__]
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_a_deep_copy_carries_teal_and_refuses_a_second_install():
    import copy

    model = tiny_llama(torch.float32)
    thresholds = {f"model.layers.{i}.mlp": {"input": 0.5, "down": 0.01} for i in range(3)}
    teal = install_teal(model, thresholds)
    twin = copy.deepcopy(model)
    assert [teal_thresholds(s) for s in _sites(twin)] == [thresholds[s.name] for s in _sites(twin)]
    with pytest.raises(RuntimeError, match="deep copy of a model carries"):
        install_teal(twin, thresholds)
    teal.remove()
    assert all(teal_thresholds(s) is None for s in _sites(model))
