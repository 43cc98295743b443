"""Swap the activation of activation sites in place (model surgery, gpt-fast style)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from torch import nn

from actsparse.plugins.activations import make_activation
from actsparse.plugins.sites import Site, find_sites, resolve_sites

ActivationSpec = "str | nn.Module | type[nn.Module] | Callable[[], nn.Module]"


@dataclass
class SwapReport:
    """What :func:`swap_activation` changed: ``(site name, before, after)`` per site."""

    changes: list[tuple[str, str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.changes)

    def __str__(self) -> str:
        lines = [f"swapped {len(self.changes)} activation site(s):"]
        lines += [f"  {name}: {before} -> {after}" for name, before, after in self.changes]
        return "\n".join(lines)


def _factory(activation, threshold: float | None) -> Callable[[], nn.Module]:
    if isinstance(activation, str):
        if threshold is not None and activation.lower() != "fatrelu":
            raise ValueError(f"threshold applies to 'fatrelu' only, not {activation!r}.")
        make_activation(activation, threshold or 0.0)  # validate the name once
        return lambda: make_activation(activation, threshold or 0.0)
    if threshold is not None:
        raise ValueError("threshold is only used with activation='fatrelu'.")
    if isinstance(activation, nn.Module):
        return lambda: copy.deepcopy(activation)  # one module per site: hooks stay per site
    if callable(activation):
        return activation
    raise TypeError(
        f"activation must be a name, an nn.Module, a module class or a factory, got {type(activation).__name__}."
    )


def _describe(act) -> str:
    return repr(act) if isinstance(act, nn.Module) else getattr(act, "__name__", repr(act))


def swap_activation(
    model: nn.Module,
    activation: ActivationSpec,
    threshold: float | None = None,
    sites: Iterable[Site] | str | Sequence[str] | None = None,
) -> SwapReport:
    """Replace the activation of each selected site of ``model`` (in place).

    Args:
        activation: ``"relu"``, ``"fatrelu"``, ``"silu"``, ``"gelu"``; an ``nn.Module`` (copied
            per site); a module class or any factory returning a module.
        threshold: the FATReLU threshold (``activation="fatrelu"`` only).
        sites: None (all sites), glob pattern(s) on site names, or :class:`Site` objects.

    Sites that share one activation module (the experts of a fused mixture-of-experts block
    share its ``act_fn``) are swapped together: selecting only some of them is refused.

    Raises:
        TypeError: a selected site computes its activation functionally inside ``forward``
            (the message names the module); nothing is changed then.
        ValueError: the selection holds some, not all, of the sites sharing one activation.

    Example:
        >>> mlp = nn.Sequential(nn.Linear(3, 8), nn.GELU(), nn.Linear(8, 1))
        >>> print(swap_activation(mlp, "relu"))
        swapped 1 activation site(s):
          1: GELU(approximate='none') -> ReLU()
    """
    make = _factory(activation, threshold)
    chosen = resolve_sites(model, sites)
    for site in chosen:  # all or nothing: check every site before changing any
        site.require_swappable()
    _check_shared(model, chosen)
    report, done = SwapReport(), {}
    for site in chosen:
        slot = (id(site.owner), site.act_path)
        before = _describe(site.activation) if slot not in done else done[slot][0]
        if slot not in done:
            new = make()
            if not isinstance(new, nn.Module):
                raise TypeError(f"The activation factory returned {type(new).__name__}, not an nn.Module.")
            done[slot] = (before, new)
            site.set_activation(new)
        report.changes.append((site.name, before, _describe(done[slot][1])))
    return report


def _check_shared(model: nn.Module, chosen: list[Site]) -> None:
    """Refuse a selection holding some, not all, of the sites that share one activation module."""
    slots = {(id(s.owner), s.act_path) for s in chosen}
    names = {s.name for s in chosen}
    for site in find_sites(model):
        if (id(site.owner), site.act_path) in slots and site.name not in names:
            sharers = sorted(s.name for s in chosen if s.owner is site.owner and s.act_path == site.act_path)
            raise ValueError(
                f"Sites {sharers} share their activation module ({type(site.owner).__name__}.{site.act_path}) "
                f"with {site.name!r}, which is not selected; one module cannot differ per site. Select all of "
                f"them (e.g. '{site.name.rpartition('.')[0]}.*')."
            )
