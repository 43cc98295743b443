"""The public pieces of PPL-p% sparsity against independent references: the CETT calibration of
actsparse.metrics.functional.cett (float64 brute force, the bisection of threshold_for_cett), the
bracketing search (closed-form crossings) and the data passes (plain float64 losses)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from actsparse.evaluation import BracketSearch, causal_lm_loss, dense_pass, prepare_model, truncate, truncated_pass
from actsparse.evaluation.bracket_search import accepted, power_law, solve_increasing
from actsparse.metrics.functional import (bisect_thresholds, calibrate_thresholds, candidate_values, cett_curve,
                                          cett_rows, check_cett_targets, per_token_cett, threshold_for_cett)
from actsparse.models import TinyLM
from actsparse.plugins import ffn_sites


def brute_cett(x1: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """Per-token CETT in float64 from the definition: weak = |x_i|·‖W[:, i]‖ <= eps."""
    x1, w = x1.astype(np.float64), w.astype(np.float64)
    weak = np.abs(x1) * np.sqrt((w**2).sum(0)) <= eps
    y = np.linalg.norm(x1 @ w.T, axis=1)
    tail = np.linalg.norm((x1 * weak) @ w.T, axis=1)
    return np.where(y > 0, tail / np.where(y > 0, y, 1.0), 0.0)


def relu_ffn(tokens=300, f=32, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.relu(torch.randn(tokens, f, generator=g, dtype=torch.float64)) * torch.randn(tokens, f, generator=g,
                                                                                          dtype=torch.float64)
    x1[3] = 0.0  # a token with no output: CETT 0, not 0/0
    return x1, torch.randn(d, f, generator=g, dtype=torch.float64)


def test_per_token_cett_equals_the_definition():
    x1, w = relu_ffn()
    rows = cett_rows(x1, w, torch.float64)
    eps = torch.tensor([0.0, 0.3, 1.0, float("inf")], dtype=torch.float64)
    got = per_token_cett(rows, eps)
    for k, e in enumerate(eps.tolist()):
        np.testing.assert_allclose(got[k].numpy(), brute_cett(x1.numpy(), w.numpy(), e), rtol=1e-12, atol=1e-14)
    assert float(got[-1, 3]) == 0.0


@pytest.mark.parametrize("chunk_pairs", [1 << 22, 7])
@pytest.mark.parametrize("bracket", [(0.0, float("inf")), (0.2, 0.9), (0.5, 0.5)])
def test_cett_curve_is_the_mean_cett_at_every_value_in_the_bracket(bracket, chunk_pairs):
    x1, w = relu_ffn()
    lo, hi = bracket
    curve = cett_curve(cett_rows(x1, w, torch.float64), lo, hi, chunk_pairs)
    imp = (x1.abs() * w.norm(dim=0)).numpy()
    inside = np.unique(imp[(imp > lo) & (imp <= hi)])
    assert curve.values.tolist() == inside.tolist()
    assert curve.c_lo == pytest.approx(brute_cett(x1.numpy(), w.numpy(), lo).mean(), rel=1e-10, abs=1e-14)
    ref = [brute_cett(x1.numpy(), w.numpy(), v).mean() for v in inside[:: max(1, len(inside) // 40)]]
    np.testing.assert_allclose(curve.cett.numpy()[:: max(1, len(inside) // 40)], ref, rtol=1e-9, atol=1e-12)


def test_curve_thresholds_equal_the_bisection_and_say_when_the_crossing_is_outside():
    x1, w = relu_ffn(seed=1)
    rows = cett_rows(x1, w, torch.float64)
    full = cett_curve(rows, 0.0, float("inf"))
    targets = [0.0, 1e-4, 0.01, 0.1, 0.37, 0.8, 0.999]
    ref = threshold_for_cett(x1, w, targets).tolist()
    assert [full.threshold(t) for t in targets] == pytest.approx(ref, rel=1e-12)
    part = cett_curve(rows, ref[2], ref[4])  # crossings of 0.1 and 0.37 inside; 0.01 at lo, 0.8 above
    assert part.threshold(0.1) == pytest.approx(ref[3], rel=1e-12)
    assert part.threshold(0.37) == pytest.approx(ref[4], rel=1e-12)
    assert part.threshold(0.01) is None and part.threshold(0.8) is None and part.threshold(0.0) is None


def test_bisect_thresholds_reuses_values_and_memo_without_changing_results():
    x1, w = relu_ffn(seed=2)
    rows = cett_rows(x1, w, torch.float64)
    values, memo = candidate_values(rows.importance), {}
    first = bisect_thresholds(rows, check_cett_targets([0.2, 0.6]), values=values, memo=memo)
    evaluated = len(memo)
    second = bisect_thresholds(rows, check_cett_targets([0.21]), values=values, memo=memo)
    assert len(memo) - evaluated < evaluated  # the warm start needs fewer new evaluations
    fresh = threshold_for_cett(x1, w, [0.2, 0.6, 0.21]).tolist()
    assert first.tolist() + second.tolist() == fresh
    # the defining property, on the float64 brute force
    imp = np.unique((x1.abs() * w.norm(dim=0)).numpy())
    for t, e in zip([0.2, 0.6, 0.21], fresh):
        assert brute_cett(x1.numpy(), w.numpy(), e).mean() >= t
        assert brute_cett(x1.numpy(), w.numpy(), imp[imp < e].max()).mean() < t


@pytest.mark.parametrize("tokens", [500, 5000])  # the bisection on all rows; the subsample bracket + curve
def test_calibrate_thresholds_equals_the_bisection_on_all_rows(tokens):
    x1, w = relu_ffn(tokens=tokens, seed=3)
    targets = [0.0, 0.02, 0.15, 0.5, 0.95]
    got = calibrate_thresholds(x1, w, targets)
    assert got.dtype == torch.float64 and got.tolist() == pytest.approx(threshold_for_cett(x1, w, targets).tolist(),
                                                                        rel=1e-12)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        calibrate_thresholds(x1, w, [-0.1])


def test_check_cett_targets_names_the_range():
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        check_cett_targets([0.5, 1.5])


# -- the bracketing search --------------------------------------------------------------------

def test_power_law_reproduces_a_power_law_and_solve_finds_its_crossing():
    pts = [(0.1, 2.0 * 0.1**3), (0.2, 2.0 * 0.2**3)]
    for t in (0.05, 0.15, 0.4):
        assert power_law(pts, t) == pytest.approx(2.0 * t**3, rel=1e-12)
    root = solve_increasing(lambda t: 2.0 * t**3, 0.01, 0.0, 1.0)
    assert root == pytest.approx((0.01 / 2.0) ** (1 / 3), rel=1e-12)
    assert accepted(math.log1p(0.01), 1.0) and not accepted(math.log1p(0.0101), 1.0)


@pytest.mark.parametrize("scale,gamma", [(0.3, 2.0), (5.0, 1.3), (0.05, 4.0)])
def test_search_brackets_the_closed_form_crossing_in_few_passes(scale, gamma):
    limit = math.log1p(1 / 100)
    crossing = (limit / scale) ** (1 / gamma)
    passes = []

    def evaluate(targets):
        passes.append(len(targets))
        return [scale * t**gamma for t in targets]

    search = BracketSearch(evaluate, 1.0, 1e-3, max_k=1)
    search.run(max_rounds=40)
    assert search.closed() and search.lo <= crossing <= search.hi and search.hi - search.lo <= 1e-3
    assert len(passes) < math.ceil(math.log2(1 / 1e-3))  # fewer than a bisection's 10 passes


def test_search_warns_when_its_passes_run_out():
    search = BracketSearch(lambda ts: [0.3 * t**2 for t in ts], 1.0, 1e-6, max_k=1)
    search.run(max_rounds=1)
    with pytest.warns(UserWarning, match="max_passes=1"):
        search.warn_if_open("ppl_p_sparsity", 1)


# -- the data passes --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lm_and_batches():
    torch.manual_seed(0)
    lm = TinyLM(d_model=32, n_layers=2, n_heads=2, activation="relu").double().eval()
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(3):
        x = torch.randint(0, 256, (2, 17), generator=g)
        y = x[:, 1:].clone()
        y[1, 9:] = -100  # pads at the end of the second row
        batches.append((x[:, :-1], y))
    return lm, batches


def _loss_sum(lm, batches):
    return sum(float(F.cross_entropy(lm(x).flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum"))
               for x, y in batches)


@torch.no_grad()
def test_dense_pass_records_real_tokens_and_the_dense_loss(lm_and_batches):
    lm, batches = lm_and_batches
    sites = ffn_sites(lm)
    got = dense_pass(lm, sites, batches, causal_lm_loss, None, None, torch.Generator().manual_seed(0))
    # causal_lm_loss takes the cross-entropy of float32 logits: float32 per token
    assert float(got.loss_sum[0]) == pytest.approx(_loss_sum(lm, batches), rel=1e-6)
    real = sum(int((y != -100).sum()) for _, y in batches)
    assert got.tokens == real
    seen = {}
    hooks = [s.register_hook(lambda s, t: seen.setdefault(s.name, []).append(t.detach().clone())) for s in sites]
    for x, _ in batches:
        lm(x)
    for h in hooks:
        h.remove()
    for s in sites:
        ref = torch.cat([t.reshape(-1, t.shape[-1])[(y != -100).reshape(-1)] for t, (_, y) in zip(seen[s.name], batches)])
        assert torch.equal(got.rows[s.name], ref)
        assert got.zero_counts[s.name].tolist() == [float((ref == 0).sum()), float(ref.numel())]


@torch.no_grad()
def test_truncated_pass_scores_k_settings_as_k_separate_truncations(lm_and_batches):
    lm, batches = lm_and_batches
    prep = prepare_model(lm, batches, calibration_dtype=torch.float64)
    settings = prep.calib.thresholds([0.05, 0.2])
    loss, counts = truncated_pass(prep, settings)
    assert prep.dense_loss == pytest.approx(_loss_sum(lm, batches) / prep.total_tokens, rel=1e-6)
    for k, setting in enumerate(settings):
        with truncate(lm, setting, prep.sites):
            assert float(loss[k]) == pytest.approx(_loss_sum(lm, batches), rel=1e-6)
    assert set(counts) == {s.name for s in prep.sites}
    for c in counts.values():
        assert c.shape == (2, 2) and bool((c[0, 0] <= c[0, 1]) & (c[1] == c[1, 0]).all())
