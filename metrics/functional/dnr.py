"""Dynamic dead neuron rate (DNR, DESIGN §4): the fraction of (sample, neuron) outputs of an
activation that are exactly zero, and the neurons that stayed zero on every sample."""

from __future__ import annotations

import torch

from actsparse.plugins.recording import as_rows


def dead_neuron_rate(activations: torch.Tensor) -> torch.Tensor:
    """Fraction of entries of ``activations`` (the output of a ReLU-like activation) that are
    exactly zero, as a float64 0-dim tensor. Every entry counts once, whatever the shape.

    Example:
        >>> dead_neuron_rate(torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, 0.0]]))
        tensor(0.6667, dtype=torch.float64)
    """
    if activations.numel() == 0:
        raise ValueError("dead_neuron_rate needs a non-empty tensor of activations.")
    zeros = activations.numel() - torch.count_nonzero(activations)
    return zeros.double() / activations.numel()


def dead_neurons(activations: torch.Tensor) -> torch.Tensor:
    """Which neurons are zero on every row: a bool ``[units]`` mask.

    Rows and units follow :func:`actsparse.plugins.recording.as_rows`: ``[..., f]`` has ``f``
    neurons (one row per sample or token); a 4+-dim CNN output ``[B, C, H, W]`` has ``C*H*W``
    (one neuron per channel and position).

    Example:
        >>> dead_neurons(torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, 0.0]]))
        tensor([False, False,  True])
    """
    if activations.numel() == 0:
        raise ValueError("dead_neurons needs a non-empty tensor of activations.")
    return torch.count_nonzero(as_rows(activations), dim=0) == 0
