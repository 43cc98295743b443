"""Each activation space against its direct formula in float64, plus the registry's errors."""

from __future__ import annotations

import math

import pytest
import torch

from actsparse.plugins.kan import (
    KANCONV_SPACES,
    SPACES,
    Basis,
    make_basis,
    register_basis,
)
from actsparse.plugins.kan.splines import BSpline

torch.set_default_dtype(torch.float32)


def _inputs(n: int = 17, in_features: int = 3, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (low + (high - low) * torch.rand(n, in_features, generator=g, dtype=torch.float64))


def _cox_de_boor(x: float, knots: list[float], i: int, p: int) -> float:
    """The textbook recursion, one scalar at a time."""
    if p == 0:
        return 1.0 if knots[i] <= x < knots[i + 1] else 0.0
    left = (x - knots[i]) / (knots[i + p] - knots[i]) * _cox_de_boor(x, knots, i, p - 1)
    right = (knots[i + p + 1] - x) / (knots[i + p + 1] - knots[i + 1]) * _cox_de_boor(x, knots, i + 1, p - 1)
    return left + right


def _loop(basis: Basis, x: torch.Tensor, fn) -> torch.Tensor:
    """``fn(x_scalar, k, input_index)`` for every sample, input and function index."""
    n, d = x.shape
    out = torch.empty(n, d, basis.num_functions, dtype=torch.float64)
    for a in range(n):
        for i in range(d):
            for k in range(basis.num_functions):
                out[a, i, k] = fn(float(x[a, i]), k, i)
    return out


def test_registry_has_every_family_and_the_authors_pool():
    assert {"bspline", "chebyshev", "fourier", "rbf", "mexican_hat", "legendre", "relu_kan"} <= set(SPACES)
    # the S-KAN paper's KANConv2d family (torch-conv-kan)
    assert set(KANCONV_SPACES) == {"bspline", "fastkan", "rswaf", "chebyshev", "gram", "wavelet", "jacobi", "relu_kan"}
    assert set(KANCONV_SPACES) <= set(SPACES)


@pytest.mark.parametrize("grid_size,order", [(5, 3), (4, 2), (7, 1)])
def test_bspline_matches_cox_de_boor(grid_size, order):
    basis = BSpline(3, grid_size=grid_size, order=order).double()
    x = _inputs(low=-1.3, high=1.3)  # also the extension intervals
    knots = basis.grid.tolist()
    ref = _loop(basis, x, lambda v, k, i: _cox_de_boor(v, knots[i], k, order))
    torch.testing.assert_close(basis(x), ref, rtol=0, atol=1e-12)
    # partition of unity inside the covered range
    inside = _inputs(low=-0.99, high=0.99)
    torch.testing.assert_close(basis(inside).sum(-1), torch.ones(17, 3, dtype=torch.float64))


def test_bspline_matches_pykan():
    from kan.spline import B_batch, extend_grid

    basis = BSpline(2, grid_size=5, order=3).double()
    x = _inputs(in_features=2)
    grid = extend_grid(torch.linspace(-1, 1, 6, dtype=torch.float64)[None].expand(2, 6), k_extend=3)
    # our knots are built in float32 (the buffer's default dtype), pykan's in float64
    torch.testing.assert_close(basis(x), B_batch(x, grid, k=3), rtol=0, atol=1e-7)


def test_chebyshev_is_cos_k_arccos():
    basis = make_basis("chebyshev", 3, degree=6, outside="clamp").double()
    x = _inputs()
    ref = _loop(basis, x, lambda v, k, i: math.cos(k * math.acos(v)))
    torch.testing.assert_close(basis(x), ref, rtol=0, atol=1e-12)
    # default rule: squash by tanh first (ChebyKAN)
    tanh_basis = make_basis("chebyshev", 3, degree=6).double()
    y = 3 * x
    torch.testing.assert_close(tanh_basis(y), basis(torch.tanh(y)), rtol=0, atol=1e-12)


def test_legendre_is_the_explicit_sum():
    basis = make_basis("legendre", 3, degree=6, outside="clamp").double()
    x = _inputs()

    def legendre(v: float, n: int, _i: int) -> float:
        return sum(math.comb(n, k) ** 2 * (v - 1) ** (n - k) * (v + 1) ** k for k in range(n + 1)) / 2 ** n

    torch.testing.assert_close(basis(x), _loop(basis, x, legendre), rtol=0, atol=1e-12)


def test_fourier_is_cos_then_sin():
    basis = make_basis("fourier", 3, num_frequencies=4, half_period=1.5).double()
    x = _inputs(low=-3, high=3)
    n = 4

    def fourier(v: float, k: int, _i: int) -> float:
        f = (k % n + 1) * math.pi / 1.5
        return math.cos(f * v) if k < n else math.sin(f * v)

    torch.testing.assert_close(basis(x), _loop(basis, x, fourier), rtol=0, atol=1e-12)


def test_gaussian_rbf():
    basis = make_basis("rbf", 3, grid_size=6, grid_range=(-2, 2)).double()
    x = _inputs(low=-3, high=3)
    centres = [-2 + 4 * k / 5 for k in range(6)]
    h = 4 / 5
    ref = _loop(basis, x, lambda v, k, i: math.exp(-((v - centres[k]) / h) ** 2))
    torch.testing.assert_close(basis(x), ref, rtol=0, atol=1e-12)


def test_mexican_hat():
    basis = make_basis("mexican_hat", 3, grid_size=5, width=0.3).double()
    x = _inputs(low=-2, high=2)
    centres = [-1 + 2 * k / 4 for k in range(5)]

    def ricker(v: float, k: int, _i: int) -> float:
        t = (v - centres[k]) / 0.3
        return 2 / (math.sqrt(3) * math.pi ** 0.25) * (1 - t * t) * math.exp(-t * t / 2)

    torch.testing.assert_close(basis(x), _loop(basis, x, ricker), rtol=0, atol=1e-12)


def test_relu_kan():
    g, k_order, a, b = 5, 3, -1.0, 1.0
    basis = make_basis("relu_kan", 3, grid_size=g, order=k_order).double()
    x = _inputs(low=-1.8, high=1.8)
    h = (b - a) / g

    def bump(v: float, k: int, _i: int) -> float:
        i = k + 1
        s, e = a + (i - k_order - 1) * h, a + i * h
        return 16 / ((k_order + 1) * h) ** 4 * (max(0.0, e - v) * max(0.0, v - s)) ** 2

    torch.testing.assert_close(basis(x), _loop(basis, x, bump), rtol=0, atol=1e-12)
    # each bump peaks at 1 in the middle of its support
    assert abs(float(basis(torch.tensor([[a + (1 - k_order - 1) * h + 2 * h] * 3], dtype=torch.float64))[0, 0, 0]) - 1) < 1e-12


def test_grid_size_below_order_is_refused():
    with pytest.raises(ValueError, match="grid_size=2 is smaller than the spline order 3"):
        make_basis("bspline", 2, grid_size=2, order=3)


def test_unknown_space_is_refused():
    with pytest.raises(ValueError, match="Unknown activation space 'splines'.*bspline"):
        make_basis("splines", 2)


def test_bad_option_names_the_space():
    with pytest.raises(TypeError, match="'fourier'"):
        make_basis("fourier", 2, degree=3)


@pytest.mark.parametrize("space", ["bspline", "chebyshev", "legendre", "relu_kan"])
def test_inputs_outside_the_grid_without_extension_rule(space):
    basis = make_basis(space, 2, outside="error")
    basis(torch.zeros(4, 2))  # inside: fine
    with pytest.raises(ValueError, match="outside its domain.*no extension rule"):
        basis(torch.tensor([[0.0, 1.5]]))


def test_unknown_extension_rule():
    with pytest.raises(ValueError, match="outside='tanh' is not a rule of the 'bspline' space"):
        make_basis("bspline", 2, outside="tanh")


def test_clamp_rule_holds_the_boundary_value():
    basis = make_basis("bspline", 1, outside="clamp").double()
    edge = basis(torch.tensor([[1.0 - 1e-6]], dtype=torch.float64))
    torch.testing.assert_close(basis(torch.tensor([[5.0]], dtype=torch.float64)), edge, atol=1e-5, rtol=0)


def test_a_new_basis_is_one_registration():
    @register_basis("_test_monomial")
    class Monomial(Basis):
        def __init__(self, in_features: int, degree: int = 3) -> None:
            super().__init__(in_features)
            self.degree = degree

        @property
        def num_functions(self) -> int:
            return self.degree + 1

        def forward(self, x):
            return torch.stack([x ** k for k in range(self.degree + 1)], dim=-1)

    try:
        from actsparse.plugins.kan import SKANLinear

        layer = SKANLinear(2, 3, spaces=["bspline", "_test_monomial"])
        assert layer(torch.randn(5, 2)).shape == (5, 3)
    finally:
        SPACES.pop("_test_monomial")


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.0, 0.0), (2.5, -0.5)])
def test_jacobi_is_scipys_jacobi_polynomial(alpha, beta):
    from scipy.special import eval_jacobi

    basis = make_basis("jacobi", 3, degree=6, alpha=alpha, beta=beta, outside="clamp").double()
    x = _inputs()
    ref = _loop(basis, x, lambda v, k, i: float(eval_jacobi(k, alpha, beta, v)))
    torch.testing.assert_close(basis(x), ref, rtol=1e-10, atol=1e-10)
    # default: squashed by tanh first (JacobiKAN)
    torch.testing.assert_close(make_basis("jacobi", 3, degree=6, alpha=alpha, beta=beta).double()(3 * x),
                               basis(torch.tanh(3 * x)), rtol=0, atol=1e-12)


