"""SDR theory (Ahmad & Hawkins 2016) against direct combinatorial sums, the paper's own numbers
and a Monte Carlo simulation; the simulator's sampler; bad parameters."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from actsparse.plugins.dendrites import montecarlo as mc
from actsparse.plugins.dendrites import sdr


pytestmark = pytest.mark.usefixtures("one_thread")


# -- independent references -------------------------------------------------------------------

def fm_float64(n, a, s, theta):
    """Direct float64 sum of the hypergeometric tail (small n only)."""
    return sum(float(math.comb(s, b)) * float(math.comb(n - s, a - b)) for b in range(theta, min(s, a) + 1)) / float(math.comb(n, a))


def fm_fraction(n, a, s, theta) -> Fraction:
    """Exact value with Python big integers."""
    return Fraction(sum(math.comb(s, b) * math.comb(n - s, a - b) for b in range(theta, min(s, a) + 1)), math.comb(n, a))


def fm_brute_force(n, a, s, theta) -> Fraction:
    """Enumerate every pattern of a active cells against the segment on cells 0..s-1."""
    hits = sum(sum(c < s for c in pattern) >= theta for pattern in itertools.combinations(range(n), a))
    return Fraction(hits, math.comb(n, a))


SMALL = [(n, a, s, t) for n in (1, 5, 12, 30) for a in range(0, n + 1, max(1, n // 4))
         for s in range(0, n + 1, max(1, n // 3)) for t in range(0, s + 1, max(1, s // 3 or 1))]


def test_small_cases_match_float64_and_big_integer_sums():
    for n, a, s, t in SMALL:
        got = sdr.false_match_probability(n, a, s, t)
        exact = float(fm_fraction(n, a, s, t))
        assert got == pytest.approx(fm_float64(n, a, s, t), rel=1e-12, abs=1e-300), (n, a, s, t)
        assert got == pytest.approx(exact, rel=1e-12, abs=1e-300), (n, a, s, t)
        assert sdr.false_match_probability(n, a, s, t, method="exact") == exact


def test_brute_force_enumeration_and_overlap_sets():
    for n, a, s, t in [(8, 3, 4, 2), (9, 4, 3, 1), (7, 7, 2, 2), (10, 2, 5, 0)]:
        assert sdr.false_match_probability(n, a, s, t) == pytest.approx(float(fm_brute_force(n, a, s, t)), rel=1e-12)
        counts = [sum(sum(c < s for c in p) == b for p in itertools.combinations(range(n), a)) for b in range(a + 1)]
        assert [sdr.overlap_set_size(n, a, s, b) for b in range(a + 1)] == counts
    # Vandermonde: the overlap sets partition all C(n, a) patterns (exact big integers)
    assert sum(sdr.overlap_set_size(20_000, 200, 150, b) for b in range(151)) == math.comb(20_000, 200)
    assert math.exp(sdr.log_overlap_set_size(200, 20, 30, 7)) == pytest.approx(sdr.overlap_set_size(200, 20, 30, 7), rel=1e-11)


def test_vectorized_numpy_and_torch_in_arrays_out():
    thetas = np.arange(0, 25)
    grid = sdr.false_match_probability(np.array([[1000], [4000]]), 128, 24, thetas[None, :])
    assert isinstance(grid, np.ndarray) and grid.shape == (2, 25)
    for i, n in enumerate((1000, 4000)):
        for t in thetas:
            assert grid[i, t] == pytest.approx(float(fm_fraction(n, 128, 24, int(t))), rel=1e-9, abs=1e-300)
    tgrid = sdr.false_match_probability(torch.tensor([1000, 4000]), 128, 24, torch.tensor(12))
    assert isinstance(tgrid, torch.Tensor) and tgrid.dtype == torch.float64
    assert tgrid.tolist() == pytest.approx(grid[:, 12].tolist(), rel=1e-12)
    assert isinstance(sdr.false_match_probability(1000, 128, 24, 12), float)
    assert grid[0].tolist() == sorted(grid[0].tolist(), reverse=True)  # monotone in θ


def test_large_population_no_overflow_or_underflow():
    """n = 20,000, a = 200, s up to a: exact big-integer values > 1e-300 are reproduced."""
    n, a = 20_000, 200
    checked = 0
    for s in (1, 24, 64, 128, 200):
        for t in sorted({min(2, s), max(1, s // 8), max(1, s // 4), max(1, s // 2), s}):
            exact = fm_fraction(n, a, s, t)
            log_exact = math.log(exact.numerator) - math.log(exact.denominator)
            assert sdr.log_false_match_probability(n, a, s, t) == pytest.approx(log_exact, rel=1e-10, abs=1e-9)
            if log_exact > math.log(1e-300):
                got = sdr.false_match_probability(n, a, s, t)
                assert got > 0 and math.isfinite(got)
                assert got == pytest.approx(float(exact), rel=1e-8), (s, t)
                checked += 1
    assert checked >= 15
    # Far below 1e-308 the log stays exact: 200 of 200 synapses matched
    log_exact = -math.log(math.comb(n, a)) + math.log(math.comb(n - 200, 0))
    assert sdr.log_false_match_probability(n, a, 200, 200) == pytest.approx(log_exact, rel=1e-12)


def test_the_papers_numbers():
    """Values printed by the authors' notebooks/plot scripts (numenta nupic.research sdr_math,
    htmresearch sdr_paper)."""
    assert sdr.false_match_probability(10_000, 300, 24, 12) == pytest.approx(8.37584522709849e-13, rel=1e-9)
    assert sdr.false_match_probability(2000, 40, 20, 15) == pytest.approx(2.47192330943086582e-23, rel=1e-9)
    for s, ref in ((6, 6.35308872941916e-11), (8, 2.52507239284961e-14), (10, 1.00163216178113e-17)):  # Table 1B
        assert sdr.false_match_probability(100_000, 2000, s, s) == pytest.approx(ref, rel=1e-8)
    for t, m, ref in ((10, 2, 4.91541864813209e-9), (10, 6, 0.000158799793094937), (20, 6, 1.07990763941591e-7)):
        assert sdr.false_match_probability(100_000, 2000, 2 * m * t, t) == pytest.approx(ref, rel=1e-8)  # Table 1D
    # union figure: a=200, s=25, θ=15, M = 1..19 (sdr_paper_unions.py)
    n10000 = [5.30352419025194e-20, 2.35602184920806e-14, 1.53934243906984e-11, 1.10302867119927e-9,
              2.27921915526762e-8, 2.69253218125502e-7, 1.98072351729197e-6, 9.75307801058064e-6,
              3.98373263650013e-5, 0.000127080441383853]
    got = sdr.union_false_match_probability(10_000, 200, 25, 15, np.arange(1, 11))
    assert got.tolist() == pytest.approx(n10000, rel=1e-8)
    assert sdr.union_false_match_probability(1000, 200, 25, 15, 3) == pytest.approx(0.501650232353378, rel=1e-9)
    assert sdr.union_false_match_probability(20_000, 200, 25, 15, 19) == pytest.approx(8.14089056445047e-5, rel=1e-8)
    # noise figure: a=128, s=30, θ=12, noise = round(k·0.05·128)/128 (plot_noise_results.py); sympy's
    # evalf agrees with the exact value to ~1e-7 only, so compare at 1e-6
    fn12 = [7.92695349343630e-10, 2.16302525195240e-7, 1.09248135880715e-5, 0.000314435369055385,
            0.00279559866084888, 0.0198782675563797, 0.0716985160403564]
    noise = np.arange(4, 11) * 0.05
    assert sdr.false_negative_probability(128, 30, 12, noise).tolist() == pytest.approx(fn12, rel=1e-6)


def test_union_definitions():
    # s_eff = round(n(1 - (1 - s/n)^m)) substituted for s
    for n, a, s, t, m in [(1000, 40, 20, 10, 3), (20_000, 200, 25, 15, 7), (500, 100, 30, 5, 1)]:
        s_eff = sdr.union_synapse_count(n, s, m)
        assert s_eff == math.floor(n * (1 - (1 - s / n) ** m) + 0.5)
        assert sdr.union_false_match_probability(n, a, s, t, m) == pytest.approx(
            float(fm_fraction(n, a, s_eff, t)), rel=1e-9)
    # exact union-size distribution vs enumeration of all m-tuples of s-subsets of n = 6 cells
    n, s, m = 6, 2, 3
    subsets = list(itertools.combinations(range(n), s))
    counts = np.zeros(n + 1)
    for combo in itertools.product(subsets, repeat=m):
        counts[len(set().union(*combo))] += 1
    p = sdr.union_size_distribution(n, s, m)
    assert p.tolist() == pytest.approx((counts / counts.sum()).tolist(), abs=1e-12)
    big = sdr.union_size_distribution(20_000, 25, 19)
    assert big.sum() == pytest.approx(1.0, abs=1e-12)
    assert (np.arange(big.size) * big).sum() == pytest.approx(20_000 * (1 - (1 - 25 / 20_000) ** 19), rel=1e-10)


def test_noise_and_optimal_threshold():
    a, s = 40, 12
    for t in range(0, s + 1):
        for noise in (0.0, 0.1, 0.35, 0.5, 1.0):
            v = math.floor(noise * a + 0.5)
            exact_match = Fraction(sum(math.comb(s, b) * math.comb(a - s, v - b) for b in range(0, min(s - t, v) + 1)),
                                   math.comb(a, v))
            assert sdr.match_probability_with_noise(a, s, t, noise) == pytest.approx(float(exact_match), rel=1e-11, abs=1e-300)
            assert sdr.false_negative_probability(a, s, t, noise) == pytest.approx(float(1 - exact_match), rel=1e-9, abs=1e-15)
    assert sdr.match_probability_with_noise(a, s, s, 0.0) == 1.0
    # optimal θ: brute-force argmin of the exact total error
    n = 300
    for noise in (0.1, 0.3, 0.5):
        v = math.floor(noise * a + 0.5)
        totals = [fm_fraction(n, a, s, t) + 1 - Fraction(
            sum(math.comb(s, b) * math.comb(a - s, v - b) for b in range(0, min(s - t, v) + 1)), math.comb(a, v))
            for t in range(1, s + 1)]
        assert sdr.optimal_threshold(n, a, s, noise) == 1 + totals.index(min(totals))
    grid = sdr.optimal_threshold(n, a, s, np.array([0.1, 0.3, 0.5]))
    assert grid.tolist() == [sdr.optimal_threshold(n, a, s, x) for x in (0.1, 0.3, 0.5)]
    assert sdr.optimal_threshold(10_000, 128, 30, 0.3) == 8


@pytest.mark.parametrize("call, words", [
    (lambda: sdr.false_match_probability(100, 10, 5, 6), ["theta=6", "s=5"]),
    (lambda: sdr.false_match_probability(100, 10, 101, 6), ["s=101", "n=100"]),
    (lambda: sdr.false_match_probability(100, 101, 5, 2), ["a=101", "n=100"]),
    (lambda: sdr.false_match_probability(100, -1, 5, 2), ["a", ">= 0"]),
    (lambda: sdr.false_match_probability(100, 10, 5, 2.5), ["theta", "integer"]),
    (lambda: sdr.false_match_probability(100.5, 10, 5, 2), ["n", "integer"]),
    (lambda: sdr.false_match_probability(np.array([100, 5]), 10, 5, 2), ["a=10", "n=5"]),
    (lambda: sdr.union_false_match_probability(100, 10, 5, 2, 0), ["m", ">= 1"]),
    (lambda: sdr.match_probability_with_noise(10, 12, 2, 0.1), ["s=12", "a=10"]),
    (lambda: sdr.match_probability_with_noise(10, 5, 2, 1.5), ["noise", "[0, 1]"]),
    (lambda: sdr.false_match_probability(100, 10, 5, 2, method="float"), ["method"]),
    (lambda: sdr.false_match_probability(100, 10, np.array([5, 6]), 2, method="exact"), ["exact", "scalar"]),
    (lambda: mc.monte_carlo_false_match(100, 10, 5, 6, trials=10), ["theta=6", "s=5"]),
    (lambda: mc.random_sdrs(10, 5, 6), ["a=6", "n=5"]),
])
def test_bad_parameters_get_clear_errors(call, words):
    with pytest.raises(ValueError) as err:
        call()
    for word in words:
        assert word in str(err.value)


# -- Monte Carlo --------------------------------------------------------------------------------

def test_sampler_is_uniform_over_subsets():
    """All C(6, 3) = 20 patterns equally likely (chi-square, 19 dof, far below the 0.1% critical 43.8)."""
    x = mc.random_sdrs(40_000, 6, 3, torch.Generator().manual_seed(1))
    assert bool((x[:, 1:] > x[:, :-1]).all())
    codes = (x * torch.tensor([36, 6, 1])).sum(1)
    counts = torch.bincount(codes)[codes.unique()].double()
    assert counts.numel() == 20
    expected = 40_000 / 20
    assert float(((counts - expected) ** 2 / expected).sum()) < 43.8
    sparse = mc.random_sdrs(3000, 20_000, 200, torch.Generator().manual_seed(2))  # the redraw path
    assert sparse.shape == (3000, 200) and bool((sparse[:, 1:] > sparse[:, :-1]).all())
    assert abs(float(sparse.double().mean()) - 9999.5) < 100


def _check_histogram(hist, theory_for_theta, thetas, min_events=20, confidence=0.9999):
    """Every measurable θ's theory value inside the Monte Carlo interval (0.9999: ~20 θ per histogram)."""
    trials = int(hist.sum())
    checked = 0
    for t in thetas:
        p = theory_for_theta(t)
        if min(p, 1 - p) * trials < min_events:
            continue
        est = mc.Estimate(int(hist[t:].sum()), trials)
        assert est.contains(p, confidence), (t, p, est.p, est.interval(confidence))
        checked += 1
    return checked


