"""Pure functions behind the ``actsparse.metrics`` classes: tensors (or arrays) in, tensors out; no
model, no collectives, no plotting. The one counting rule (active ⇔ ``|x| > threshold``) is in
:mod:`actsparse.metrics.functional.sparsity`.

Procedures that run a model (``ppl_p_sparsity``, ``neural_codes``, ``truncate``,
``causal_lm_loss``) are in :mod:`actsparse.evaluation`. This subpackage imports nothing else of
actsparse, so plugins and evaluation can count with it while :mod:`actsparse.metrics` loads.
"""

from actsparse.metrics.functional.cett import (
    CETTCurve,
    CETTRows,
    bisect_thresholds,
    candidate_values,
    cett,
    cett_curve,
    cett_rows,
    check_cett_targets,
    neuron_norms,
    per_token_cett,
    threshold_for_cett,
)
from actsparse.metrics.functional.cett_calibration import MemoBisection, SiteCalibration, calibrate_thresholds
from actsparse.metrics.functional.code_categorization import code_categorization
from actsparse.metrics.functional.go_ontology import ancestor_matrix, information_content, propagate
from actsparse.metrics.functional.go_terms import (
    aupr,
    average_precision,
    fmax,
    fmax_result,
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
    SparsityCounts,
    activation_ratio,
    activation_sparsity,
    active_mask,
    as_rows,
    check_threshold,
    count_active,
    dead_neuron_rate,
    dead_neurons,
    sparsity_counts,
)

__all__ = [
    "ActivationLaw",
    "CETTCurve",
    "CETTRows",
    "MemoBisection",
    "SiteCalibration",
    "NeuralCodes",
    "SparsityCounts",
    "activation_ratio",
    "aupr",
    "average_precision",
    "activation_sparsity",
    "active_mask",
    "ancestor_matrix",
    "as_rows",
    "bisect_thresholds",
    "calibrate_thresholds",
    "candidate_values",
    "cett",
    "cett_curve",
    "cett_rows",
    "check_cett_targets",
    "check_threshold",
    "code_buckets",
    "code_categorization",
    "drop_constant_units",
    "count_active",
    "dead_neuron_rate",
    "dead_neurons",
    "fit_activation_law",
    "fmax",
    "fmax_result",
    "hash_code_purity",
    "information_content",
    "neuron_norms",
    "pack_codes",
    "per_token_cett",
    "precision_recall_curve_go",
    "propagate",
    "redundancy_ratio",
    "smin",
    "sparsity_counts",
    "threshold_for_cett",
    "unpack_codes",
    "varying_units",
]
