"""torchmetrics ``Metric`` classes; each is a thin class over a pure function of
``actsparse.metrics.functional`` (the counting rule: :mod:`actsparse.metrics.functional.sparsity`).
Kept importable without Hydra or wandb.

Model-driving procedures live in :mod:`actsparse.evaluation`; ``ppl_p_sparsity`` is re-exported
here beside :class:`PPLSparsity` because DESIGN §3 lists it with the metrics.
"""

from actsparse.runtime import lazy_exports
from actsparse.metrics.cett import CETT
from actsparse.metrics.go_terms import AUPR, Fmax, Smin
from actsparse.metrics.hash_codes import CodeCategorization, HashCodePurity, RedundancyRatio
from actsparse.metrics.sparsity import ActivationRatio, ActivationSparsity, DeadNeuronRate

# PPL-p% drives a model through the activation sites (plugins), which themselves count with
# actsparse.metrics.functional: loaded on first use so the two packages import in any order.
_LAZY = {
    "PPLSparsity": "actsparse.metrics.ppl_sparsity",
    "PPLSparsityResult": "actsparse.evaluation.ppl_sparsity",
    "ppl_p_sparsity": "actsparse.evaluation.ppl_sparsity",
}


__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "AUPR",
    "ActivationRatio",
    "ActivationSparsity",
    "CETT",
    "CodeCategorization",
    "DeadNeuronRate",
    "Fmax",
    "HashCodePurity",
    "PPLSparsity",
    "PPLSparsityResult",
    "RedundancyRatio",
    "Smin",
    "ppl_p_sparsity",
]
