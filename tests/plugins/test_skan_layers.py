"""SKANLinear / KANLinear / SKANConv2d against edge-by-edge float64 references; selection,
pruning, grid update, regularization, activation sites."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from actsparse.plugins import find_sites, record
from actsparse.plugins.kan import (
    KANCONV_SPACES,
    KANLinear,
    SKANConv2d,
    SKANLinear,
    edge_l1_entropy,
    kan_regularization,
    prune_spaces,
    update_grids,
)

SPACES3 = ["bspline", "chebyshev", "fourier"]


def _randomize(layer: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


def _reference(layer: SKANLinear, x: torch.Tensor) -> torch.Tensor:
    """y_j = b_j + Σ_i [w_b silu(x_i) + Σ_s α_js w_s Σ_k c B_k(x_i)], one edge at a time."""
    alpha = layer.selection
    out = torch.zeros(x.shape[0], layer.out_features, dtype=x.dtype)
    bases = {s: layer.bases[s](x) for s in layer.spaces}
    for j in range(layer.out_features):
        for i in range(layer.in_features):
            edge = layer.base_weight[j, i] * F.silu(x[:, i])
            for s, space in enumerate(layer.spaces):
                a = alpha[j, s] if layer.select == "outputs" else alpha[i, s]
                edge = edge + a * layer.spline_scale[space][j, i] * (bases[space][:, i, :] @ layer.coef[space][j, i])
            out[:, j] += edge
        out[:, j] += layer.bias[j]
    return out


@pytest.mark.parametrize("select", ["outputs", "inputs"])
def test_forward_matches_the_edge_sum_in_float64(select):
    layer = SKANLinear(3, 4, spaces=SPACES3, select=select).double()
    _randomize(layer)
    x = torch.randn(9, 3, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-12, atol=1e-12)
    # the per-edge view agrees with the layer
    torch.testing.assert_close(layer.edge_values(x).sum(-1) + layer.bias, layer(x), rtol=1e-12, atol=1e-12)


def test_selection_sums_to_one_per_node():
    layer = SKANLinear(5, 6)
    _randomize(layer)
    for t in (1.0, 0.3, 1e-3):
        layer.temperature.fill_(t)
        alpha = layer.selection
        assert alpha.shape == (6, 7) and bool((alpha >= 0).all())
        torch.testing.assert_close(alpha.sum(-1), torch.ones(6))


@pytest.mark.parametrize("select", ["outputs", "inputs"])
def test_pruning_keeps_outputs_when_one_space_has_all_the_weight(select):
    layer = SKANLinear(4 if select == "outputs" else 5, 5 if select == "outputs" else 3, select=select).double()
    _randomize(layer)
    choice = torch.tensor([0, 3, 6, 3, 1])
    with torch.no_grad():  # softmax of these logits is exactly one-hot in float64
        layer.selection_logits.fill_(-1e4)
        layer.selection_logits[torch.arange(5), choice] = 0.0
    x = torch.randn(11, layer.in_features, dtype=torch.float64) * 1.5
    before = layer(x)
    edges_before = layer.edge_values(x)
    n_before = layer.num_parameters()
    layer.prune_()
    torch.testing.assert_close(layer(x), before, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.edge_values(x), edges_before, rtol=1e-12, atol=1e-12)
    assert layer.pruned and layer.selection_logits is None
    assert layer.chosen_spaces() == [layer.all_spaces[i] for i in choice.tolist()]
    assert set(layer.bases) == {layer.all_spaces[i] for i in choice.tolist()}
    assert layer.num_parameters() < n_before / 3
    torch.testing.assert_close(layer.selection.sum(-1), torch.ones(5, dtype=torch.float64))
    # the pruned layer keeps working: state dict round trip, gradients, grid updates
    fresh = SKANLinear(layer.in_features, layer.out_features, select=select).double()
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(x), before, rtol=1e-12, atol=1e-12)
    x_inside = torch.rand(200, layer.in_features, dtype=torch.float64) - 0.5
    ref = layer(x_inside).detach()
    layer.update_grid(x_inside)
    assert (layer(x_inside) - ref).abs().max() < 0.05 * ref.abs().max()
    layer(x).sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in layer.parameters())


def test_pruning_folds_a_soft_selection_into_the_kept_space():
    layer = SKANLinear(2, 3, spaces=SPACES3).double()
    _randomize(layer)
    x = torch.randn(6, 2, dtype=torch.float64)
    alpha, choice = layer.selection.detach(), layer.selection.detach().argmax(-1)
    # the kept term as the unpruned layer computed it: base + α_js·(space s) + bias
    expected = torch.zeros(6, 3, dtype=torch.float64)
    for j in range(3):
        space = SPACES3[int(choice[j])]
        spline = torch.einsum("nik,ik->ni", layer.bases[space](x), layer.coef[space][j])
        expected[:, j] = (layer.base_weight[j] * F.silu(x)).sum(1) + alpha[j, choice[j]] * (
            layer.spline_scale[space][j] * spline).sum(1) + layer.bias[j]
    torch.testing.assert_close(layer.prune_()(x), expected.detach(), rtol=1e-10, atol=1e-10)


def test_input_selection_prunes_to_single_space_cost():
    layer = SKANLinear(7, 3, select="inputs")
    with torch.no_grad():
        layer.selection_logits.fill_(-1e4)
        layer.selection_logits[torch.arange(7), torch.arange(7)] = 0.0  # input i keeps space i
    layer.prune_()
    # each input is evaluated in one space only: K = 8 functions per edge, like a single-space layer
    assert layer.num_parameters() == KANLinear(7, 3, space="rbf").num_parameters()
    assert sorted(b.in_features for b in layer.bases.values()) == [1] * 7
    with pytest.raises(ValueError, match="select='both'"):
        SKANLinear(2, 3, select="both")


def test_pruned_state_dict_loads_into_a_fresh_layer():
    layer = SKANLinear(3, 4)
    layer.prune_()
    fresh = SKANLinear(3, 4)
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(5, 3)
    assert fresh.pruned
    torch.testing.assert_close(fresh(x), layer(x))
    with pytest.raises(RuntimeError, match="unpruned S-KAN layer but this layer is pruned"):
        layer.load_state_dict(SKANLinear(3, 4).state_dict())


@pytest.mark.parametrize("make", [lambda: SKANLinear(3, 4), lambda: KANLinear(3, 4, space="legendre"),
                                  lambda: SKANLinear(3, 4).prune_(),
                                  lambda: SKANLinear(3, 4, spaces=list(KANCONV_SPACES)),
                                  lambda: SKANLinear(3, 4, spaces=list(KANCONV_SPACES)).prune_()])
def test_gradients_are_finite_everywhere(make):
    layer = make()
    x = (torch.randn(32, 3) * 4).requires_grad_(True)  # well outside the grids too
    layer(x).square().sum().backward()
    grads = [p.grad for p in layer.parameters() if p.requires_grad] + [x.grad]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


def test_single_space_layer_has_no_selection_and_is_smaller():
    single, multi = KANLinear(3, 4, space="rbf", grid_size=8), SKANLinear(3, 4)
    assert single.selection_logits is None and single.spaces == ("rbf",)
    assert single.num_parameters() == 4 * 3 * (1 + 1 + 8) + 4
    assert single.num_parameters() < multi.num_parameters()  # the S-KAN carries every space while training


def test_grid_update_keeps_the_function_on_the_data():
    torch.manual_seed(0)
    layer = KANLinear(2, 3, space="bspline", grid_size=5).double()
    _randomize(layer, seed=1)
    x = torch.rand(400, 2, dtype=torch.float64) * 1.2 - 0.5  # covers [-0.5, 0.7] of the [-1, 1] grid
    before = layer(x)
    old_grid = layer.bases["bspline"].grid.clone()
    layer.update_grid(x)
    grid = layer.bases["bspline"].inner_grid
    assert not torch.equal(layer.bases["bspline"].grid, old_grid)
    assert abs(float(grid[0, 0]) - float(x[:, 0].min())) < 1e-3 and abs(float(grid[0, -1]) - float(x[:, 0].max())) < 1e-3
    error = (layer(x) - before).abs().max() / before.abs().max()
    assert error < 2e-2, f"relative error {error:.2e} after the grid update"


def test_grid_update_through_a_model_uses_each_layers_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(SKANLinear(2, 4, spaces=["bspline", "rbf"]), KANLinear(4, 1))
    x = torch.rand(300, 2) * 2 - 1
    before = model(x).detach()
    hidden = model[0](x).detach()  # what layer 1 saw in the one forward the update runs
    assert update_grids(model, x) == 2
    inner = model[1].bases["bspline"].inner_grid
    torch.testing.assert_close(inner[:, 0], hidden.min(0).values, atol=1e-3, rtol=0)
    assert (model(x).detach() - before).abs().max() < 0.05 * before.abs().max() + 1e-3


def test_conv_matches_a_patch_by_patch_reference():
    conv = SKANConv2d(2, 3, kernel_size=3, padding=1, stride=2, spaces=["rbf", "chebyshev"]).double()
    _randomize(conv)
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    ref_layer = SKANLinear(2 * 9, 3, spaces=["rbf", "chebyshev"]).double()
    ref_layer.load_state_dict(conv.state_dict())
    padded = F.pad(x, (1, 1, 1, 1))
    out = conv(x)
    assert out.shape == (2, 3, 4, 4)
    for r in range(4):
        for c in range(4):
            patch = padded[:, :, 2 * r:2 * r + 3, 2 * c:2 * c + 3].reshape(2, -1)
            torch.testing.assert_close(out[:, :, r, c], ref_layer(patch), rtol=1e-12, atol=1e-12)
    before = conv(x)
    with torch.no_grad():
        conv.selection_logits.copy_(torch.tensor([[0.0, -1e4], [-1e4, 0.0], [0.0, -1e4]], dtype=torch.float64))
    before = conv(x)
    torch.testing.assert_close(conv.prune_()(x), before, rtol=1e-12, atol=1e-12)


def test_regularization_is_the_kan_paper_formula():
    torch.manual_seed(0)
    model = nn.Sequential(SKANLinear(2, 3, spaces=SPACES3), KANLinear(3, 1, space="rbf"))
    x = torch.randn(20, 2)
    model(x)
    expected = torch.zeros(())
    inputs = [x, model[0](x)]
    for layer, inp in zip(model, inputs):
        edges = layer.edge_values(inp).abs().mean(0)          # |phi_ji|_1
        total = edges.sum()
        p = edges / total
        expected = expected + 0.5 * total + 3.0 * -(p * p.log()).sum()
    torch.testing.assert_close(kan_regularization(model, l1=0.5, entropy=3.0).detach(), expected)
    total, entropy = edge_l1_entropy(torch.ones(2, 3))
    assert float(total) == 6 and abs(float(entropy) - torch.log(torch.tensor(6.0)).item()) < 1e-6


def test_layers_are_activation_sites():
    model = nn.Sequential(SKANLinear(3, 4), KANLinear(4, 2), nn.Unflatten(1, (2, 1, 1)))
    conv_model = nn.Sequential(SKANConv2d(1, 2, 3, spaces="bspline"))
    assert [s.name for s in find_sites(model)] == ["0", "1"]
    assert [s.kind for s in find_sites(conv_model)] == ["activation"]
    with record(model, what=("mean_abs", "zero_fraction")) as rec:
        model(torch.randn(8, 3))
    assert rec["0"].mean_abs > 0


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="Unknown activation space"):
        SKANLinear(2, 3, spaces=["bspline", "sinc"])
    with pytest.raises(ValueError, match="spaces is empty"):
        SKANLinear(2, 3, spaces=[])
    with pytest.raises(ValueError, match="lists a space twice"):
        SKANLinear(2, 3, spaces=["rbf", "rbf"])
    with pytest.raises(ValueError, match="expects inputs \\[N, 2\\]"):
        SKANLinear(2, 3).kan_forward(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="grid_size=1 is smaller"):
        SKANLinear(2, 3, spaces={"bspline": {"grid_size": 1}})


def test_prune_spaces_on_a_model():
    model = nn.Sequential(SKANLinear(2, 3), SKANLinear(3, 1))
    chosen = prune_spaces(model)
    assert list(chosen) == ["0", "1"] and len(chosen["0"]) == 3
    assert all(m.pruned for m in model)


@pytest.mark.parametrize("select", ["outputs", "inputs"])
def test_authors_pool_prunes_losslessly_with_one_hot_selections(select):
    """The KANConv2d family (with its learnable basis parameters: GRAM's β, Wav-KAN's translation
    and scale, FastKAN's LayerNorm) keeps the outputs when pruned at a one-hot selection."""
    spaces = [s for s in KANCONV_SPACES if select == "outputs" or s != "fastkan"]  # LayerNorm: outputs only
    layer = SKANLinear(3, len(spaces), spaces=spaces, select=select).double()
    _randomize(layer, seed=3)
    with torch.no_grad():
        layer.selection_logits.copy_(torch.eye(len(spaces), dtype=torch.float64)[: layer.selection_logits.shape[0]] * 100)
        layer.temperature.fill_(1e-3)
    x = torch.randn(16, 3, dtype=torch.float64)
    before = layer(x)
    layer.prune_()
    torch.testing.assert_close(layer(x), before, rtol=1e-9, atol=1e-9)
