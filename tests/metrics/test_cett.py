"""CETT, thresholds, truncation and activation sparsity against independent float64 references."""


import numpy as np
import pytest
import torch
from torch import nn

from actsparse.evaluation import truncate
from actsparse.metrics import CETT, ActivationRatio, ActivationSparsity
from actsparse.metrics.functional import activation_ratio, cett, threshold_for_cett
from actsparse.models import TinyLM
from actsparse.plugins.sites import NoSitesError, find_sites


def reference_cett(x1: np.ndarray, w: np.ndarray, eps: float) -> float:
    """Explicit loops in float64: per token, sum the weak neurons' output vectors."""
    x1, w = x1.astype(np.float64), w.astype(np.float64)
    norms = np.sqrt((w**2).sum(0))
    total = 0.0
    for x in x1:
        tail = np.zeros(w.shape[0])
        y = np.zeros(w.shape[0])
        for i in range(x.shape[0]):
            n_i = x[i] * w[:, i]
            y += n_i
            if abs(x[i]) * norms[i] <= eps:  # weak: at or below the threshold (the one rule)
                tail += n_i
        ny = np.linalg.norm(y)
        total += np.linalg.norm(tail) / ny if ny > 0 else 0.0
    return total / x1.shape[0]


def random_ffn(tokens=40, f=24, d=12, seed=0, relu=True):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(tokens, f, generator=g, dtype=torch.float64)
    if relu:
        x1 = x1.clamp_min(0) * torch.randn(tokens, f, generator=g, dtype=torch.float64)
    w = torch.randn(d, f, generator=g, dtype=torch.float64)
    return x1, w


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", [0, 1])
def test_cett_matches_the_loop_reference(dtype, seed):
    x1, w = random_ffn(seed=seed)
    importance = (x1.abs() * w.norm(dim=0)).flatten().sort().values
    # thresholds halfway between importance values: no ties whatever the precision
    for q in (0.1, 0.4, 0.7, 0.95):
        k = int(q * importance.numel())
        eps = float(0.5 * (importance[k] + importance[k + 1]))
        ref = reference_cett(x1.numpy(), w.numpy(), eps)
        got = cett(x1.to(dtype), w.to(dtype), eps)
        assert got.dim() == 0 and got.dtype == dtype
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        assert float(got) == pytest.approx(ref, rel=tol, abs=tol)
    assert float(cett(x1, w, 0.0)) == 0.0
    assert float(cett(x1, w, float("inf"))) == pytest.approx(1.0, rel=1e-12)


