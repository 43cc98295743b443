"""LightningModules that train actsparse's reference models."""

from actsparse.runtime import lazy_exports
from actsparse.tasks.classify import Classifier
from actsparse.tasks.lm import CausalLM, warmup_cosine

_LAZY = {
    "Regressor": "regress",
    "ContextClassifier": "continual",
    "SentenceDistillation": "distill",
    "ProteinFunction": "protein",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = ["CausalLM", "Classifier", "warmup_cosine", *_LAZY]
