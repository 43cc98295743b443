"""Pure functions behind the ``actsparse.metrics`` classes: tensors (or arrays) in, tensors out; no
model, no collectives, no plotting. The one counting rule (active ⇔ ``|x| > threshold``) is in
:mod:`actsparse.metrics.functional.sparsity`.

Procedures that run a model (``ppl_p_sparsity``, ``neural_codes``, ``truncate``,
``causal_lm_loss``) are in :mod:`actsparse.evaluation`; importing them from here still works
(forwarded lazily, for code written before the move).
"""

from actsparse.runtime import lazy_exports
from actsparse.metrics.functional.cett import candidate_values, cett, neuron_norms, threshold_for_cett
from actsparse.metrics.functional.code_categorization import code_categorization
from actsparse.metrics.functional.go_terms import (
    aupr,
    average_precision,
    fmax,
    information_content,
    precision_recall_curve_go,
    smin,
)
from actsparse.metrics.functional.hash_codes import (
    NeuralCodes,
    code_buckets,
    drop_constant_units,
    hash_code_purity,
    pack_codes,
    redundancy_ratio,
    unpack_codes,
    varying_units,
)
from actsparse.metrics.functional.laws import ActivationLaw, fit_activation_law
from actsparse.metrics.functional.sparsity import (
    activation_ratio,
    activation_sparsity,
    active_mask,
    as_rows,
    count_active,
    dead_neuron_rate,
    dead_neurons,
)

_MOVED = ("ppl_p_sparsity", "PPLSparsityResult", "neural_codes", "truncate", "causal_lm_loss")
__getattr__ = lazy_exports(__name__, dict.fromkeys(_MOVED, "actsparse.evaluation"))


__all__ = [
    "ActivationLaw",
    "NeuralCodes",
    "activation_ratio",
    "aupr",
    "average_precision",
    "activation_sparsity",
    "active_mask",
    "as_rows",
    "candidate_values",
    "cett",
    "code_buckets",
    "code_categorization",
    "drop_constant_units",
    "count_active",
    "dead_neuron_rate",
    "dead_neurons",
    "fit_activation_law",
    "fmax",
    "hash_code_purity",
    "information_content",
    "neuron_norms",
    "pack_codes",
    "precision_recall_curve_go",
    "redundancy_ratio",
    "smin",
    "threshold_for_cett",
    "unpack_codes",
    "varying_units",
]