def test_gram_is_the_kagn_recurrence_written_out():
    """With the β weights at w: p2 = x² − β(1,2)·w1, p3 = x·p2 − β(2,3)·w2·x, β(n, m) =
    (m+n)(m−n)n²(4n²−1)/m²: β(1,2) = 9/4, β(2,3) = 100/3; each value through silu."""
    basis = make_basis("gram", 3, degree=3, outside="clamp").double()
    w = torch.tensor([0.0, 0.7, -0.3, 0.0], dtype=torch.float64)
    with torch.no_grad():
        basis.beta_weights.copy_(w)
    x = _inputs()

    def gram(v: float, k: int, _i: int) -> float:
        p = [1.0, v, v * v - 9 / 4 * 0.7, v * (v * v - 9 / 4 * 0.7) - 100 / 3 * -0.3 * v][k]
        return p / (1 + math.exp(-p))

    torch.testing.assert_close(basis(x), _loop(basis, x, gram), rtol=0, atol=1e-12)
    assert basis.beta_weights.requires_grad  # learnable, as in GRAM-KAN


def test_rswaf_is_sech_squared():
    basis = make_basis("rswaf", 3, grid_size=6, grid_range=(-1, 2)).double()
    x = _inputs(low=-2, high=3)
    centres = [-1 + 3 * k / 5 for k in range(6)]
    ref = _loop(basis, x, lambda v, k, i: 1 / math.cosh((v - centres[k]) / 0.6) ** 2)
    torch.testing.assert_close(basis(x), ref, rtol=0, atol=1e-12)


