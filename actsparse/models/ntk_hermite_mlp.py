"""Finite MLPs with the activations of the infinite-width theory (issue 15, DESIGN §4).

``HermiteMLP(activation=...)`` stacks ``depth`` hidden layers ``Linear -> activation`` and a
linear head, in NTK parametrization by default: weights ~ N(0, 1), each layer multiplies by
``gain / sqrt(fan_in)`` (the first layer by 1: inputs on the unit sphere already give unit-variance
pre-activations), no biases. With ``gain = 1 / sqrt(E[phi(g)^2])`` (sqrt(2) for ReLU, 1 for a
normalized Hermite expansion) its NNGP and NTK as width -> infinity are exactly
``nngp_kernel(xi, depth, activation)`` and ``ntk_kernel(xi, depth, activation)``
(``tests/models/test_ntk_hermite.py`` checks the NTK with torch.func). ``parametrization="standard"``
gives the same function at initialization with the scale moved into the weights (the usual
PyTorch training dynamics).

Activations: ``relu`` (``nn.ReLU``); any dual with a finite Hermite expansion (``opt2``, ``opt3``,
``opt5``, ``opt9``, ``optimal_<d>``, ``hermite_<k>``, a list of normalized coefficients) as
:class:`~actsparse.plugins.ntk.hermite.HermiteActivation`; any other registered dual with a known
activation (``erf``, ``sine_<a>``) as :class:`DualActivationModule`. All are bare activation sites.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from actsparse.plugins.ntk.duals import dual_activation
from actsparse.plugins.ntk.hermite import HermiteActivation
from actsparse.plugins.sites import register_activation_type

PARAMETRIZATIONS = ("ntk", "standard")


class ScaledLinear(nn.Module):
    """``x W^T * multiplier`` (+ bias) with ``W ~ N(0, 1)`` (NTK) or ``W ~ N(0, multiplier^2)`` (standard)."""

    def __init__(self, fan_in: int, fan_out: int, multiplier: float, ntk: bool = True, bias: bool = False) -> None:
        super().__init__()
        self.multiplier = float(multiplier) if ntk else 1.0
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in) * (1.0 if ntk else float(multiplier)))
        self.bias = nn.Parameter(torch.zeros(fan_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight) * self.multiplier
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, multiplier={self.multiplier:.4g}"


class DualActivationModule(nn.Module):
    """The unit-variance activation ``phi`` of a registered dual (``erf``, ``sine_<a>``), whose
    dual ``E[phi(u) phi(v)]`` is the named one, as a module."""

    def __init__(self, name: str) -> None:
        super().__init__()
        dual = dual_activation(name)
        if dual.activation is None:
            raise ValueError(f"The dual {dual.name!r} has no known activation, so no network can use it.")
        self.name, self.fn = dual.name, dual.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


register_activation_type(DualActivationModule)


def make_theory_activation(activation: str | Sequence[float]) -> tuple[nn.Module, float]:
    """The activation module for a dual name and its gain ``1 / sqrt(E[phi(g)^2])``."""
    if isinstance(activation, str) and activation.strip().lower() == "relu":
        return nn.ReLU(), math.sqrt(2.0)
    try:
        if not isinstance(activation, str):
            return HermiteActivation([float(c) for c in activation]), 1.0
        if dual_activation(activation).hermite_coeffs is not None:
            return HermiteActivation.from_name(activation), 1.0
        return DualActivationModule(activation), 1.0  # erf, sine_<a>: normalized to unit variance
    except ValueError as err:
        raise ValueError(
            f"HermiteMLP activation {activation!r}: {err} Supported: relu, erf, sine_<a>, opt2, opt3, opt5, "
            "opt9, optimal_<d>, hermite_<k>, or normalized Hermite coefficients."
        ) from None


class HermiteMLP(nn.Module):
    """MLP whose wide limit is the deep NNGP/NTK of its activation (see the module docstring).

    Example:
        >>> from actsparse.plugins import find_sites
        >>> net = HermiteMLP(in_features=3, width=16, depth=2, activation="opt3")
        >>> [type(s.activation).__name__ for s in find_sites(net)]
        ['HermiteActivation', 'HermiteActivation']
        >>> net(torch.nn.functional.normalize(torch.randn(4, 3), dim=1)).shape
        torch.Size([4, 2])
    """

    def __init__(self, in_features: int = 3, width: int = 256, depth: int = 2, num_classes: int = 2,
                 activation: str | Sequence[float] = "relu", parametrization: str = "ntk", bias: bool = False) -> None:
        super().__init__()
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}.")
        if min(in_features, width, depth, num_classes) < 1:
            raise ValueError(f"HermiteMLP needs positive sizes, got in={in_features}, width={width}, "
                             f"depth={depth}, classes={num_classes}.")
        ntk = parametrization == "ntk"
        layers: list[nn.Module] = []
        fan_in, gain = in_features, 1.0
        for i in range(depth):
            act, act_gain = make_theory_activation(activation)
            multiplier = 1.0 if i == 0 else gain / math.sqrt(fan_in)
            layers += [ScaledLinear(fan_in, width, multiplier, ntk, bias), act]
            fan_in, gain = width, act_gain
        layers.append(ScaledLinear(fan_in, num_classes, gain / math.sqrt(fan_in), ntk, bias))
        self.layers = nn.Sequential(*layers)
        self._config = dict(in_features=in_features, width=width, depth=depth, num_classes=num_classes,
                            activation=activation if isinstance(activation, str) else list(activation),
                            parametrization=parametrization, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def hparams_dict(self) -> dict[str, Any]:
        return dict(self._config)
