"""Dual activations (the consistent ``opt2``/``optimal_<d>`` of issue 25 too), deep NNGP/NTK kernels,
the comparison classifiers and the regime measurement (issue 15, DESIGN §4), each checked against an independent formula, a direct loop or Monte Carlo."""

import math
import warnings

import mpmath
import numpy as np
import pytest
import torch
from scipy.stats import dirichlet

from actsparse.data.ntk_sphere import DirichletSphere
from actsparse.plugins.ntk.classifiers import (
    SingularKernelError,
    kernel_regression,
    majority_vote_predict,
    nearest_neighbor_predict,
    singular_kernel_predict,
    solve_gram,
)
from actsparse.plugins.ntk.duals import available_duals, dual_activation, hermite_dual, register_dual
from actsparse.plugins.ntk.kernels import (
    KernelDepthOverflow,
    LogKernel,
    kernel_path,
    kernel_profiles,
    nngp_kernel,
    ntk_kernel,
    sphere_gram,
)
from actsparse.plugins.ntk.optimal import default_degree, optimal_coefficient, optimal_dual
from actsparse.plugins.ntk.regimes import authors_kind, regime_agreement

NAMES = ["relu", "erf", "sine_1", "sine_2.676", "sine_13.8258", "opt3", "opt5", "opt9", "hermite_0", "hermite_1",
         "hermite_2", "hermite_5"]
F64 = torch.float64


def grid(n=41):
    return torch.linspace(-1, 1, n, dtype=F64)


@pytest.mark.parametrize("name", NAMES)
def test_dual_is_one_at_one_and_its_derivative_matches_finite_differences(name):
    dual = dual_activation(name)
    assert float(dual(torch.tensor(1.0, dtype=F64))) == pytest.approx(1.0, abs=1e-14)
    xi = torch.linspace(-0.99, 0.99, 23, dtype=F64)
    h = 1e-6
    numeric = (dual(xi + h) - dual(xi - h)) / (2 * h)
    assert torch.allclose(dual.derivative(xi), numeric, rtol=1e-6, atol=1e-7)
    ends = dual(torch.tensor([-1.0, 1.0], dtype=F64)), dual.derivative(torch.tensor([-1.0, 1.0], dtype=F64))
    assert all(torch.isfinite(e).all() for e in ends)


def test_relu_dual_is_the_arc_cosine_kernel():
    # Cho & Saul's first-order arc-cosine kernel, written in the angle: (sin t + (pi - t) cos t) / pi,
    # for sqrt(2)*relu (its E[phi(u)^2] = 1).
    theta = torch.linspace(0, math.pi, 50, dtype=F64)
    expected = (torch.sin(theta) + (math.pi - theta) * torch.cos(theta)) / math.pi
    assert torch.allclose(dual_activation("relu")(torch.cos(theta)), expected, atol=1e-14)
    assert dual_activation("relu").regime() == "majority vote"


def gaussian_pairs(rho, n, seed):
    g = torch.Generator().manual_seed(seed)
    u, w = torch.randn(2, n, generator=g, dtype=F64)
    return u, rho * u + math.sqrt(1 - rho * rho) * w


MC_ACTIVATIONS = ["relu", "erf", "sine_2.676", "opt3", "opt5", "opt9", "hermite_4", [0.3, -0.5, 0.1, math.sqrt(0.65)]]


@pytest.mark.parametrize("activation", MC_ACTIVATIONS)
def test_dual_is_the_gaussian_expectation_of_the_activation(activation, samples=60_000):
    """a(rho) = E[phi(u) phi(v)], (u, v) standard Gaussians with correlation rho (Monte Carlo)."""
    dual = dual_activation(activation)
    for i, rho in enumerate([-0.7, 0.0, 0.4, 0.9]):
        u, v = gaussian_pairs(rho, samples, seed=i)
        prod = dual.activation(u) * dual.activation(v)
        se = float(prod.std()) / math.sqrt(prod.numel())
        assert abs(float(prod.mean()) - float(dual(torch.tensor(rho, dtype=F64)))) < 5 * se + 1e-3, (rho, se)


