"""What plugs into a model: activation functions (and, as they land, activation sites,
the sparse FFN module, KAN layers, dendrites, SDR theory and NTK kernels).

Kept importable without Hydra or wandb: the GPU machine has neither.
"""

from actsparse.plugins.activations import ACTIVATIONS, FATReLU, make_activation

__all__ = ["ACTIVATIONS", "FATReLU", "make_activation"]
