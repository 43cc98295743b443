"""LightningModules that train actsparse's reference models."""

from actsparse.tasks.classify import Classifier
from actsparse.tasks.lm import CausalLM, warmup_cosine

_LAZY = {
    "Regressor": "regress",
    "ContextClassifier": "continual",
    "SentenceDistillation": "distill",
    "ProteinFunction": "protein",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"actsparse.tasks.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'actsparse.tasks' has no attribute {name!r}")


__all__ = ["CausalLM", "Classifier", "warmup_cosine", *_LAZY]
