"""torchmetrics ``Metric`` classes; each is a thin class over a pure function of
``actsparse.metrics.functional`` (the counting rule: :mod:`actsparse.metrics.functional.sparsity`).
Kept importable without Hydra or wandb.

Model-driving procedures live in :mod:`actsparse.evaluation`; ``ppl_p_sparsity`` is re-exported
here beside :class:`PPLSparsity` because DESIGN §3 lists it with the metrics.

Import order: :mod:`.functional` depends on nothing else of actsparse and loads first; the
classes then use :mod:`actsparse.plugins` (sites, recording) and :mod:`actsparse.evaluation`,
which count with :mod:`.functional`. ``actsparse.plugins`` imports this package before its own
modules, so either package can be imported first.
"""

from actsparse.metrics import functional  # noqa: F401  (first: what plugins and evaluation count with)
from actsparse.metrics.cett import CETT
from actsparse.metrics.go_terms import AUPR, Fmax, Smin
from actsparse.metrics.hash_codes import CodeCategorization, HashCodePurity, RedundancyRatio
from actsparse.metrics.sparsity import ActivationRatio, ActivationSparsity, DeadNeuronRate
from actsparse.metrics.ppl_sparsity import PPLSparsity
from actsparse.evaluation.ppl_sparsity import PPLSparsityResult, ppl_p_sparsity

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
