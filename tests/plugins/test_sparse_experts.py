"""SparseExperts: fused mixture-of-experts modules converted to per-expert sparse FFNs (issue 27 item 3).

References are the dense models themselves (transformers' eager experts loop) and a hand-written
loop over tokens and their routed experts from the dense module's own 3-D weights.
"""

from __future__ import annotations

import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")
from actsparse.plugins import (
    NoSitesError,
    convert_to_sparse,
    find_sites,
    swap_activation,
)
from actsparse.plugins.sites import EXPERT_FFN
from actsparse.plugins.sparse_experts import SparseExperts, UnsupportedExperts
from actsparse.plugins.sparse_ffn import SparseFFN
from transformers import AutoModelForCausalLM, MixtralConfig, Qwen2MoeConfig

COMMON = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
          "head_dim": 8, "vocab_size": 64, "max_position_embeddings": 32, "num_experts_per_tok": 2,
          "use_cache": False, "pad_token_id": 0, "tie_word_embeddings": False}


def tiny(family: str, dtype=torch.float64, act: str = "relu") -> torch.nn.Module:
    if family == "mixtral":
        cfg = MixtralConfig(**COMMON, hidden_act=act, intermediate_size=24, num_local_experts=4)
    else:
        cfg = Qwen2MoeConfig(**COMMON, hidden_act=act, intermediate_size=24, moe_intermediate_size=20,
                             shared_expert_intermediate_size=12, num_experts=4, decoder_sparse_step=1)
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():  # widen the init so that roughly half the ReLU neurons are active
            p.normal_(0, 0.3)
    return model


def ids() -> torch.Tensor:
    return torch.randint(1, 64, (2, 7), generator=torch.Generator().manual_seed(3))


def experts_modules(model):
    return [m for m in model.modules() if type(m).__name__ in ("MixtralExperts", "Qwen2MoeExperts")]


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_converted_logits_equal_dense(family, dtype, atol):
    model = tiny(family, dtype)
    with torch.no_grad():
        dense = model(input_ids=ids()).logits
        # float64 has no compiled CPU kernel: the reference path (same math); float32 the kernels
        backend = "reference" if dtype == torch.float64 else "auto"
        converted = convert_to_sparse(model, inplace=False, backend=backend)
        sparse = converted(input_ids=ids()).logits
    replaced = [m for m in converted.modules() if isinstance(m, SparseExperts)]
    assert len(replaced) == 2 and not experts_modules(converted)
    assert all(m.num_experts == 4 and m.gated for m in replaced)
    if family == "qwen2_moe":  # the shared expert is an ordinary gated FFN
        assert sum(isinstance(m, SparseFFN) for m in converted.modules()) == 2
    with pytest.raises(NoSitesError):  # nothing left to convert
        find_sites(converted)
    assert (dense - sparse).abs().max() <= atol * max(1.0, float(dense.abs().max()))
    assert not torch.equal(dense, tiny(family, dtype, act="silu")(input_ids=ids()).logits)  # ReLU matters


def test_fatrelu_threshold_carried():
    model = tiny("mixtral")
    swap_activation(model, "fatrelu", threshold=0.3)
    with torch.no_grad():
        dense = model(input_ids=ids()).logits
        converted = convert_to_sparse(model, inplace=False, backend="reference")
        sparse = converted(input_ids=ids()).logits
    assert all(m.threshold == 0.3 for m in converted.modules() if isinstance(m, SparseExperts))
    torch.testing.assert_close(sparse, dense, atol=1e-10, rtol=0)
    swap_activation(model, "relu")
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids()).logits, dense)  # the threshold changes the output


def test_module_against_hand_loop():
    """One experts module against a loop over tokens and their routed experts, written from its weights."""
    experts = tiny("mixtral").model.layers[0].mlp.experts
    sparse = SparseExperts.from_dense(experts, backend="reference")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 16, generator=g, dtype=torch.float64)
    idx = torch.stack([torch.randperm(4, generator=g)[:2] for _ in range(9)])
    w = torch.rand(9, 2, generator=g, dtype=torch.float64)
    f = experts.down_proj.shape[2]
    want = torch.zeros_like(x)
    for t in range(9):
        for k in range(2):
            gate_up = experts.gate_up_proj[int(idx[t, k])].detach()
            h = torch.relu(gate_up[:f] @ x[t]) * (gate_up[f:] @ x[t])
            want[t] += w[t, k] * (experts.down_proj[int(idx[t, k])].detach() @ h)
    with torch.no_grad():
        got = sparse(x, idx, w)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    assert float((got - want).abs().max()) < 1e-10 < float(want.abs().max())


def test_non_relu_experts_refused():
    model = tiny("mixtral", act="silu")
    experts = model.model.layers[0].mlp.experts
    with pytest.raises(TypeError, match=r"MixtralExperts's experts use SiLU.*swap_activation"):
        SparseExperts.from_dense(experts)
    with pytest.raises(TypeError, match="MixtralExperts"):
        convert_to_sparse(model, inplace=False)


class OtherExperts(torch.nn.Module):
    """Fused 3-D expert weights, but a forward of another signature: not the routed loop."""

    def __init__(self, dense) -> None:
        super().__init__()
        self.gate_up_proj, self.down_proj, self.act_fn = dense.gate_up_proj, dense.down_proj, dense.act_fn
        self.inner = [dense]

    def forward(self, hidden_states, routing):
        return self.inner[0](hidden_states, *routing)


def test_other_structure_stays_dense(caplog):
    model = tiny("qwen2_moe")
    for layer in model.model.layers:
        layer.mlp.experts = OtherExperts(layer.mlp.experts)
    with pytest.raises(UnsupportedExperts, match=r"OtherExperts.forward takes \(hidden_states, routing\)"):
        SparseExperts.from_dense(model.model.layers[0].mlp.experts)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        converted = convert_to_sparse(model, inplace=False)
    assert "stay dense" in caplog.text and "OtherExperts.forward takes" in caplog.text
    assert all(isinstance(layer.mlp.experts, OtherExperts) for layer in converted.model.layers)
    assert all(isinstance(layer.mlp.shared_expert, SparseFFN) for layer in converted.model.layers)
    mixtral = tiny("mixtral")
    for layer in mixtral.model.layers:
        layer.mlp.experts = OtherExperts(layer.mlp.experts)
    with pytest.raises(NoSitesError, match="all mixture-of-experts experts"):
        convert_to_sparse(mixtral, inplace=False)


def test_partial_selection_refused():
    model = tiny("mixtral")
    names = [s.name for s in find_sites(model) if s.kind == EXPERT_FFN]
    assert names[0].endswith("experts.0")
    with pytest.raises(ValueError, match=r"3 of the 4 experts of MixtralExperts.*select all"):
        convert_to_sparse(model, exclude=[names[0]], inplace=False)
    layer0 = [n for n in names if ".layers.0." in n]
    converted = convert_to_sparse(model, include=layer0, inplace=False)
    assert isinstance(converted.model.layers[0].mlp.experts, SparseExperts)
    assert not isinstance(converted.model.layers[1].mlp.experts, SparseExperts)
