"""CATS and TEAL on a tiny randomly initialized Hugging Face LLaMA (float64): the calibrated
sparsity, hand-written reference forwards, exact removal, and the errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from actsparse.evaluation.perplexity import perplexity
from actsparse.plugins import find_sites, record
from actsparse.plugins.training_free import (
    CATSActivation,
    calibrate_cats,
    calibrate_teal,
    collect_cats,
    collect_teal,
    install_cats,
    install_teal,
)

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: threads only contend

VOCAB = 61


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).double().eval()


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (6, 4, 17), generator=g)
    return [(t[:, :-1], t[:, 1:]) for t in tokens]


def logits(model, batches):
    with torch.no_grad():
        return torch.cat([model(x).logits for x, _ in batches])


def mlp_io(model, batches):
    """Every FFN site's input and output on ``batches``, from a forward hook on the MLP."""
    seen = {}
    hooks = [s.owner.register_forward_hook(lambda m, a, o, n=s.name: seen.setdefault(n, []).append((a[0], o)))
             for s in find_sites(model)]
    logits(model, batches)
    for h in hooks:
        h.remove()
    return {n: (torch.cat([a for a, _ in v]), torch.cat([o for _, o in v])) for n, v in seen.items()}


def silu(z):
    return z / (1 + torch.exp(-z))  # written out, not F.silu


def zeroed(v, t):
    return v * (v.abs() > t)


