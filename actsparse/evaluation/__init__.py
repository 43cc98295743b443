"""Procedures that drive a model to measure it: PPL-p% sparsity (a search over truncated
forwards) and the joint CETT of the Sparsing Law, neural-code extraction (hash codes),
truncation of weak FFN neurons, and the causal-LM loss they score with.

PPL-p% sparsity is composed of public pieces, one module each: :mod:`.passes` (the dense pass that
records the FFN sites' ``x1`` at real tokens, truncated passes), :mod:`.calibration` (every site's
thresholds of any CETT target, exact on all rows, through
:mod:`actsparse.metrics.functional.cett_calibration`) and :mod:`.bracket_search` (the search for
the crossing). The pure functions they build on are in :mod:`actsparse.metrics.functional`.
"""

# First, before any module of this package: actsparse.metrics's PPLSparsity imports this package's
# modules by their full names, and they count with actsparse.metrics.functional; with metrics
# loaded first, either package can be imported first (as in actsparse.plugins).
import actsparse.metrics  # noqa: F401  isort: skip
from actsparse.evaluation.bracket_search import BracketSearch
from actsparse.evaluation.calibration import Calibration
from actsparse.evaluation.hash_codes import neural_codes
from actsparse.evaluation.joint_cett import (
    ActivationRatioResult,
    JointCETTResult,
    activation_ratio_at_cett,
    joint_cett,
    load_lm,
)
from actsparse.evaluation.lm_loss import batch_mask, causal_lm_loss
from actsparse.evaluation.passes import PreparedModel, dense_pass, prepare_model, truncated_pass
from actsparse.evaluation.perplexity import PerplexityResult, perplexity
from actsparse.evaluation.ppl_sparsity import PPLSparsityResult, ppl_p_sparsity
from actsparse.evaluation.truncation import real_rows, truncate

__all__ = [
    "ActivationRatioResult",
    "BracketSearch",
    "Calibration",
    "JointCETTResult",
    "PPLSparsityResult",
    "PerplexityResult",
    "PreparedModel",
    "activation_ratio_at_cett",
    "batch_mask",
    "causal_lm_loss",
    "dense_pass",
    "joint_cett",
    "load_lm",
    "neural_codes",
    "perplexity",
    "ppl_p_sparsity",
    "prepare_model",
    "real_rows",
    "truncate",
    "truncated_pass",
]
