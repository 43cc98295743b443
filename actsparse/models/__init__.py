"""Reference models: a tiny LLaMA-style decoder with gated or plain FFNs."""

from actsparse.models.llama import FFN_KINDS, GatedFFN, LMConfig, PlainFFN, TinyLM

__all__ = ["FFN_KINDS", "GatedFFN", "LMConfig", "PlainFFN", "TinyLM"]
