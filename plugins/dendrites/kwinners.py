"""k-winners-take-all activations with duty-cycle boosting (Ahmad & Scheinkman 2019, "How can
we be so dense?"; DESIGN §4).

Each sample keeps its ``k`` largest *boosted* units at their original values and zeroes the
rest; gradients flow only through the winners. Boosting multiplies a unit's input by
``exp(boost_strength · (target_density − duty_cycle))`` before the selection, so units that
won less often than the target density ``k / units`` get a better chance and all units stay
in use. Duty cycles are running means of how often each unit (or channel) won, updated in
training only; they, the number of samples seen and the current boost strength are buffers,
so ``state_dict`` / checkpoints resume them exactly.

Both classes register as bare activation sites (:func:`actsparse.plugins.sites.register_activation_type`),
so ``find_sites``, ``record``, ``SparsityMonitor`` and ``DeadNeuronMonitor`` see their outputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from actsparse.plugins.sites import register_activation_type

__all__ = ["KWinners", "KWinners2d", "kwinners_mask"]


def kwinners_mask(scores: torch.Tensor, k: int, dim: int = -1) -> torch.Tensor:
    """Bool mask of the ``k`` largest entries of ``scores`` along ``dim`` (exactly ``k`` per slice)."""
    idx = scores.topk(k, dim=dim, sorted=False).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(dim, idx, True)


def _resolve_k(units: int, k: int | None, percent_on: float | None, what: str) -> int:
    if (k is None) == (percent_on is None):
        raise ValueError(f"Give exactly one of k= or percent_on= for {what}.")
    if k is None:
        if not 0 < percent_on <= 1:
            raise ValueError(f"percent_on must be in (0, 1], got {percent_on}.")
        k = max(1, round(percent_on * units))
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= units:
        raise ValueError(f"k must be an integer in 1..{units} ({what}), got {k!r}.")
    return int(k)


class _BoostedWinners(nn.Module):
    """Shared state and checks of :class:`KWinners` and :class:`KWinners2d`."""

    def __init__(self, channels: int, k_inference_factor: float, boost_strength: float,
                 boost_strength_factor: float, duty_cycle_period: int) -> None:
        super().__init__()
        if boost_strength < 0 or not 0 <= boost_strength_factor <= 1:
            raise ValueError(f"boost_strength must be >= 0 and boost_strength_factor in [0, 1], got "
                             f"{boost_strength}, {boost_strength_factor}.")
        if duty_cycle_period < 1 or k_inference_factor <= 0:
            raise ValueError(f"duty_cycle_period must be >= 1 and k_inference_factor > 0, got "
                             f"{duty_cycle_period}, {k_inference_factor}.")
        self.k_inference_factor = float(k_inference_factor)
        self.boost_strength_factor = float(boost_strength_factor)
        self.duty_cycle_period = int(duty_cycle_period)
        self.register_buffer("duty_cycles", torch.zeros(channels))
        self.register_buffer("boost_strength", torch.tensor(float(boost_strength)))
        self.register_buffer("learning_iterations", torch.tensor(0, dtype=torch.int64))

    def update_boost_strength(self) -> float:
        """Decay the boost strength by ``boost_strength_factor`` (call once per epoch)."""
        self.boost_strength.mul_(self.boost_strength_factor)
        return float(self.boost_strength)

    def _boost(self, x: torch.Tensor, target_density: float, shape: tuple[int, ...]) -> torch.Tensor:
        if float(self.boost_strength) == 0:
            return x
        factors = torch.exp((target_density - self.duty_cycles) * self.boost_strength)
        return x * factors.view(shape).to(x.dtype)

    @torch.no_grad()
    def _update_duty_cycles(self, wins_per_channel: torch.Tensor, samples: int) -> None:
        self.learning_iterations += samples
        period = min(self.duty_cycle_period, int(self.learning_iterations))
        self.duty_cycles.mul_(period - samples).add_(wins_per_channel.to(self.duty_cycles.dtype)).div_(period)


class KWinners(_BoostedWinners):
    """k-WTA over the last dimension of ``[..., units]`` inputs (each leading index is a sample).

    Args:
        units: size of the last dimension.
        k / percent_on: winners per sample (one of them; ``percent_on`` rounds to at least 1).
        k_inference_factor: in eval mode keep ``round(k · factor)`` winners (capped at ``units``).
        boost_strength: initial strength (0 disables boosting); ``boost_strength_factor`` decays it
            per :meth:`update_boost_strength` call.
        duty_cycle_period: samples over which duty cycles average (a running mean before that).

    Example:
        >>> kw = KWinners(8, k=2, boost_strength=0.0)
        >>> kw(torch.tensor([[1., 5., 3., 0., 2., 4., -1., 0.5]]))
        tensor([[0., 5., 0., 0., 0., 4., 0., 0.]])
    """

    def __init__(self, units: int, k: int | None = None, percent_on: float | None = None,
                 k_inference_factor: float = 1.0, boost_strength: float = 1.0,
                 boost_strength_factor: float = 1.0, duty_cycle_period: int = 1000) -> None:
        if units < 1:
            raise ValueError(f"units must be >= 1, got {units}.")
        super().__init__(units, k_inference_factor, boost_strength, boost_strength_factor, duty_cycle_period)
        self.units = int(units)
        self.k = _resolve_k(self.units, k, percent_on, "KWinners")

    @property
    def k_active(self) -> int:
        """Winners per sample now (``k`` in training, ``k · k_inference_factor`` in eval)."""
        return self.k if self.training else min(self.units, max(1, round(self.k * self.k_inference_factor)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.units:
            raise ValueError(f"KWinners({self.units}) got inputs with last dimension {x.shape[-1]}.")
        boosted = self._boost(x.detach(), self.k / self.units, (self.units,))
        mask = kwinners_mask(boosted, self.k_active, dim=-1)
        if self.training:
            rows = mask.reshape(-1, self.units)
            self._update_duty_cycles(rows.sum(0), rows.shape[0])
        return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))

    def extra_repr(self) -> str:
        return (f"units={self.units}, k={self.k}, boost_strength={float(self.boost_strength):.3g}, "
                f"k_inference_factor={self.k_inference_factor}")


class KWinners2d(_BoostedWinners):
    """k-WTA for ``[B, C, H, W]`` feature maps with per-channel duty cycles and boosting.

    ``local=False``: the ``k`` winners are chosen over all ``C·H·W`` values of a sample;
    ``local=True``: ``k`` winning channels at every position. ``percent_on`` is relative to
    ``C·H·W`` (global) or ``C`` (local), so global needs ``spatial=(H, W)`` when ``k`` is not given.

    Example:
        >>> kw = KWinners2d(4, k=1, local=True, boost_strength=0.0)
        >>> int((kw(torch.randn(2, 4, 3, 3)) != 0).sum())  # one channel per position
        18
    """

    def __init__(self, channels: int, k: int | None = None, percent_on: float | None = None,
                 local: bool = False, spatial: tuple[int, int] | None = None,
                 k_inference_factor: float = 1.0, boost_strength: float = 1.0,
                 boost_strength_factor: float = 1.0, duty_cycle_period: int = 1000) -> None:
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}.")
        super().__init__(channels, k_inference_factor, boost_strength, boost_strength_factor, duty_cycle_period)
        self.channels, self.local = int(channels), bool(local)
        if local:
            self.k = _resolve_k(self.channels, k, percent_on, "KWinners2d(local=True): winners per position")
        elif k is None:
            if spatial is None:
                raise ValueError("KWinners2d(local=False, percent_on=...) needs spatial=(H, W) to turn the "
                                 "percentage into k; or give k= directly.")
            self.k = _resolve_k(self.channels * math.prod(spatial), None, percent_on, "KWinners2d")
        else:
            if isinstance(k, bool) or int(k) != k or k < 1:
                raise ValueError(f"k must be a positive integer, got {k!r}.")
            self.k = int(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"KWinners2d({self.channels}) expects [B, {self.channels}, H, W], got {tuple(x.shape)}.")
        b, c, h, w = x.shape
        units = c if self.local else c * h * w
        if self.k > units:
            raise ValueError(f"k={self.k} exceeds the {units} values it chooses from for input {tuple(x.shape)}.")
        k_now = self.k if self.training else min(units, max(1, round(self.k * self.k_inference_factor)))
        boosted = self._boost(x.detach(), self.k / units, (1, c, 1, 1))
        if self.local:
            mask = kwinners_mask(boosted, k_now, dim=1)
        else:
            mask = kwinners_mask(boosted.reshape(b, -1), k_now, dim=1).view_as(x)
        if self.training:
            # a channel's duty cycle: the fraction of its positions that won, per sample
            self._update_duty_cycles(mask.sum((0, 2, 3)) / (h * w), b)
        return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, k={self.k}, local={self.local}, boost_strength={float(self.boost_strength):.3g}"


register_activation_type(KWinners)
register_activation_type(KWinners2d)