@pytest.mark.slow
@pytest.mark.parametrize("activation", MC_ACTIVATIONS)
def test_dual_is_the_gaussian_expectation_of_the_activation_tightly(activation):
    test_dual_is_the_gaussian_expectation_of_the_activation(activation, samples=1_000_000)


def test_hermite_dual_is_the_sum_of_squared_coefficients():
    coeffs = [0.1, -0.2, 0.3, 0.0, 0.5]
    coeffs = [c / math.sqrt(sum(x * x for x in coeffs)) for c in coeffs]
    xi = grid()
    expected = sum(c * c * xi ** i for i, c in enumerate(coeffs))
    assert torch.allclose(dual_activation(coeffs)(xi), expected, atol=1e-15)
    assert torch.allclose(dual_activation("opt9")(xi), xi ** 3 / 16 + 7 * xi ** 2 / 8 + xi / 16, atol=1e-15)
    assert torch.allclose(dual_activation("hermite_3")(xi), xi ** 3)


def direct_loop(dual, xi, depth):
    """The recursions of DESIGN §4 as written, in float64 values."""
    sigma, k = xi.clone(), xi.clone()
    for _ in range(depth):
        a = dual(sigma)
        k = a + k * dual.derivative(sigma)
        sigma = a
    return sigma, k


@pytest.mark.parametrize("name", ["relu", "erf", "sine_2.676", "opt3", "opt5", "opt9", "hermite_2"])
def test_depth_recursions_match_a_direct_float64_loop(name):
    dual = dual_activation(name)
    xi = torch.rand(5, 7, generator=torch.Generator().manual_seed(0), dtype=F64) * 2 - 1  # any batch shape
    for depth in (0, 1, 2, 5, 12):
        sigma, k = direct_loop(dual, xi, depth)
        assert torch.allclose(nngp_kernel(xi, depth, name), sigma, rtol=1e-10, atol=1e-13)
        assert torch.allclose(ntk_kernel(xi, depth, name), k, rtol=1e-10, atol=1e-12)
        diag = direct_loop(dual, torch.ones(1, dtype=F64), depth)[1]
        assert torch.allclose(ntk_kernel(xi, depth, name, normalize=True), k / diag, rtol=1e-10, atol=1e-13)
    many = dict(kernel_path(xi, [3, 1, 12], name, kind="nngp"))  # one pass, several depths
    assert sorted(many) == [1, 3, 12]
    assert torch.allclose(many[3].value(), nngp_kernel(xi, 3, name))


def test_relu_ntk_closed_form_one_layer():
    xi = grid()
    theta = torch.arccos(xi)
    arc0 = (math.pi - theta) / math.pi  # dual of sqrt(2) * step: the derivative kernel
    arc1 = (torch.sin(theta) + (math.pi - theta) * xi) / math.pi
    assert torch.allclose(ntk_kernel(xi, 1, "relu"), arc1 + xi * arc0, atol=1e-14)


@pytest.mark.parametrize("name", ["opt9", "sine_6.13539", "erf"])
def test_deep_entries_far_below_float64_keep_their_exact_logarithm(name):
    """Off-diagonal entries decay like a'(0)^L, past 1e-308; the log-domain recursion keeps them
    (reference: the same recursion in 60-digit mpmath arithmetic, whose exponent range is unbounded)."""
    mpmath.mp.dps = 60
    depth = 400
    xi_values = [0.3, 0.9, 0.999]
    path = dict(kernel_path(torch.tensor(xi_values, dtype=F64), [depth], name, kind="ntk"))[depth]
    nngp = dict(kernel_path(torch.tensor(xi_values, dtype=F64), [depth], name, kind="nngp"))[depth]
    if name == "opt9":
        f = lambda s: s ** 3 / 16 + 7 * s ** 2 / 8 + s / 16
        df = lambda s: 3 * s ** 2 / 16 + 7 * s / 4 + mpmath.mpf(1) / 16
    elif name == "erf":
        f = lambda s: mpmath.asin(2 * s / 3) / mpmath.asin(mpmath.mpf(2) / 3)
        df = lambda s: (mpmath.mpf(2) / 3) / mpmath.sqrt(1 - 4 * s ** 2 / 9) / mpmath.asin(mpmath.mpf(2) / 3)
    else:
        a = mpmath.mpf("6.13539")
        f = lambda s: mpmath.sinh(a * s) / mpmath.sinh(a)
        df = lambda s: a * mpmath.cosh(a * s) / mpmath.sinh(a)
    for j, x in enumerate(xi_values):
        s, k, c = mpmath.mpf(x), mpmath.mpf(x), mpmath.mpf(1)
        for _ in range(depth):
            s, k, c = f(s), f(s) + k * df(s), 1 + c * df(mpmath.mpf(1))
        assert float(nngp.logabs[j]) == pytest.approx(float(mpmath.log(s)), rel=1e-9)
        assert float(path.logabs[j]) == pytest.approx(float(mpmath.log(k / c)), rel=1e-9)
    assert float(path.logabs.max()) < -200 if name == "opt9" else True


