"""Context-gated MLPs with active dendrites and k-WTA, and the plain MLP of the same size.

``DendriticMLP``: ``depth`` hidden layers ``DendriticLayer -> KWinners`` (each unit gated by its
strongest segment's response to the context, then the top ``percent_on`` units kept), then a
linear head. ``matched_mlp`` builds an ordinary ReLU :class:`~actsparse.models.mlp.MLP` whose
width gives the same number of effective parameters (trainable weights that can be nonzero:
the dendritic model's pruned segment synapses do not count).

Both take ``model(x, context)``; the plain MLP ignores the context (:class:`ContextFree`).
:func:`continual_model` builds any arm of the continual-learning study from one set of
architecture keys, so the baselines follow every change to the dendritic network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from actsparse.models.mlp import MLP
from actsparse.plugins.dendrites.kwinners import KWinners
from actsparse.plugins.dendrites.segments import DendriticLayer, kept_count

__all__ = [
    "ARMS",
    "ContextFree",
    "DendriticMLP",
    "KWinnersMLP",
    "continual_model",
    "dendritic_parameter_count",
    "effective_parameters",
    "matched_mlp",
]

ARMS = ("dendritic", "mlp", "kwta_mlp")


def effective_parameters(model: nn.Module) -> int:
    """Trainable weights that can be nonzero: every parameter, less pruned segment and
    feed-forward synapses (the fair size to match a dense baseline to)."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for module in model.modules():
        if isinstance(module, DendriticLayer):
            total -= int((~module.segment_mask).sum()) + int((~module.ff_mask).sum())
    return total


class DendriticMLP(nn.Module):
    """MLP whose hidden layers are ``DendriticLayer -> KWinners``.

    Args:
        context_dim: size of the context vector (the input size for prototype contexts, the number
            of tasks for one-hot task ids).
        widths: hidden widths (or ``width`` x ``depth``).
        num_segments: dendritic segments per unit; ``weight_sparsity``: fraction of zero segment
            weights; ``ff_weight_sparsity``: fraction of zero feed-forward weights of the hidden
            layers (the authors' 0.5); ``percent_on``: k-WTA density; ``boost_strength``, ``boost_strength_factor``,
            ``duty_cycle_period``, ``k_inference_factor``: see :class:`KWinners`.

    Example:
        >>> from actsparse.plugins import find_sites
        >>> net = DendriticMLP(context_dim=3, width=32, depth=2, num_segments=3)
        >>> [s.name for s in find_sites(net)]
        ['blocks.0.dendrites', 'blocks.0.kwinners', 'blocks.1.dendrites', 'blocks.1.kwinners']
        >>> net(torch.randn(5, 64), torch.eye(3)[[0, 1, 2, 0, 1]]).shape
        torch.Size([5, 10])
    """

    uses_context = True

    def __init__(self, in_features: int = 64, context_dim: int = 5, width: int = 128, depth: int = 2,
                 num_classes: int = 10, num_segments: int = 5, weight_sparsity: float = 0.5,
                 percent_on: float = 0.1, boost_strength: float = 1.0, boost_strength_factor: float = 1.0,
                 duty_cycle_period: int = 1000, k_inference_factor: float = 1.0,
                 widths: Sequence[int] | None = None, seed: int | None = None,
                 ff_weight_sparsity: float = 0.0) -> None:
        super().__init__()
        widths = [int(w) for w in widths] if widths is not None else [int(width)] * int(depth)
        if not widths or min(widths) < 1 or in_features < 1 or num_classes < 1:
            raise ValueError(f"DendriticMLP needs at least one hidden layer and positive sizes, got widths={widths}.")
        self.context_dim = int(context_dim)
        self._config = dict(in_features=in_features, context_dim=context_dim, widths=widths, num_classes=num_classes,
                            num_segments=num_segments, weight_sparsity=weight_sparsity,
                            ff_weight_sparsity=ff_weight_sparsity, percent_on=percent_on,
                            boost_strength=boost_strength, boost_strength_factor=boost_strength_factor,
                            duty_cycle_period=duty_cycle_period, k_inference_factor=k_inference_factor)
        blocks = []
        fan_in = in_features
        for i, w in enumerate(widths):
            blocks.append(nn.ModuleDict({
                "dendrites": DendriticLayer(fan_in, w, num_segments, context_dim, weight_sparsity,
                                            seed=None if seed is None else seed + i,
                                            ff_weight_sparsity=ff_weight_sparsity),
                "kwinners": KWinners(w, percent_on=percent_on, boost_strength=boost_strength,
                                     boost_strength_factor=boost_strength_factor,
                                     duty_cycle_period=duty_cycle_period, k_inference_factor=k_inference_factor),
            }))
            fan_in = w
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(fan_in, num_classes)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1) if x.dim() > 2 else x
        for block in self.blocks:
            h = block["kwinners"](block["dendrites"](h, context))
        return self.head(h)

    def update_boost_strength(self) -> None:
        """Decay every k-WTA's boost strength (call once per epoch)."""
        for block in self.blocks:
            block["kwinners"].update_boost_strength()

    def config_dict(self) -> dict[str, Any]:
        return {"kind": "dendritic", **self._config, "widths": list(self._config["widths"])}

    def num_parameters(self) -> int:
        return effective_parameters(self)


