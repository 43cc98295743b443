"""Pure functions behind the ``actsparse.metrics`` classes."""

from actsparse.metrics.functional.cett import activation_ratio, cett, neuron_norms, threshold_for_cett, truncate
from actsparse.metrics.functional.code_categorization import code_categorization
from actsparse.metrics.functional.dnr import dead_neuron_rate, dead_neurons
from actsparse.metrics.functional.hash_codes import (
    NeuralCodes,
    hash_code_purity,
    neural_codes,
    pack_bits,
    redundancy_ratio,
    unpack_bits,
)
from actsparse.metrics.functional.laws import ActivationLaw, fit_activation_law
from actsparse.metrics.functional.lm_loss import causal_lm_loss
from actsparse.metrics.functional.ppl_sparsity import PPLSparsityResult, ppl_p_sparsity

__all__ = [
    "ActivationLaw",
    "PPLSparsityResult",
    "activation_ratio",
    "causal_lm_loss",
    "cett",
    "fit_activation_law",
    "neuron_norms",
    "ppl_p_sparsity",
    "threshold_for_cett",
    "truncate",
    "NeuralCodes",
    "code_categorization",
    "dead_neuron_rate",
    "dead_neurons",
    "hash_code_purity",
    "neural_codes",
    "pack_bits",
    "redundancy_ratio",
    "unpack_bits",
]