@pytest.mark.parametrize("target", [0.5, 0.8])
def test_cats_sparsity_and_reference(llama, batches, target):
    dense = logits(llama, batches)
    samples = collect_cats(llama, batches, max_values=None)
    # the thresholds are the target quantile of |SiLU(x W_gate^T)| on the calibration text
    first = find_sites(llama)[0]
    x0 = mlp_io(llama, batches)[first.name][0]
    a = silu(x0 @ first.owner.gate_proj.weight.T).abs().flatten()
    t = samples.thresholds(target)[first.name]["activation"]
    assert (a <= t).double().mean().item() == pytest.approx(target, abs=1 / a.numel())

    with install_cats(llama, samples.thresholds(target)) as cats:
        assert all(isinstance(s.activation, CATSActivation) for s in find_sites(llama))
        with record(llama, what="zero_fraction") as rec:
            logits(llama, batches)
        # layer 0 sees the dense input: exactly the target; later layers see sparsified inputs
        assert rec[first.name].zero_fraction == pytest.approx(target, abs=1e-3)
        assert rec.zero_fraction() == pytest.approx(target, abs=0.03)
        for name, (x, y) in mlp_io(llama, batches).items():
            mlp, thr = llama.get_submodule(name), cats.thresholds[name]["activation"]
            s = zeroed(silu(x @ mlp.gate_proj.weight.T), thr)
            ref = (s * (x @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T
            torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-12)
        assert not torch.equal(logits(llama, batches), dense)
    assert torch.equal(logits(llama, batches), dense)  # removal restores the model exactly
    assert not any(isinstance(s.activation, CATSActivation) for s in find_sites(llama))


@pytest.mark.parametrize("target", [0.5, 0.8])
def test_teal_sparsity_and_reference(llama, batches, target):
    dense = logits(llama, batches)
    samples = collect_teal(llama, batches, max_values=None)
    first = find_sites(llama)[0]
    x0 = mlp_io(llama, batches)[first.name][0]
    thr = samples.thresholds(target)
    assert (x0.abs() <= thr[first.name]["input"]).double().mean().item() == pytest.approx(target, abs=1 / x0.numel())
    with install_teal(llama, thr) as paper:  # the paper's one dense pass: x1 overshoots the target
        perplexity(llama, batches, sparsity=False)
        assert paper.input_sparsity("down") > target + 0.01

    teal = calibrate_teal(llama, batches, target, passes=2, max_values=None)
    assert teal.thresholds[first.name]["input"] == thr[first.name]["input"]  # layer 0's input is the dense one
    teal.reset_counts()
    with record(llama, what="zero_fraction") as rec:  # attached after TEAL: still sees the sparsified x1
        logits(llama, batches)
    assert teal.input_sparsity("input") == pytest.approx(target, abs=0.02)
    assert rec.zero_fraction() == pytest.approx(teal.input_sparsity("down"), abs=1e-12)
    assert rec[first.name].zero_fraction == pytest.approx(target, abs=1e-3)
    assert rec.zero_fraction() == pytest.approx(target, abs=0.02)
    for name, (x, y) in mlp_io(llama, batches).items():
        mlp, t = llama.get_submodule(name), teal.thresholds[name]
        xs = zeroed(x, t["input"])
        x1 = zeroed(silu(xs @ mlp.gate_proj.weight.T) * (xs @ mlp.up_proj.weight.T), t["down"])
        torch.testing.assert_close(y, x1 @ mlp.down_proj.weight.T, rtol=1e-10, atol=1e-12)
    teal.remove()
    assert torch.equal(logits(llama, batches), dense)
    assert all(not s.down._forward_pre_hooks and not s.inputs[0]._forward_pre_hooks for s in find_sites(llama))


def test_one_pass_serves_every_sparsity(llama, batches):
    samples = collect_cats(llama, batches)
    lo, hi = samples.thresholds(0.5), samples.thresholds(0.9)
    assert all(lo[n]["activation"] < hi[n]["activation"] for n in lo)
    assert all(t["activation"] == 0.0 for t in samples.thresholds(0.0).values())
    measured = []
    for s in (0.5, 0.9):
        with install_cats(llama, samples.thresholds(s)):
            measured.append(perplexity(llama, batches).sparsity)
    assert measured[0] < measured[1]


def test_calibrate_and_padding(llama, batches):
    """A dict batch's padded positions are left out of calibration: right-padding a batch (the
    model is causal) leaves the thresholds of its real tokens unchanged."""
    x = torch.cat([b[0] for b in batches])
    plain = collect_cats(llama, [x], max_values=None).thresholds(0.6)
    padded = torch.cat([x, torch.zeros(x.shape[0], 5, dtype=x.dtype)], 1)
    mask = torch.cat([torch.ones_like(x), torch.zeros(x.shape[0], 5, dtype=x.dtype)], 1)
    masked = collect_cats(llama, [{"input_ids": padded, "attention_mask": mask}], max_values=None).thresholds(0.6)
    for name in plain:
        assert masked[name]["activation"] == pytest.approx(plain[name]["activation"], rel=1e-9)
    with calibrate_teal(llama, batches, 0.7) as teal:
        assert set(teal.thresholds) == {s.name for s in find_sites(llama)}
    with calibrate_cats(llama, batches, 0.7, sites="model.layers.1.*") as cats:
        assert list(cats.thresholds) == ["model.layers.1.mlp"]
        assert isinstance(llama.model.layers[1].mlp.act_fn, CATSActivation)
        assert not isinstance(llama.model.layers[0].mlp.act_fn, CATSActivation)


def test_bad_input(llama, batches):
    samples, teal = collect_cats(llama, batches), collect_teal(llama, batches).thresholds(0.5)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        samples.thresholds(1.0)
    with install_cats(llama, samples.thresholds(0.5)):
        with pytest.raises(RuntimeError, match="already has a training-free sparsifier"):
            install_teal(llama, teal)
    with pytest.raises(ValueError, match="No CATS thresholds"):
        install_cats(llama, {})
    with install_teal(llama, teal):
        with pytest.raises(RuntimeError, match="remove\\(\\) it before"):
            install_cats(llama, samples.thresholds(0.5))
    with pytest.raises(KeyError, match="does not have"):
        install_cats(llama, {"model.layers.9.mlp": {"activation": 0.1}})
    with pytest.raises(KeyError, match="No TEAL threshold"):
        install_teal(llama, {"model.layers.0.mlp": {"input": 0.1}})
    mlp = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="bare activation"):
        collect_cats(mlp, [torch.randn(3, 4)])
