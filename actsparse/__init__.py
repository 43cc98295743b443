"""actsparse: activation sparsity for PyTorch Lightning.

Subpackages: ``actsparse.callbacks`` (Lightning callbacks), ``actsparse.metrics``
(torchmetrics), ``actsparse.plugins`` (what plugs into a model), ``actsparse.conf`` (Hydra
configs, ``pkg://actsparse.conf``), and the core here: models, data, tasks, the CLI.
Importing ``actsparse`` itself stays light (no Hydra, no wandb).
"""

__version__ = "0.1.0"
