"""LightningModules that train actsparse's reference models; a method family's task carries its
name (``skan_regress``, ``dendrites_continual``, ``minilm_distill``, ``protein_rpn``)."""

from actsparse.tasks.classify import Classifier
from actsparse.tasks.dendrites_continual import ContextClassifier
from actsparse.tasks.lm import CausalLM, warmup_cosine
from actsparse.tasks.minilm_distill import SentenceDistillation
from actsparse.tasks.protein_rpn import ProteinFunction
from actsparse.tasks.skan_regress import Regressor

__all__ = ["CausalLM", "Classifier", "ContextClassifier", "ProteinFunction", "Regressor", "SentenceDistillation",
           "warmup_cosine"]