def test_fastkan_normalizes_the_inputs_then_rbf():
    basis = make_basis("fastkan", 3).double()
    with torch.no_grad():
        basis.norm.weight.copy_(torch.tensor([1.5, 0.5, 2.0]))
        basis.norm.bias.copy_(torch.tensor([0.1, -0.2, 0.0], dtype=torch.float64))
    x = _inputs(low=-3, high=3)
    centres = [-2 + 4 * k / 7 for k in range(8)]
    ref = torch.empty(x.shape[0], 3, 8, dtype=torch.float64)
    for a in range(x.shape[0]):
        row = [float(v) for v in x[a]]
        mean = sum(row) / 3
        var = sum((v - mean) ** 2 for v in row) / 3  # LayerNorm: biased variance, eps 1e-5
        for i in range(3):
            z = (row[i] - mean) / math.sqrt(var + 1e-5) * [1.5, 0.5, 2.0][i] + [0.1, -0.2, 0.0][i]
            for k in range(8):
                ref[a, i, k] = math.exp(-((z - centres[k]) / (4 / 7)) ** 2)
    torch.testing.assert_close(basis(x), ref, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="select='outputs'"):
        basis.select_inputs(torch.tensor([0, 2]))


def test_wavelet_has_learnable_translation_and_scale():
    basis = make_basis("wavelet", 2, grid_size=3).double()
    tau = torch.tensor([[-0.5, 0.0, 0.9], [0.3, -1.2, 0.4]], dtype=torch.float64)
    scale = torch.tensor([[0.2, 1.0, 0.7], [2.0, 0.5, 0.3]], dtype=torch.float64)
    with torch.no_grad():
        basis.translation.copy_(tau)
        basis.scale.copy_(scale)
    x = _inputs(in_features=2, low=-2, high=2)

    def ricker(v: float, k: int, i: int) -> float:
        t = (v - float(tau[i, k])) / float(scale[i, k])
        return 2 / (math.sqrt(3) * math.pi ** 0.25) * (1 - t * t) * math.exp(-t * t / 2)

    torch.testing.assert_close(basis(x), _loop(basis, x, ricker), rtol=0, atol=1e-12)
    basis(x).sum().backward()
    assert basis.translation.grad is not None and basis.scale.grad is not None
    # initialised as the fixed-grid Mexican hat
    fresh = make_basis("wavelet", 2, grid_size=5, width=0.3).double()
    torch.testing.assert_close(fresh(x), make_basis("mexican_hat", 2, grid_size=5, width=0.3).double()(x))
    # pruning to a subset of inputs keeps each input's own wavelets
    basis.select_inputs(torch.tensor([1]))
    torch.testing.assert_close(basis(x[:, 1:]), _loop(basis, x[:, 1:], lambda v, k, i: ricker(v, k, 1)), rtol=0, atol=1e-12)
