"""HermiteActivation, HermiteMLP and the empirical NTK of wide random networks (issue 15)."""

import math

import pytest
import torch
from torch.func import functional_call, jacrev, vmap

from actsparse.models.ntk_hermite_mlp import HermiteMLP
from actsparse.plugins import find_sites, record
from actsparse.plugins.ntk.hermite import HermiteActivation, hermite_series
from actsparse.plugins.ntk.kernels import nngp_kernel, ntk_kernel, sphere_gram

F64 = torch.float64


def test_hermite_series_matches_the_explicit_polynomials():
    x = torch.linspace(-3, 3, 31, dtype=F64)
    explicit = [torch.ones_like(x), x, (x ** 2 - 1) / math.sqrt(2), (x ** 3 - 3 * x) / math.sqrt(6),
                (x ** 4 - 6 * x ** 2 + 3) / math.sqrt(24)]
    for k, h in enumerate(explicit):
        assert torch.allclose(hermite_series(x, [0.0] * k + [1.0]), h, atol=1e-12)
    opt3 = HermiteActivation.from_name("opt3").double()
    assert torch.allclose(opt3(x), (explicit[1] + explicit[3]) / math.sqrt(2), atol=1e-12)


def test_hermite_activation_is_an_activation_site_and_checks_its_coefficients():
    net = HermiteMLP(in_features=3, width=8, depth=3, activation="opt5")
    sites = find_sites(net)
    assert len(sites) == 3 and all(isinstance(s.activation, HermiteActivation) for s in sites)
    x = torch.nn.functional.normalize(torch.randn(5, 3), dim=1)
    with record(net, what=("outputs",)) as rec:
        net(x)
    assert torch.allclose(rec["layers.1"].outputs, net.layers[1](net.layers[0](x)))
    with pytest.raises(ValueError, match="normalized.*normalize=True"):
        HermiteActivation([1.0, 1.0])
    assert HermiteActivation([1.0, 1.0], normalize=True).coeffs_tuple == pytest.approx((2 ** -0.5, 2 ** -0.5))
    with pytest.raises(ValueError, match="no finite Hermite expansion"):
        HermiteActivation.from_name("erf")
    with pytest.raises(ValueError, match="Unknown dual activation"):
        HermiteMLP(activation="swish")


def empirical_ntk(net, x):
    """Theta(x, z) = sum over parameters of df/dp(x) df/dp(z), from torch.func Jacobians."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def f(p, xx):
        return functional_call(net, p, (xx[None],))[0, 0]

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    return sum(j.flatten(1) @ j.flatten(1).T for j in jac.values())


def points(n=4, d=3):
    return torch.nn.functional.normalize(torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(0)), dim=1)


@pytest.mark.parametrize("activation, depth, width, seeds, tol", [
    ("relu", 3, 1024, 2, 0.08),
    ([0.0, math.sqrt(0.9), math.sqrt(0.1)], 2, 1024, 6, 0.1),  # mild Hermite: dual 0.9 xi + 0.1 xi^2
    ("opt3", 1, 1024, 12, 0.1),  # a cubic's kernel fluctuates ~20% at width 1024: average inits
    ("erf", 2, 1024, 2, 0.08),   # DualActivationModule: the normalized erf of dual_activation("erf")
])
def test_empirical_ntk_of_a_wide_random_mlp_matches_ntk_kernel(activation, depth, width, seeds, tol):
    torch.manual_seed(0)
    x = points()
    theta = sum(empirical_ntk(HermiteMLP(3, width, depth, 1, activation).double(), x) for _ in range(seeds)) / seeds
    expected = ntk_kernel(sphere_gram(x), depth, activation)
    assert ((theta - expected).abs().max() / expected.abs().max()) < tol


def test_wide_network_outputs_have_the_nngp_covariance():
    """Many random width-64 nets: the empirical covariance of f(x), f(z) is Sigma^depth."""
    torch.manual_seed(0)
    x = points()
    with torch.no_grad():
        outs = torch.stack([HermiteMLP(3, 64, 2, 1, "relu").double()(x)[:, 0] for _ in range(1500)])
    cov = outs.T @ outs / len(outs)
    assert torch.allclose(cov, nngp_kernel(sphere_gram(x), 2, "relu"), atol=0.15)  # ~4 standard errors


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["opt5", "opt9", "hermite_2"])
def test_empirical_ntk_of_optimal_activations_one_layer(activation):
    # Deeper polynomial nets need far larger widths: each cubic/quadratic layer amplifies the
    # finite-width fluctuation of the pre-activation variance (tens of % at width 1024, depth 2).
    torch.manual_seed(0)
    x = points()
    theta = sum(empirical_ntk(HermiteMLP(3, 2048, 1, 1, activation).double(), x) for _ in range(8)) / 8
    expected = ntk_kernel(sphere_gram(x), 1, activation)
    assert ((theta - expected).abs().max() / expected.abs().max()) < 0.1


def test_standard_parametrization_is_the_same_function_at_init():
    torch.manual_seed(3)
    a = HermiteMLP(3, 32, 2, 2, "opt3", parametrization="ntk")
    torch.manual_seed(3)
    b = HermiteMLP(3, 32, 2, 2, "opt3", parametrization="standard")
    x = points().float()
    assert torch.allclose(a(x), b(x), atol=1e-5)


def test_every_dual_with_an_activation_builds_a_network():
    """opt2/optimal_<d> as Hermite expansions, erf and sine_<a> as their normalized activations."""
    from actsparse.models.ntk_hermite_mlp import DualActivationModule
    from actsparse.plugins.ntk.duals import dual_activation

    x = torch.linspace(-3, 3, 13, dtype=F64)
    for name, kind in [("opt2", HermiteActivation), ("optimal_5", HermiteActivation), ("erf", DualActivationModule),
                       ("sine_2.676", DualActivationModule)]:
        net = HermiteMLP(in_features=2, width=4, depth=2, activation=name).double()
        acts = [s.activation for s in find_sites(net)]
        assert len(acts) == 2 and all(isinstance(a, kind) for a in acts)
        assert torch.allclose(acts[0](x), dual_activation(name).activation(x), atol=1e-12)
    assert torch.allclose(DualActivationModule("erf")(x), torch.erf(x) / math.sqrt(2 / math.pi * math.asin(2 / 3)))