def test_monomial_duals_report_when_their_log_magnitudes_leave_float64():
    """hermite_2: log|Sigma^L| = 2^L log|xi| leaves float64 after ~1024 layers (1-NN is reached by ~20)."""
    xi = torch.tensor([0.5, 0.9, 1.0], dtype=F64)
    assert torch.isfinite(dict(kernel_path(xi, [1000], "hermite_2"))[1000].logabs[:2]).all()
    with pytest.raises(KernelDepthOverflow, match="hermite_2.*overflows float64.*1-NN") as err:
        ntk_kernel(xi, 1100, "hermite_2", normalize=True)
    assert 1000 <= err.value.depth < 1100
    assert sorted(kernel_profiles([10, 1100], "hermite_2", grid_size=256, allow_overflow=True)) == [10]


@pytest.mark.parametrize("name", ["relu", "erf", "sine_13.8258", "opt3", "opt5", "opt9"])
def test_thousands_of_layers_stay_finite_with_unit_diagonal(name):
    xi = torch.tensor([-1.0, -0.5, 0.0, 0.5, 0.999, 1.0], dtype=F64)
    k = ntk_kernel(xi, 2000, name, normalize=True)
    s = nngp_kernel(xi, 2000, name)
    assert torch.isfinite(k).all() and torch.isfinite(s).all()
    assert k[-1] == 1.0 and s[-1] == 1.0 and k.abs().max() <= 1.0
    if name == "relu":  # the normalized ReLU NTK tends to 1/4 off the diagonal; the NNGP to 1
        assert torch.allclose(k[:4], torch.full((4,), 0.25, dtype=F64), atol=5e-3)
        assert 0.25 < k[4] < 0.3  # xi near 1 converges slowest (the reason ReLU needs very deep nets)
        assert torch.allclose(s[1:], torch.ones(5, dtype=F64), atol=1e-4)


def test_unnormalized_ntk_grows_like_the_diagonal_and_overflow_is_an_error():
    assert float(ntk_kernel(torch.tensor(1.0, dtype=F64), 50, "relu")) == pytest.approx(51.0)
    assert float(ntk_kernel(torch.tensor(1.0, dtype=F64), 10, "opt3")) == pytest.approx(2 ** 11 - 1)
    with pytest.raises(OverflowError, match="normalize=True"):
        ntk_kernel(torch.tensor(0.5, dtype=F64), 1100, "opt3")


def test_clear_errors_for_bad_names_coefficients_and_inputs():
    with pytest.raises(ValueError, match="Unknown dual activation 'gelu'.*relu.*sine_<param>"):
        dual_activation("gelu")
    with pytest.raises(ValueError, match="positive number"):
        dual_activation("sine_abc")
    with pytest.raises(ValueError, match="integer degree"):
        dual_activation("hermite_x")
    with pytest.raises(ValueError, match=r"sum a_k\^2 = 2.*normalize=True"):
        dual_activation([1.0, 1.0])
    assert torch.allclose(dual_activation([1.0, 1.0], normalize=True)(grid()), 0.5 + 0.5 * grid())
    with pytest.raises(ValueError, match="unit sphere.*normalize=True"):
        sphere_gram(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    gram = sphere_gram(torch.tensor([[3.0, 4.0], [0.0, 2.0]]), normalize=True)
    assert torch.allclose(gram, torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=F64))
    with pytest.raises(ValueError, match=r"cosines.*\[-1, 1\]"):
        ntk_kernel(torch.tensor([1.5]), 2, "relu")


