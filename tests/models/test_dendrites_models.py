"""The continual-learning study's networks (actsparse.models.dendrites): the parameter count
without building a network, the matched baselines and the arms built from one YAML."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config
from hydra.utils import instantiate

from actsparse.models.dendrites import (
    ARMS,
    ContextFree,
    DendriticMLP,
    KWinnersMLP,
    continual_model,
    dendritic_parameter_count,
    effective_parameters,
    matched_mlp,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("shape", [
    {}, {"context_dim": 10, "num_segments": 10}, {"width": 40, "depth": 3, "ff_weight_sparsity": 0.5},
    {"context_dim": 7, "num_segments": 3, "weight_sparsity": 0.0, "ff_weight_sparsity": 0.25},
])
def test_parameter_count_without_building_matches_a_built_network(shape):
    shape = {"context_dim": 64, "num_segments": 10, **shape}
    net = DendriticMLP(**shape)
    # an independent count: every parameter, less the entries the masks pin at zero
    pinned = sum(int((~b["dendrites"].segment_mask).sum()) + int((~b["dendrites"].ff_mask).sum()) for b in net.blocks)
    assert dendritic_parameter_count(**shape) == sum(p.numel() for p in net.parameters()) - pinned
    assert effective_parameters(net) == dendritic_parameter_count(**shape)


def test_matched_mlp_has_the_same_effective_parameter_count():
    ref = DendriticMLP(context_dim=5, width=128, depth=2, num_segments=5, weight_sparsity=0.5)
    mlp = matched_mlp(ref)
    assert abs(mlp.num_parameters() - ref.num_parameters()) / ref.num_parameters() < 0.01
    assert mlp(torch.randn(2, 64), None).shape == (2, 10)
    w = mlp.model.widths[0]  # the closest width: one more or one less is further from the target
    count = lambda w: 65 * w + w * w + w + 11 * w + 10
    assert abs(count(w) - ref.num_parameters()) <= min(abs(count(w - 1) - ref.num_parameters()),
                                                       abs(count(w + 1) - ref.num_parameters()))


def test_arms_are_built_from_one_set_of_keys():
    arms = {arm: continual_model(arm, width=32, num_segments=4, context_dim=64) for arm in ARMS}
    target = dendritic_parameter_count(width=32, num_segments=4, context_dim=64)
    assert isinstance(arms["dendritic"], DendriticMLP) and arms["dendritic"].num_parameters() == target
    assert isinstance(arms["kwta_mlp"], ContextFree) and isinstance(arms["kwta_mlp"].model, KWinnersMLP)
    assert arms["mlp"].model.widths == arms["kwta_mlp"].model.widths
    assert abs(arms["mlp"].num_parameters() - target) / target < 0.02
    x, context = torch.randn(3, 64), torch.randn(3, 64)
    assert all(m(x, context).shape == (3, 10) for m in arms.values())
    # the baselines draw nothing from the RNG for their reference: same init with or without it
    torch.manual_seed(0)
    a = continual_model("mlp", width=32, num_segments=4)
    torch.manual_seed(0)
    b = matched_mlp(target)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="model.arm"):
        continual_model("cnn")


def test_model_config_instantiates_every_arm():
    for arm in ARMS:
        model = instantiate(compose_config(["model=dendrites", f"model.arm={arm}", "data=dendrites_permuted_digits"]).model,
                            _convert_="all")
        assert model(torch.randn(2, 64), torch.randn(2, 64)).shape == (2, 10)
    dendritic = instantiate(compose_config(["model=dendrites", "data=dendrites_permuted_digits", "data.num_tasks=4"]).model,
                            _convert_="all")
    assert dendritic.blocks[0]["dendrites"].num_segments == 4  # a segment per task
