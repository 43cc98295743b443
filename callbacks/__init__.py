"""Lightning callbacks. Each is resumable (``state_dict``/``load_state_dict``) and logs through
``trainer.loggers`` (``LightningModule.log``)."""

from actsparse.callbacks.dnr import DeadNeuronMonitor
from actsparse.callbacks.early_stopping import EarlyStopping
from actsparse.callbacks.evaluator import SparsityEvaluator
from actsparse.callbacks.hash_codes import HashCodeMonitor
from actsparse.callbacks.history import Curves, MetricHistory
from actsparse.callbacks.prosparse import ProSparse
from actsparse.callbacks.pruning import ActivatingWhilePruning, IterativeMagnitudePruning
from actsparse.callbacks.skan import SKANTraining
from actsparse.callbacks.sparsity import SparsityMonitor
from actsparse.callbacks.summary import RunSummary
from actsparse.callbacks.swap import ActivationSwap
from actsparse.callbacks.threshold import ThresholdShift

__all__ = [
    "ActivatingWhilePruning",
    "ActivationSwap",
    "Curves",
    "DeadNeuronMonitor",
    "EarlyStopping",
    "HashCodeMonitor",
    "IterativeMagnitudePruning",
    "MetricHistory",
    "ProSparse",
    "RunSummary",
    "SKANTraining",
    "SparsityEvaluator",
    "SparsityMonitor",
    "ThresholdShift",
]