def test_a_new_dual_is_one_registry_entry():
    register_dual("halfsquare", lambda: hermite_dual([0.0, math.sqrt(0.5), math.sqrt(0.5)], name="halfsquare"))
    assert "halfsquare" in available_duals()
    assert float(ntk_kernel(torch.tensor(0.5, dtype=F64), 1, "halfsquare")) == pytest.approx(
        0.5 * 0.5 + 0.5 * 0.25 + 0.5 * (0.5 + 0.5))


def test_regimes_follow_the_dual():
    assert dual_activation("hermite_2").regime() == "1-NN"
    assert dual_activation("opt3").singular_exponent() == pytest.approx(1.0)  # (d - 1)/2 for d = 3
    assert dual_activation("opt5").singular_exponent() == pytest.approx(2.0)
    assert dual_activation("opt9").singular_exponent() == pytest.approx(4.0)
    assert dual_activation("sine_2.676").singular_exponent() == pytest.approx(1.0, abs=0.01)


def check_profile(grid_size, n_points, depths, rtol):
    xi = torch.rand(n_points, generator=torch.Generator().manual_seed(1), dtype=F64) * 2 - 1
    xi = torch.cat([xi, 1 - torch.logspace(-12, -1, 50, dtype=F64), torch.tensor([1.0, -1.0], dtype=F64)])
    positive = xi > 0.05  # where sphere data in the positive orthant lives; log|K| is singular at zeros of K
    for name in ("relu", "opt5", "hermite_2"):
        profiles = kernel_profiles(depths, name, grid_size=grid_size)
        exact = dict(kernel_path(xi, depths, name))
        for depth in depths:
            approx = profiles[depth](xi)
            keep = torch.ones_like(xi, dtype=torch.bool) if name == "relu" else positive
            assert torch.equal(approx.sign[keep], exact[depth].sign[keep])
            assert torch.allclose(approx.logabs[keep], exact[depth].logabs[keep], rtol=rtol, atol=1e-6)


def test_kernel_profile_interpolates_the_exact_recursion():
    check_profile(grid_size=4096, n_points=300, depths=[5, 40], rtol=2e-3)


@pytest.mark.slow
def test_kernel_profile_interpolates_the_exact_recursion_finely():
    # log|K| to ~1e-5 relative: what a smooth function on a 16k grid in atanh(xi) allows
    check_profile(grid_size=16384, n_points=2000, depths=[5, 200], rtol=1e-4)


# -- classifiers ---------------------------------------------------------------------------------

def sphere_data(dim=3, n_train=120, n_test=200, seed=0):
    model = DirichletSphere.preset(dim)
    x, y = model.sample(n_train + n_test, torch.Generator().manual_seed(seed))
    return model, x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def test_bayes_classifier_matches_scipy_dirichlet_densities():
    model, _, _, x, _ = sphere_data(5, n_test=300)
    s = (x / x.sum(1, keepdim=True)).numpy()
    s = s / s.sum(1, keepdims=True)
    p = np.stack([prior * dirichlet.pdf(s.T, np.array(a)) for prior, a in zip(model.priors, model.alphas)], 1)
    assert np.array_equal(model.bayes_predict(x).numpy(), p.argmax(1))
    assert torch.allclose(x.norm(dim=1), torch.ones(len(x), dtype=F64))


def test_kernel_regression_interpolates_and_reports_a_singular_gram():
    _, xtr, ytr, xte, _ = sphere_data()
    k = ntk_kernel(sphere_gram(xtr), 3, "relu")
    assert torch.equal(kernel_regression(k, ytr, k), ytr)  # interpolates the training labels
    # a depth-1 opt3 NTK is a cubic polynomial kernel: rank <= C(3 + 3, 3) = 20 < 120 points in 3-d
    cubic = ntk_kernel(sphere_gram(xtr), 1, "opt3")
    assert int(torch.linalg.matrix_rank(cubic)) <= 20
    with pytest.raises(SingularKernelError, match="singular.*lstsq"):
        kernel_regression(cubic, ytr, ntk_kernel(sphere_gram(xte, xtr), 1, "opt3"))
    with pytest.warns(RuntimeWarning, match="pseudo-inverse"):
        coef = solve_gram(cubic, torch.ones(len(ytr), dtype=F64), on_singular="lstsq")
    assert torch.allclose(coef, torch.linalg.pinv(cubic, rtol=1e-13, hermitian=True) @ torch.ones(len(ytr), dtype=F64),
                          atol=1e-6)


