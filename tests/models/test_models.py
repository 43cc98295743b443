import math

import pytest
import torch

from actsparse.models import GatedFFN, LMConfig, PlainFFN, TinyLM
from actsparse.models.llama import RMSNorm, apply_rotary, rotary_tables


def expected_parameters(cfg: LMConfig) -> int:
    d, f, v, n = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_layers
    ffn = 3 * d * f if cfg.ffn == "gated" else 2 * d * f + f + d
    per_block = 3 * d * d + d * d + ffn + 2 * d  # qkv, out, FFN, two RMSNorm gains
    head = 0 if cfg.tie_embeddings else v * d
    return v * d + n * per_block + d + head


@pytest.mark.parametrize("ffn", ["gated", "plain"])
@pytest.mark.parametrize("tie", [True, False])
def test_parameter_count_matches_hand_count(ffn, tie):
    model = TinyLM(d_model=32, n_layers=3, n_heads=4, ffn=ffn, tie_embeddings=tie)
    assert model.num_parameters() == expected_parameters(model.config)


def test_ffn_kind_and_width():
    gated = TinyLM(d_model=48, n_layers=1, n_heads=2, ffn="gated", ffn_ratio=8 / 3)
    plain = TinyLM(d_model=48, n_layers=1, n_heads=2, ffn="plain", ffn_ratio=4.0, activation="gelu")
    assert isinstance(gated.blocks[0].ffn, GatedFFN)
    assert isinstance(plain.blocks[0].ffn, PlainFFN)
    assert gated.blocks[0].ffn.gate.out_features == 128  # ceil(8/3*48 / 8) * 8
    assert plain.blocks[0].ffn.fc.out_features == 192


def test_gated_ffn_computes_down_act_gate_times_up():
    torch.manual_seed(0)
    ffn = GatedFFN(16, 40, "relu").double()
    x = torch.randn(5, 16, dtype=torch.float64)
    wg, wu, wd = ffn.gate.weight, ffn.up.weight, ffn.down.weight
    expected = (torch.clamp(x @ wg.T, min=0) * (x @ wu.T)) @ wd.T
    assert torch.allclose(ffn(x), expected, rtol=1e-12, atol=1e-12)


def test_decoder_is_causal():
    torch.manual_seed(0)
    model = TinyLM(d_model=32, n_layers=2, n_heads=2).eval()
    tokens = torch.randint(0, 256, (1, 20))
    changed = tokens.clone()
    changed[0, 12:] = (changed[0, 12:] + 7) % 256
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.allclose(a[0, :12], b[0, :12], atol=1e-6)
    assert not torch.allclose(a[0, 12:], b[0, 12:], atol=1e-3)


def test_rmsnorm_matches_float64_formula():
    norm = RMSNorm(8)
    norm.weight.data = torch.linspace(0.5, 2.0, 8)
    x = torch.randn(4, 8)
    x64 = x.double()
    ref = x64 / torch.sqrt((x64**2).mean(-1, keepdim=True) + 1e-5) * norm.weight.double()
    assert torch.allclose(norm(x).double(), ref, rtol=1e-6)


def test_rotary_is_a_rotation_depending_on_relative_position():
    cos, sin = rotary_tables(16, 8, 10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i, j):
        qi = apply_rotary(q, cos[i : i + 1], sin[i : i + 1])
        kj = apply_rotary(k, cos[j : j + 1], sin[j : j + 1])
        return (qi * kj).sum().item()

    assert math.isclose(score(3, 1), score(10, 8), rel_tol=1e-5)  # same offset, same score
    rotated = apply_rotary(q, cos[5:6], sin[5:6])
    assert torch.allclose(rotated.norm(), q.norm(), rtol=1e-6)


def test_sequence_longer_than_max_is_rejected():
    model = TinyLM(d_model=16, n_layers=1, n_heads=2, max_seq_len=8)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_bad_config_values():
    with pytest.raises(ValueError, match="Valid activations"):
        LMConfig(activation="tanhh")
    with pytest.raises(ValueError, match="Valid kinds"):
        LMConfig(ffn="moe")
    with pytest.raises(ValueError, match="divisible"):
        LMConfig(d_model=30, n_heads=4)