class ContextFree(nn.Module):
    """Wraps a model of ``x`` alone so it can be called as ``model(x, context)`` (context ignored).
    ``update_boost_strength`` is passed on when the wrapped model has it."""

    uses_context = False

    def __init__(self, model: nn.Module, kind: str = "context_free") -> None:
        super().__init__()
        self.model, self.kind = model, kind

    def config_dict(self) -> dict[str, Any]:
        inner = self.model.config_dict() if hasattr(self.model, "config_dict") else {}
        return {**inner, "kind": self.kind, "wrapped": inner.get("kind")}

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x)

    def num_parameters(self) -> int:
        return effective_parameters(self)


class KWinnersMLP(nn.Module):
    """``depth`` hidden layers ``Linear -> KWinners`` (no dendrites, no context), a linear head:
    the k-WTA-only ablation of :class:`DendriticMLP`.

    Example:
        >>> net = KWinnersMLP(width=20, depth=2, percent_on=0.25, boost_strength=0.0)
        >>> [int((h != 0).sum()) for h in net.hidden_outputs(torch.randn(1, 64))]
        [5, 5]
    """

    def __init__(self, in_features: int = 64, width: int = 128, depth: int = 2, num_classes: int = 10,
                 percent_on: float = 0.1, boost_strength: float = 1.0, boost_strength_factor: float = 1.0,
                 duty_cycle_period: int = 1000, k_inference_factor: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        fan_in = in_features
        for _ in range(int(depth)):
            layers += [nn.Linear(fan_in, width),
                       KWinners(width, percent_on=percent_on, boost_strength=boost_strength,
                                boost_strength_factor=boost_strength_factor, duty_cycle_period=duty_cycle_period,
                                k_inference_factor=k_inference_factor)]
            fan_in = width
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(fan_in, num_classes)
        self.widths = [int(width)] * int(depth)

    def hidden_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs, h = [], x.flatten(1) if x.dim() > 2 else x
        for layer in self.layers:
            h = layer(h)
            if isinstance(layer, KWinners):
                outs.append(h)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x.flatten(1) if x.dim() > 2 else x))

    def update_boost_strength(self) -> None:
        for layer in self.layers:
            if isinstance(layer, KWinners):
                layer.update_boost_strength()

    def config_dict(self) -> dict[str, Any]:
        return {"kind": "kwinners_mlp", "widths": list(self.widths)}