def test_cett_of_leading_dims_flattens_tokens_and_rejects_transposed_weights():
    x1, w = random_ffn(tokens=12)
    assert float(cett(x1.view(3, 4, -1), w, 1.0)) == pytest.approx(float(cett(x1, w, 1.0)), rel=1e-12)
    with pytest.raises(ValueError, match="nn.Linear layout"):
        cett(x1, w.t(), 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        cett(x1, w, -1.0)


@pytest.mark.parametrize("target", [0.0, 0.05, 0.2, 0.5, 0.9, 1.0])
def test_threshold_for_cett_hits_its_target(target):
    x1, w = random_ffn(tokens=30, seed=3)
    eps = float(threshold_for_cett(x1, w, target))
    importance = np.unique((x1.abs() * w.norm(dim=0)).numpy())
    reached = reference_cett(x1.numpy(), w.numpy(), eps)
    assert reached >= target - 1e-12
    below = np.unique(np.r_[0.0, importance])
    below = below[below < eps]
    if target > 0 and below.size:  # the next smaller candidate threshold misses the target
        assert reference_cett(x1.numpy(), w.numpy(), float(below[-1])) < target


def test_threshold_for_cett_vectorized_equals_one_by_one_and_float32_agrees():
    x1, w = random_ffn(tokens=30, seed=4)
    targets = [0.1, 0.3, 0.6]
    many = threshold_for_cett(x1, w, targets)
    assert many.shape == (3,)
    for t, e in zip(targets, many):
        assert float(threshold_for_cett(x1, w, t)) == float(e)
    f32 = threshold_for_cett(x1.float(), w.float(), targets, dtype=torch.float32)
    assert torch.allclose(f32, many, rtol=1e-5)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_cett_target_outside_unit_interval_is_an_error(bad):
    x1, w = random_ffn()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        threshold_for_cett(x1, w, bad)


def test_truncate_equals_a_hand_masked_ffn_and_counts_dropped_neurons():
    torch.manual_seed(0)
    lm = TinyLM(d_model=16, n_layers=2, n_heads=2, activation="relu").double()
    for p in lm.parameters():
        nn.init.normal_(p, std=0.3)
    x = torch.randint(0, 256, (2, 8))
    sites = find_sites(lm)
    eps = {"blocks.0.ffn": 0.5, "blocks.1.ffn": 1.0}
    counts = {}
    with truncate(lm, eps, counts=counts):
        got = lm(x)

    dropped = {}

    def masked(block_ffn, name):
        def forward(h):
            x1 = block_ffn.act(block_ffn.gate(h)) * block_ffn.up(h)
            weak = x1.abs() * block_ffn.down.weight.norm(dim=0) <= eps[name]
            dropped[name] = (int(weak.sum()), weak.numel())
            return block_ffn.down(x1 * ~weak)
        return forward

    for s in sites:
        s.owner.forward = masked(s.owner, s.name)
    want = lm(x)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    for name, (d, n) in dropped.items():
        assert counts[name][0].tolist() == [d] and counts[name][1].tolist() == [n]
    assert 0 < dropped["blocks.0.ffn"][0] < dropped["blocks.0.ffn"][1]


def test_truncate_takes_a_float_threshold_at_float64_precision():
    """A threshold that is one of the importance values drops exactly the entries at or below it
    (the float64 counting rule), also when passed as a Python float to a float64 model."""
    torch.manual_seed(0)
    lm = TinyLM(d_model=16, n_layers=1, n_heads=2, activation="relu").double()
    x = torch.randint(0, 256, (2, 8))
    site = find_sites(lm)[0]
    rows = []
    handle = site.register_hook(lambda s, t: rows.append(t.detach().reshape(-1, t.shape[-1])))
    lm(x)
    handle.remove()
    imp = rows[0].abs() * site.w_down.detach().norm(dim=0)
    values = imp[imp > 0].sort().values
    eps = next(float(v) for v in values if float(v) != float(v.float()))  # not a float32 number
    want = int((imp <= eps).sum())
    for given in (eps, torch.tensor([eps], dtype=torch.float64)):
        counts = {}
        with truncate(lm, {site.name: given}, counts=counts):
            lm(x)
        assert int(counts[site.name][0][0]) == want


def test_truncate_with_k_thresholds_runs_k_replicas():
    torch.manual_seed(0)
    lm = TinyLM(d_model=16, n_layers=1, n_heads=2, activation="relu")
    x = torch.randint(0, 256, (2, 8))
    outs = []
    for e in (0.0, 0.05):
        with truncate(lm, {"blocks.0.ffn": e}):
            outs.append(lm(x))
    with truncate(lm, {"blocks.0.ffn": torch.tensor([0.0, 0.05])}):
        both = lm(x.repeat(2, 1))
    assert torch.allclose(both, torch.cat(outs), atol=1e-6)
    assert not torch.allclose(outs[0], outs[1])


def test_models_without_ffn_sites_are_named():
    with pytest.raises(NoSitesError, match="down projection"):
        with truncate(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), {}):
            pass
    with pytest.raises(NoSitesError, match="No activation sites"):
        with truncate(nn.Sequential(nn.Linear(3, 4)), {}):
            pass


def test_activation_ratio_and_metrics_equal_hand_counts():
    g = torch.Generator().manual_seed(0)
    a = torch.relu(torch.randn(5, 7, generator=g))
    b = torch.relu(torch.randn(3, 2, 7, generator=g))
    zeros_a, zeros_b = int((a == 0).sum()), int((b == 0).sum())
    assert float(activation_ratio(a)) == pytest.approx(1 - zeros_a / a.numel())
    m, r = ActivationSparsity(["a", "b"]), ActivationRatio(["a", "b"])
    for metric in (m, r):
        metric.update(a[:2], name="a")
        metric.update({"a": a[2:], "b": b})
    out, ratio = m.compute(), r.compute()
    assert float(out["a"]) == pytest.approx(zeros_a / a.numel())
    assert float(out["b"]) == pytest.approx(zeros_b / b.numel())
    assert float(out["mean"]) == pytest.approx((zeros_a + zeros_b) / (a.numel() + b.numel()))
    assert float(ratio["mean"]) == pytest.approx(1 - float(out["mean"]))
    with pytest.raises(KeyError, match="Unknown stream"):
        m.update(a, name="c")


def test_activation_sparsity_watches_a_model_through_its_sites():
    torch.manual_seed(0)
    lm = TinyLM(d_model=16, n_layers=2, n_heads=2, activation="relu")
    metric = ActivationSparsity.for_model(lm)
    x = torch.randint(0, 256, (2, 8))
    seen = {}
    hooks = [s.register_hook(lambda s, t: seen.__setitem__(s.name, t.detach().clone())) for s in find_sites(lm)]
    with metric.watch(lm):
        lm(x)
    for h in hooks:
        h.remove()
    out = metric.compute()
    for name, t in seen.items():
        assert float(out[name]) == pytest.approx(float((t == 0).float().mean()))



def test_cett_metric_streams_the_functional_mean():
    x1, w = random_ffn(tokens=30, seed=5)
    metric = CETT(threshold=0.7)
    for part in (x1[:7], x1[7:20], x1[20:]):
        metric.update(part, w)
    assert float(metric.compute()) == pytest.approx(float(cett(x1, w, 0.7)), rel=1e-12)
    assert float(metric.compute()) == pytest.approx(reference_cett(x1.numpy(), w.numpy(), 0.7), rel=1e-12)
