"""Reference models: a tiny LLaMA-style decoder with gated or plain FFNs; MLP and CNN classifiers."""

from actsparse.models.llama import FFN_KINDS, GatedFFN, LMConfig, PlainFFN, TinyLM
from actsparse.models.cnn import CNN
from actsparse.models.mlp import MLP

__all__ = ["CNN", "FFN_KINDS", "GatedFFN", "LMConfig", "MLP", "PlainFFN", "TinyLM"]
