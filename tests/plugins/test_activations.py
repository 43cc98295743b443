import pytest
import torch

from actsparse.plugins import ACTIVATIONS, FATReLU, make_activation


def test_fatrelu_matches_definition():
    x = torch.randn(1000, dtype=torch.float64)
    t = 0.3
    expected = torch.tensor([v if v >= t else 0.0 for v in x.tolist()], dtype=torch.float64)
    assert torch.equal(FATReLU(t)(x), expected)
    assert FATReLU(t)(torch.tensor([t], dtype=torch.float64)).item() == t  # x >= t passes


def test_fatrelu_zero_threshold_is_relu():
    x = torch.randn(257)
    assert torch.equal(FATReLU(0.0)(x), torch.relu(x))


def test_fatrelu_rejects_negative_threshold():
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        FATReLU(-0.1)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_registry_builds_every_name(name):
    x = torch.linspace(-3, 3, 61)
    reference = {"relu": torch.relu, "fatrelu": torch.relu, "silu": torch.nn.functional.silu,
                 "gelu": torch.nn.functional.gelu}[name]
    assert torch.allclose(make_activation(name)(x), reference(x))


def test_unknown_activation_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        make_activation("swishy")
    message = str(err.value)
    assert "swishy" in message
    for name in ACTIVATIONS:
        assert name in message