def matched_mlp(reference: nn.Module | int, in_features: int = 64, depth: int = 2, num_classes: int = 10,
                activation: str = "relu", percent_on: float | None = None, boost_strength: float = 1.0,
                boost_strength_factor: float = 1.0) -> ContextFree:
    """A plain ``depth``-layer MLP whose width makes its parameter count closest to
    ``reference`` (a model, counted with :func:`effective_parameters`, or a count).

    With ``percent_on`` the hidden layers are ``Linear -> KWinners`` (:class:`KWinnersMLP`, the
    k-WTA-only ablation; k-WTA has no parameters, so the width is the same).

    Example:
        >>> ref = DendriticMLP(context_dim=5, width=64, depth=2, num_segments=5)
        >>> mlp = matched_mlp(ref)
        >>> abs(mlp.num_parameters() - ref.num_parameters()) / ref.num_parameters() < 0.01
        True
    """
    target = reference if isinstance(reference, int) else effective_parameters(reference)

    def count(w: int) -> int:  # in·w + w, then (depth − 1)·(w² + w), then w·classes + classes
        return (in_features + 1) * w + (depth - 1) * (w * w + w) + (w + 1) * num_classes

    if depth == 1:
        guess = (target - num_classes) / (in_features + 1 + num_classes)
    else:  # solve (depth−1)·w² + (in + depth + classes)·w + classes = target
        qa, qb, qc = depth - 1, in_features + depth + num_classes, num_classes - target
        guess = (-qb + math.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa)
    width = min((max(1, math.floor(guess)), max(1, math.ceil(guess))), key=lambda w: abs(count(w) - target))
    if percent_on is not None:
        return ContextFree(KWinnersMLP(in_features, width, depth, num_classes, percent_on, boost_strength,
                                       boost_strength_factor), kind="kwinners_mlp")
    return ContextFree(MLP(in_features=in_features, width=width, depth=depth, num_classes=num_classes,
                           activation=activation), kind="dendritic_matched_mlp")


def dendritic_parameter_count(in_features: int = 64, context_dim: int = 64, width: int = 128, depth: int = 2,
                              num_classes: int = 10, num_segments: int = 10, weight_sparsity: float = 0.5,
                              ff_weight_sparsity: float = 0.0) -> int:
    """Effective parameters of a :class:`DendriticMLP`, counted without building one (so a matched
    baseline's initialization does not depend on a throwaway network drawing from the RNG)."""
    total, fan_in = 0, in_features
    for _ in range(int(depth)):
        ff = kept_count(fan_in, ff_weight_sparsity) if ff_weight_sparsity > 0 else fan_in
        total += width * ff + width + width * num_segments * kept_count(context_dim, weight_sparsity)
        fan_in = width
    return total + fan_in * num_classes + num_classes


def continual_model(arm: str = "dendritic", in_features: int = 64, context_dim: int = 64, width: int = 128,
                    depth: int = 2, num_classes: int = 10, num_segments: int = 10, weight_sparsity: float = 0.5,
                    ff_weight_sparsity: float = 0.0, percent_on: float = 0.1, boost_strength: float = 1.0,
                    boost_strength_factor: float = 1.0, duty_cycle_period: int = 1000,
                    k_inference_factor: float = 1.0) -> nn.Module:
    """One arm of the continual-learning comparison, all called as ``model(x, context)``:

    - ``dendritic``: :class:`DendriticMLP` with these keys;
    - ``mlp``: the ReLU MLP with that network's effective parameter count (:func:`matched_mlp`);
    - ``kwta_mlp``: the same-width MLP with k-WTA (``percent_on``, boosting) instead of ReLU: the
      ablation with sparsity but no dendrites or context.

    Example:
        >>> [type(continual_model(a, width=16, num_segments=2)).__name__ for a in ARMS]
        ['DendriticMLP', 'ContextFree', 'ContextFree']
    """
    if arm not in ARMS:
        raise ValueError(f"model.arm must be one of {ARMS}, got {arm!r}.")
    shape = {"in_features": in_features, "context_dim": context_dim, "width": width, "depth": depth,
             "num_classes": num_classes, "num_segments": num_segments, "weight_sparsity": weight_sparsity,
             "ff_weight_sparsity": ff_weight_sparsity}
    kwta = {"percent_on": percent_on, "boost_strength": boost_strength, "boost_strength_factor": boost_strength_factor}
    if arm == "dendritic":
        return DendriticMLP(**shape, **kwta, duty_cycle_period=duty_cycle_period, k_inference_factor=k_inference_factor)
    target = dendritic_parameter_count(**shape)
    if arm == "mlp":
        return matched_mlp(target, in_features, depth, num_classes)
    return matched_mlp(target, in_features, depth, num_classes, **kwta)