def test_monte_carlo_false_match_agrees_with_theory():
    hist = mc.simulate_false_match_overlaps(1000, 40, 20, 200_000, seed=0)
    assert _check_histogram(hist, lambda t: sdr.false_match_probability(1000, 40, 20, t), range(21)) >= 5
    # full simulation: random stored and presented patterns, index-set intersections
    hist = mc.simulate_false_match_overlaps(500, 50, 20, 20_000, seed=3, fixed_pattern=False)
    assert _check_histogram(hist, lambda t: sdr.false_match_probability(500, 50, 20, t), range(21)) >= 5
    est = mc.monte_carlo_false_match(2000, 100, 30, 5, trials=50_000, seed=4)
    assert est.contains(sdr.false_match_probability(2000, 100, 30, 5))


def test_monte_carlo_union_agrees_with_exact_union_theory():
    n, a, s, m = 1000, 40, 20, 3
    hist = mc.simulate_false_match_overlaps(n, a, s, 300_000, m=m, seed=5)
    exact = lambda t: sdr.union_false_match_probability(n, a, s, t, m, union_size="distribution")  # noqa: E731
    assert _check_histogram(hist, exact, range(1, s + 1)) >= 6


@pytest.mark.slow
def test_monte_carlo_separates_the_papers_union_approximation():
    """The paper's rounded-mean union size (s_eff) is an approximation: with 2M trials its
    θ=5 value (0.0806) lies outside the 99.9% interval, the exact average (0.0798) inside."""
    n, a, s, m = 1000, 40, 20, 3
    est = mc.monte_carlo_union_false_match(n, a, s, 5, m, trials=2_000_000, seed=8)
    assert est.contains(sdr.union_false_match_probability(n, a, s, 5, m, union_size="distribution"))
    assert not est.contains(sdr.union_false_match_probability(n, a, s, 5, m))


def test_monte_carlo_noise_agrees_with_theory():
    for noise, fixed, trials in ((0.5, True, 100_000), (0.3, False, 10_000)):
        hist = mc.simulate_noise_overlaps(2000, 128, 30, noise, trials, seed=7, fixed_pattern=fixed)
        assert _check_histogram(hist, lambda t: sdr.match_probability_with_noise(128, 30, t, noise), range(31)) >= 4


def test_estimate_interval():
    est = mc.Estimate(50, 1000)
    lo, hi = est.interval(0.95)
    assert lo < 0.05 < hi and hi - lo == pytest.approx(0.0275, abs=0.002)
    assert mc.Estimate(0, 100).interval()[0] == 0.0
