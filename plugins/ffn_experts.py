"""Mixture-of-experts blocks with fused experts: one activation site per expert.

Mixture-of-experts blocks whose experts are fused 3-D parameters (transformers >= 5:
``gate_up_proj [E, 2f, d]``, ``down_proj [E, d, f]``, one shared ``act_fn``) give one
:class:`ExpertSite` per expert, named ``<experts module>.<e>``. Its tensor ``x1`` is the input of
``F.linear(x1, down_proj[e])`` in the experts' eager loop, caught by a ``TorchFunctionMode`` while
the experts run; while such a hook is attached, the block runs transformers' ``eager`` experts
implementation (the fused ``grouped_mm`` path has no per-expert ``x1``).

Such a module is recognised by structure: two 3-D parameters with one leading dimension ``E``
(``[E, 2f, d]`` or ``[E, f, d]`` for gate_up/up, ``[E, d, f]`` for down; the transposed layout when
the module says ``is_transposed``) and one activation child. Experts share that activation module,
so they are swapped together (see :func:`~actsparse.plugins.swap_activation`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from actsparse.plugins.ffn_structure import (
    STRUCTURE,
    ProjectionView,
    is_activation_candidate,
)
from actsparse.plugins.sites import EXPERT_FFN, Site
from torch import nn
from torch.overrides import TorchFunctionMode


@dataclass(eq=False, repr=False)
class ExpertSite(Site):
    """Expert ``expert`` of a fused experts module: ``x1 = act(gate_e x) * up_e x`` (or ``act(up_e x)``)."""

    expert: int = 0
    gated: bool = True
    transposed: bool = False
    concatenated: bool = True

    def _linear(self, path: str) -> torch.Tensor:
        w = getattr(self.owner, path)[self.expert]
        return w.t() if self.transposed else w

    def _bias(self, path: str) -> torch.Tensor | None:
        b = getattr(self.owner, f"{path}_bias", None)
        return None if b is None else b[self.expert]

    def _sources(self, path: str) -> tuple[nn.Parameter, ...]:
        return tuple(p for p in (getattr(self.owner, path), getattr(self.owner, f"{path}_bias", None)) if p is not None)

    @property
    def inputs(self) -> tuple[ProjectionView, ...]:
        (path,) = self.input_paths
        w, b, src = self._linear(path), self._bias(path), self._sources(path)
        if not self.gated:
            return (ProjectionView(w, b, src),)
        f = w.shape[0] // 2
        halves = (slice(0, f), slice(f, 2 * f)) if self.concatenated else (slice(0, None, 2), slice(1, None, 2))
        return tuple(ProjectionView(w[s], None if b is None else b[s], src) for s in halves)

    @property
    def down(self) -> ProjectionView:
        return ProjectionView(self._linear(self.down_path), self._bias(self.down_path), self._sources(self.down_path))

    @property
    def w_down(self) -> torch.Tensor:
        return self.down.weight

    @property
    def width(self) -> int:
        return self.down.weight.shape[1]

    def register_hook(self, fn):
        """``fn(site, x1)`` for the tokens routed to this expert (see the module docstring)."""
        return _tap(self.owner, self.down_path).add(self.expert, lambda x1: fn(self, x1))


def expert_sites(name: str, module: nn.Module) -> list[ExpertSite] | None:
    """One site per expert when ``module`` holds fused 3-D expert weights and one activation child."""
    params = {n: p for n, p in module.named_parameters(recurse=False) if p.dim() == 3}
    acts = [n for n, c in module.named_children() if is_activation_candidate(c)]
    if len(params) != 2 or len(acts) != 1:
        return None
    transposed = bool(getattr(module, "is_transposed", False))
    for (a, wa), (b, wb) in ((x, y) for x in params.items() for y in params.items() if x[0] != y[0]):
        if wa.shape[0] != wb.shape[0]:
            continue
        (e, fa, da), (_, db, fb) = (wa.shape, wb.shape) if not transposed else (
            (wa.shape[0], wa.shape[2], wa.shape[1]), (wb.shape[0], wb.shape[2], wb.shape[1]))
        if da == db and fa in (fb, 2 * fb) and fb != db and fa != db:
            gated = fa == 2 * fb and getattr(module, "has_gate", True)
            return [ExpertSite(f"{name}.{i}" if name else str(i), EXPERT_FFN, module, acts[0], (a,), b,
                               adapter=STRUCTURE, expert=i, gated=gated, transposed=transposed,
                               concatenated=bool(getattr(module, "is_concatenated", True))) for i in range(e)]
    return None


class _TapMode(TorchFunctionMode):
    _FUNCS = (F.linear, torch.matmul, torch.Tensor.__matmul__, torch.mm)

    def __init__(self, tap: _ExpertTap) -> None:
        super().__init__()
        self.tap = tap

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._FUNCS and len(args) >= 2:
            e = self.tap.expert_of(args[1])
            if e is not None:
                args = (self.tap.call(e, args[0]), *args[1:])
        return func(*args, **kwargs)


class _TapHandle:
    def __init__(self, tap: _ExpertTap, expert: int, fn) -> None:
        self.tap, self.expert, self.fn = tap, expert, fn

    def remove(self) -> None:
        self.tap.discard(self.expert, self.fn)


class _ExpertTap:
    """The per-expert hooks of one fused experts module: one mode, pushed while it runs."""

    def __init__(self, module: nn.Module, down_path: str) -> None:
        self.module, self.down_path = module, down_path
        self.fns: dict[int, list] = {}
        self.handles: list = []
        self.mode: _TapMode | None = None
        self.saved_impl = None

    def expert_of(self, w) -> int | None:
        down = getattr(self.module, self.down_path)
        if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.device != down.device:
            return None
        if w.untyped_storage().data_ptr() != down.untyped_storage().data_ptr():
            return None
        e = (w.storage_offset() - down.storage_offset()) // down.stride(0)
        return e if 0 <= e < down.shape[0] else None

    def call(self, e: int, x1: torch.Tensor) -> torch.Tensor:
        for fn in list(self.fns.get(e, ())):
            out = fn(x1)
            if out is not None:
                x1 = out
        return x1

    def add(self, e: int, fn) -> _TapHandle:
        if not self.handles:
            self.handles = [self.module.register_forward_pre_hook(self._enter),
                            self.module.register_forward_hook(self._exit, always_call=True)]
        self.fns.setdefault(e, []).append(fn)
        return _TapHandle(self, e, fn)

    def discard(self, e: int, fn) -> None:
        if fn in self.fns.get(e, ()):
            self.fns[e].remove(fn)
        if not any(self.fns.values()) and self.handles:
            for h in self.handles:
                h.remove()
            self.handles = []

    def _enter(self, module, args) -> None:
        config = getattr(module, "config", None)
        impl = getattr(config, "_experts_implementation", None)
        if impl not in (None, "eager"):
            self.saved_impl = impl
            config._experts_implementation = "eager"
        self.mode = _TapMode(self)
        self.mode.__enter__()

    def _exit(self, module, args, out) -> None:
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.mode = None
        if self.saved_impl is not None:
            module.config._experts_implementation = self.saved_impl
            self.saved_impl = None


_TAPS: weakref.WeakKeyDictionary[nn.Module, _ExpertTap] = weakref.WeakKeyDictionary()


def _tap(module: nn.Module, down_path: str) -> _ExpertTap:
    if module not in _TAPS:
        _TAPS[module] = _ExpertTap(module, down_path)
    return _TAPS[module]
