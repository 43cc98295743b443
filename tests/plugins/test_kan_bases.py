"""Each activation space against its direct formula in float64, plus the registry's errors."""

from __future__ import annotations

import math

import pytest
import torch

from actsparse.plugins.kan import SPACES, Basis, make_basis, register_basis
from actsparse.plugins.kan.bases import BSpline

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


def test_registry_has_the_seven_families():
    assert {"bspline", "chebyshev", "fourier", "rbf", "mexican_hat", "legendre", "relu_kan"} <= set(SPACES)


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
