"""Reference models, one idea per file: a tiny LLaMA-style decoder with gated or plain FFNs
(``llama``), MLP and CNN classifiers (``mlp``, ``cnn``); and the models of each method family,
each file named after its method: KAN/S-KAN regressors and S-ConvKAN (``skan``), dendritic and
k-WTA MLPs (``dendrites``), finite MLPs with Hermite activations (``ntk_hermite_mlp``),
ProteinRPN and its GMT baseline (``protein_rpn``)."""

from actsparse.models.cnn import CNN
from actsparse.models.dendrites import DendriticMLP, KWinnersMLP, matched_mlp
from actsparse.models.llama import FFN_KINDS, GatedFFN, LMConfig, PlainFFN, TinyLM
from actsparse.models.mlp import MLP
from actsparse.models.ntk_hermite_mlp import HermiteMLP, ScaledLinear
from actsparse.models.protein_rpn import GMTBaseline, ProteinRPN
from actsparse.models.skan import KAN, MLPRegressor, PyKAN, SConvKAN
from actsparse.models.smollm2 import KNOWN_MODELS, PretrainedSpec, check_tokenizer, load_pretrained, load_tokenizer

__all__ = [
    "KNOWN_MODELS", "PretrainedSpec", "check_tokenizer", "load_pretrained", "load_tokenizer",
    "CNN",
    "DendriticMLP",
    "FFN_KINDS",
    "GMTBaseline",
    "GatedFFN",
    "HermiteMLP",
    "KAN",
    "KWinnersMLP",
    "LMConfig",
    "MLP",
    "MLPRegressor",
    "PlainFFN",
    "ProteinRPN",
    "PyKAN",
    "SConvKAN",
    "ScaledLinear",
    "TinyLM",
    "matched_mlp",
]
