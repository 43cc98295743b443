"""Reference models, one idea per file: a tiny LLaMA-style decoder with gated or plain FFNs
(``llama``), MLP and CNN classifiers (``mlp``, ``cnn``); and the models of each method family —
KAN/S-KAN regressors and S-ConvKAN (``kan``), dendritic and k-WTA MLPs (``dendritic``), finite MLPs
with Hermite activations (``hermite_mlp``), ProteinRPN and its GMT baseline (``protein_rpn``).
The family models load on first use (ProteinRPN needs torch_geometric)."""

import importlib

from actsparse.models.cnn import CNN
from actsparse.models.llama import FFN_KINDS, GatedFFN, LMConfig, PlainFFN, TinyLM
from actsparse.models.mlp import MLP

_LAZY = {
    "KAN": "kan", "MLPRegressor": "kan", "PyKAN": "kan", "SConvKAN": "kan",
    "DendriticMLP": "dendritic", "KWinnersMLP": "dendritic", "matched_mlp": "dendritic",
    "HermiteMLP": "hermite_mlp", "ScaledLinear": "hermite_mlp",
    "ProteinRPN": "protein_rpn", "GMTBaseline": "protein_rpn",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"actsparse.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'actsparse.models' has no attribute {name!r}")


__all__ = ["CNN", "FFN_KINDS", "GatedFFN", "LMConfig", "MLP", "PlainFFN", "TinyLM", *_LAZY]
