"""LightningModules that train actsparse's reference models."""

from actsparse.tasks.lm import CausalLM, warmup_cosine

__all__ = ["CausalLM", "warmup_cosine"]
