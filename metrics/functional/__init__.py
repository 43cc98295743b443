"""Pure functions behind the ``actsparse.metrics`` classes."""

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

__all__ = [
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