def test_comparison_classifiers_against_brute_force():
    _, xtr, ytr, xte, _ = sphere_data()
    d = ((xte[:, None, :] - xtr[None, :, :]) ** 2).sum(-1)
    assert torch.equal(nearest_neighbor_predict(xtr, ytr, xte), ytr[d.argmin(1)])
    assert torch.equal(majority_vote_predict(ytr, 5), torch.full((5,), int(torch.bincount(ytr).argmax())))
    w = d ** (-1.0)  # ||x - z||^-2, alpha = d - 1 = 2
    scores = torch.stack([(w * (ytr == c)).sum(1) for c in (0, 1)], 1)
    assert torch.equal(singular_kernel_predict(xtr, ytr, xte), scores.argmax(1))
    assert torch.equal(singular_kernel_predict(xtr, ytr, xtr[:7]), ytr[:7])  # coinciding points


def deep_predictions(name, depth, xtr, ytr, xte):
    both = torch.cat([sphere_gram(xtr), sphere_gram(xte, xtr)])
    k = dict(kernel_path(both, [depth], name))[depth]
    n = len(xtr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        preds = kernel_regression(LogKernel(k.logabs[:n], k.sign[:n]), ytr, LogKernel(k.logabs[n:], k.sign[n:]),
                                  on_singular="lstsq")
    return preds, k.value()[n:]


def test_deep_limits_are_1nn_and_the_singular_kernel():
    """hermite_2 (a'(0) = 0) becomes 1-NN; opt9 (beta = 4) becomes ||x - z||^-8 — at a depth (300)
    where the plain float64 values of every off-diagonal entry have underflowed to 0."""
    _, xtr, ytr, xte, _ = sphere_data(n_train=60, n_test=100)
    assert torch.equal(deep_predictions("hermite_2", 60, xtr, ytr, xte)[0], nearest_neighbor_predict(xtr, ytr, xte))
    opt9, values = deep_predictions("opt9", 300, xtr, ytr, xte)
    agree = (opt9 == singular_kernel_predict(xtr, ytr, xte, alpha=8.0)).double().mean()
    assert agree >= 0.98
    assert (values == 0).all()  # why the log domain: the values alone cannot classify


# -- consistent duals for any dimension (plugins/ntk/optimal.py) -----------------------------------

def gauss_hermite_dual(activation, xi, nodes=40):
    """E[phi(u) phi(v)] for standard Gaussians with correlation xi, by 2-d Gauss-Hermite quadrature
    (exact for the polynomial activations here): v = xi u + sqrt(1 - xi^2) w."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    u, g = torch.tensor(x, dtype=F64)[:, None], torch.tensor(x, dtype=F64)[None, :]
    weights = torch.tensor(w, dtype=F64)
    v = xi * u + math.sqrt(1 - xi * xi) * g
    return float((weights[:, None] * weights[None, :] * activation(u) * activation(v)).sum())


def he7(x):
    return x ** 7 - 21 * x ** 5 + 105 * x ** 3 - 105 * x


def test_opt2_is_the_authors_2d_dual():
    """The authors' 2d_opt (inf_depth_ntks/models.py): a = xi^7/2 + xi/2, a' = 7 xi^6/2 + 1/2."""
    dual, xi = dual_activation("opt2"), grid()
    assert torch.allclose(dual(xi), xi ** 7 / 2 + xi / 2, atol=1e-15)
    assert torch.allclose(dual.derivative(xi), 7 * xi ** 6 / 2 + 0.5, atol=1e-14)
    assert dual.hermite_coeffs == pytest.approx((0, 2 ** -0.5, 0, 0, 0, 0, 0, 2 ** -0.5), abs=1e-15)
    x = torch.linspace(-3, 3, 25, dtype=F64)
    assert torch.allclose(dual.activation(x), (x + he7(x) / math.sqrt(5040)) / math.sqrt(2), atol=1e-12)
    for rho in (-0.8, 0.0, 0.3, 0.95):
        assert gauss_hermite_dual(dual.activation, rho) == pytest.approx(rho ** 7 / 2 + rho / 2, abs=1e-12)
    assert dual.singular_exponent() == pytest.approx(0.5, abs=1e-12)  # log 2 / log 4 = (d - 1)/2 at d = 2
    assert dual.regime() == "singular kernel (beta=0.5)"


@pytest.mark.parametrize("dim, degree, c", [
    (2, 7, 0.5),                          # the authors' 2d_opt
    (3, 3, 0.5),                          # their 3d_opt: opt3
    (2, 4, (1 + math.sqrt(13)) / 6),      # 1/c^2 = 4 - 3c  <=>  (c - 1)(3c^2 - c - 1) = 0
    (5, 2, (3 - math.sqrt(5)) / 2),       # 1/c = (2 - c)^2  <=>  (c - 1)(c^2 - 3c + 1) = 0
    (5, 3, 1 - math.sqrt(3) / 2),         # 1/c = (3 - 2c)^2 <=>  (c - 1)(4c^2 - 8c + 1) = 0
    (3, 5, 0.25),                         # 1/c = c + 5(1 - c) at c = 1/4: 4 = 4
])
def test_optimal_dual_has_the_closed_form_coefficient(dim, degree, c):
    dual, xi = optimal_dual(dim, degree), grid()
    assert optimal_coefficient(dim, degree) == pytest.approx(c, abs=1e-14)
    assert torch.allclose(dual(xi), c * xi + (1 - c) * xi ** degree, atol=1e-14)
    assert torch.allclose(dual.derivative(xi), c + degree * (1 - c) * xi ** (degree - 1), atol=1e-13)
    expected = [0.0] * (degree + 1)
    expected[1], expected[degree] = math.sqrt(c), math.sqrt(1 - c)
    assert dual.hermite_coeffs == pytest.approx(expected, abs=1e-14)
    he = {2: lambda x: x ** 2 - 1, 3: lambda x: x ** 3 - 3 * x, 4: lambda x: x ** 4 - 6 * x ** 2 + 3,
          5: lambda x: x ** 5 - 10 * x ** 3 + 15 * x, 7: he7}[degree]
    x = torch.linspace(-3, 3, 25, dtype=F64)
    phi = math.sqrt(c) * x + math.sqrt(1 - c) * he(x) / math.sqrt(math.factorial(degree))
    assert torch.allclose(dual.activation(x), phi, atol=1e-11)
    for rho in (-0.6, 0.2, 0.9):
        assert gauss_hermite_dual(dual.activation, rho) == pytest.approx(float(dual(torch.tensor(rho, dtype=F64))),
                                                                          abs=1e-12)
    assert dual.singular_exponent() == pytest.approx((dim - 1) / 2, abs=1e-10)
    assert math.log(1 / c) / math.log(c + degree * (1 - c)) == pytest.approx((dim - 1) / 2, abs=1e-12)


@pytest.mark.parametrize("dim", [2, 3, 4, 5, 7, 9, 16])
def test_default_optimal_dual_is_consistent_in_every_dimension(dim):
    dual = optimal_dual(dim)
    beta = math.log(1 / dual.slope_at_zero) / math.log(dual.slope_at_one)
    assert beta == pytest.approx((dim - 1) / 2, abs=1e-10)
    assert dual.value_at_zero == 0.0 and float(dual(torch.tensor(1.0, dtype=F64))) == pytest.approx(1.0, abs=1e-14)
    assert dual_activation(f"optimal_{dim}").poly == pytest.approx(dual.poly, abs=1e-15)
    # c closest to 1/2 over the admissible degrees (2-d: 7, 3-d: 3, the authors' choices)
    k = default_degree(dim)
    others = [abs(optimal_coefficient(dim, j) - 0.5) for j in range(2, 30) if 1 / (j - 1) < (dim - 1) / 2]
    assert abs(optimal_coefficient(dim, k) - 0.5) == pytest.approx(min(others))
    assert {2: 7, 3: 3}.get(dim, k) == k


def test_optimal_dual_names_and_errors():
    assert dual_activation("optimal_2_7").poly == pytest.approx(dual_activation("opt2").poly, abs=1e-15)
    assert dual_activation("optimal_3").poly == pytest.approx(dual_activation("opt3").poly, abs=1e-15)
    with pytest.raises(ValueError, match=r"degree k >= 4"):
        optimal_dual(2, 3)  # beta > 1/(k - 1) = 1/2 for every c
    with pytest.raises(ValueError, match="integer >= 2"):
        optimal_dual(1)
    with pytest.raises(ValueError, match="optimal_5"):
        dual_activation("optimal_x")


# -- solvers and profiles used by the regime study -------------------------------------------------

def test_cholesky_fast_path_matches_a_float64_solve_and_keeps_the_singular_check():
    _, xtr, ytr, _, _ = sphere_data(n_train=150)
    gram = nngp_kernel(sphere_gram(xtr), 30, "opt3")  # well conditioned: close to the identity
    targets = torch.nn.functional.one_hot(ytr).to(F64)
    assert torch.allclose(solve_gram(gram, targets), torch.linalg.solve(gram, targets), atol=1e-10)
    near = torch.ones(5, 5, dtype=F64) + 1e-15 * torch.eye(5, dtype=F64)  # PD for Cholesky, singular by eigenvalues
    with pytest.raises(SingularKernelError):
        solve_gram(near, torch.ones(5, dtype=F64))


def test_profile_points_located_once_serve_every_depth():
    _, xtr, _, xte, _ = sphere_data(n_train=40, n_test=30)
    xi = sphere_gram(xte, xtr)
    profiles = kernel_profiles([10, 80], "opt5", kind="nngp", grid_size=1024)
    points = profiles[10].locate(xi)
    for depth, profile in profiles.items():
        a, b = profile(xi), profile(xi, points)
        assert torch.equal(a.logabs, b.logabs) and torch.equal(a.sign, b.sign)
        exact = dict(kernel_path(xi, [depth], "opt5", "nngp"))[depth]
        assert torch.allclose(b.logabs, exact.logabs, rtol=5e-2)  # the depth asked for (accuracy: check_profile)


def test_regime_agreement_against_a_direct_float64_kernel_regression():
    """The NNGP at depth 40 (exact recursion) against the authors' procedure written out: iterate
    the dual on the cosines in float64 values, set the train diagonal to 1, np.linalg.solve."""
    _, xtr, ytr, xte, yte = sphere_data(dim=2, n_train=80, n_test=120)
    rows = regime_agreement(xtr, ytr, xte, yte, "opt2", [40, 300], kind="authors", exact_max_depth=40, grid_size=4096)
    sig_tr, sig_te = sphere_gram(xtr).numpy(), sphere_gram(xte, xtr).numpy()
    for _ in range(40):
        sig_tr, sig_te = [np.clip(s ** 7 / 2 + s / 2, -1, 1) for s in (sig_tr, sig_te)]
    np.fill_diagonal(sig_tr, 1.0)
    pm = np.where(ytr.numpy() == 1, 1.0, -1.0)
    preds = (sig_te @ np.linalg.solve(sig_tr, pm) > 0).astype(int)
    assert rows[0]["depth"] == 40 and rows[0]["acc"] == pytest.approx(float((preds == yte.numpy()).mean()))
    assert rows[1]["depth"] == 300 and rows[1]["profile_check"] >= 0.97
    singular = singular_kernel_predict(xtr, ytr, xte, alpha=1.0).numpy()
    assert rows[1]["agree_singular"] == pytest.approx(float((preds == singular).mean()), abs=0.05)
    assert rows[1]["agree_singular"] >= 0.95  # opt2 is the 2-d singular kernel ||x - z||^-1
    assert authors_kind("relu") == "ntk" and authors_kind("opt2") == "nngp" and authors_kind("sine_1") == "nngp"
    with pytest.raises(ValueError, match="authors"):
        regime_agreement(xtr, ytr, xte, yte, "opt2", [1], kind="gp")
