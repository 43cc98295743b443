"""LightningModules that train actsparse's reference models."""

from actsparse.tasks.classify import Classifier
from actsparse.tasks.lm import CausalLM, warmup_cosine

__all__ = ["CausalLM", "Classifier", "warmup_cosine"]
