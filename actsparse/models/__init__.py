"""Reference models, one idea per file: a tiny LLaMA-style decoder with gated or plain FFNs
(``llama``), MLP and CNN classifiers (``mlp``, ``cnn``); and the models of each method family —
KAN/S-KAN regressors and S-ConvKAN (``kan``), dendritic and k-WTA MLPs (``dendritic``), finite MLPs
with Hermite activations (``hermite_mlp``), ProteinRPN and its GMT baseline (``protein_rpn``).
The family models load on first use (ProteinRPN needs torch_geometric)."""

from actsparse.runtime import lazy_exports
from actsparse.models.cnn import CNN
from actsparse.models.llama import FFN_KINDS, GatedFFN, LMConfig, PlainFFN, TinyLM
from actsparse.models.mlp import MLP

_LAZY = {
    "KAN": "kan", "MLPRegressor": "kan", "PyKAN": "kan", "SConvKAN": "kan",
    "DendriticMLP": "dendritic", "KWinnersMLP": "dendritic", "matched_mlp": "dendritic",
    "HermiteMLP": "hermite_mlp", "ScaledLinear": "hermite_mlp",
    "ProteinRPN": "protein_rpn", "GMTBaseline": "protein_rpn",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = ["CNN", "FFN_KINDS", "GatedFFN", "LMConfig", "MLP", "PlainFFN", "TinyLM", *_LAZY]
