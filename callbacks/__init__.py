"""Lightning callbacks. Each is resumable (``state_dict``/``load_state_dict``) and logs through
``trainer.loggers``."""

from actsparse.callbacks.monitors import MetricHistory
from actsparse.callbacks.summary import RunSummary

__all__ = ["MetricHistory", "RunSummary"]
