"""torchmetrics ``Metric`` classes for activation sparsity and neural codes; their pure
functions live in ``actsparse.metrics.functional``. Kept importable without Hydra or wandb."""

from actsparse.metrics.cett import ActivationRatio, ActivationSparsity, PPLSparsity
from actsparse.metrics.dnr import DeadNeuronRate
from actsparse.metrics.hash_codes import CodeCategorization, HashCodePurity, RedundancyRatio

__all__ = [
    "ActivationRatio",
    "ActivationSparsity",
    "CodeCategorization",
    "DeadNeuronRate",
    "HashCodePurity",
    "PPLSparsity",
    "RedundancyRatio",
]
