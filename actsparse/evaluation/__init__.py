"""Procedures that drive a model to measure it: PPL-p% sparsity (a search over truncated
forwards), neural-code extraction, truncation of weak FFN neurons, and the causal-LM loss they
score with. The pure functions they build on are in :mod:`actsparse.metrics.functional`."""

from actsparse.evaluation.codes import neural_codes
from actsparse.evaluation.joint_cett import (
    ActivationRatioResult,
    JointCETTResult,
    activation_ratio_at_cett,
    joint_cett,
    load_lm,
)
from actsparse.evaluation.lm_loss import batch_mask, causal_lm_loss
from actsparse.evaluation.ppl_sparsity import PPLSparsityResult, ppl_p_sparsity
from actsparse.evaluation.truncation import ffn_sites, truncate

__all__ = [
    "ActivationRatioResult",
    "JointCETTResult",
    "PPLSparsityResult",
    "activation_ratio_at_cett",
    "batch_mask",
    "causal_lm_loss",
    "ffn_sites",
    "joint_cett",
    "load_lm",
    "neural_codes",
    "ppl_p_sparsity",
    "truncate",
]
