"""KAN regularization (KAN paper, eqs. 2.17–2.20): L1 of the edge functions plus their entropy.

For a layer with edges ``phi_ji``: ``|phi_ji|_1 = mean_n |phi_ji(x_n)|``, ``|Φ|_1 = Σ_ji |phi_ji|_1``,
``S(Φ) = -Σ_ji (|phi_ji|_1/|Φ|_1)·log(|phi_ji|_1/|Φ|_1)``; the penalty is
``μ_1·Σ_layers |Φ|_1 + μ_2·Σ_layers S(Φ)``, computed on each layer's last training input.
"""

from __future__ import annotations

import torch
from torch import nn

from actsparse.plugins.kan.layers import skan_layers


def edge_l1_entropy(edge_l1: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """``(|Φ|_1, S(Φ))`` from per-edge L1 norms ``[out, in]`` (natural log)."""
    total = edge_l1.sum()
    p = edge_l1 / (total + eps)
    return total, -(p * torch.log(p + eps)).sum()


def kan_regularization(model: nn.Module, l1: float = 1.0, entropy: float = 2.0) -> torch.Tensor:
    """``l1·Σ|Φ|_1 + entropy·ΣS(Φ)`` over every KAN layer of ``model``, on the inputs of its last
    training forward (call it after the forward, before backward). pykan's defaults: 1 and 2.

    Example:
        >>> from actsparse.plugins.kan import SKANLinear
        >>> net = nn.Sequential(SKANLinear(2, 3, spaces=["rbf"]), SKANLinear(3, 1, spaces=["rbf"]))
        >>> _ = net(torch.randn(8, 2))
        >>> kan_regularization(net).shape
        torch.Size([])
    """
    layers = skan_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no KAN layer to regularize.")
    reg = torch.zeros((), device=next(model.parameters()).device)
    for name, layer in layers:
        if layer._last_input is None:
            raise RuntimeError(f"KAN layer {name!r} has not run a training forward yet; call the model first.")
        norm, ent = edge_l1_entropy(layer.edge_l1())
        reg = reg + l1 * norm + entropy * ent
    return reg
