"""Activation sites: the one mechanism that finds, hooks, swaps and converts the activations
of a model. Every callback and metric of actsparse goes through :func:`find_sites`.

A site is a place where a nonlinearity produces the intermediate activation whose sparsity
matters (DESIGN §2):

- ``gated_ffn``: ``down(act(gate(x)) * up(x))`` (LLaMA, Mistral, Qwen2); the site's tensor
  ``x1 = act(gate(x)) * up(x)`` is the input of ``down``;
- ``plain_ffn``: ``proj(act(fc(x)))`` (GPT-2, BERT, nanoGPT); ``x1 = act(fc(x))``, the input of ``proj``;
- ``activation``: any other activation module (``nn.ReLU``/``nn.GELU``/``nn.SiLU``/``FATReLU``
  in an MLP or CNN); its tensor is the module's output.

Teaching actsparse a new FFN block is one call::

    register_ffn("MyMLP", gate="w1", up="w3", down="w2", act="act")        # gated
    register_ffn("MyBlock", fc="ffn.fc1", down="ffn.fc2", act="ffn.act")  # plain, dotted paths

Attribute paths are relative to the matched module. When ``act`` names no attribute (the
activation is a functional call such as ``F.gelu`` inside ``forward``), the site can still be
recorded but not swapped.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from actsparse.plugins.activations import FATReLU

GATED_FFN, PLAIN_FFN, ACTIVATION = "gated_ffn", "plain_ffn", "activation"
EXPERT_FFN = "expert_ffn"  # one expert of a fused mixture-of-experts block (plugins/ffn_experts.py)

def _get_path(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def _set_path(root: nn.Module, path: str, value: nn.Module) -> None:
    *parents, last = path.split(".")
    owner = root
    for part in parents:
        owner = getattr(owner, part)
    setattr(owner, last, value)


def _is_conv1d(layer) -> bool:
    return type(layer).__name__ == "Conv1D" and hasattr(layer, "nf")


def projection_dims(layer) -> tuple[int, int] | None:
    """``(in, out)`` of an ``nn.Linear`` or transformers' ``Conv1D``; None for anything else."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if _is_conv1d(layer):
        return layer.weight.shape[0], layer.nf
    return None


def linear_weight(layer) -> torch.Tensor:
    """The weight of a projection in ``nn.Linear`` layout ``[out, in]``.

    Hugging Face's ``Conv1D`` (GPT-2) stores ``[in, out]``; it is transposed (a view). An
    expert's or a fused gate_up's part (:class:`~actsparse.plugins.ffn_structure.ProjectionView`) is already
    a ``[out, in]`` view of its fused parameter.
    """
    if isinstance(layer, nn.Linear):
        return layer.weight
    if _is_conv1d(layer):
        return layer.weight.t()
    if not isinstance(layer, nn.Module) and isinstance(getattr(layer, "weight", None), torch.Tensor):
        return layer.weight
    raise TypeError(f"Cannot read a projection weight from {type(layer).__name__}.")


@dataclass(eq=False)
class Site:
    """One activation site of a model (see the module docstring)."""

    name: str
    kind: str
    owner: nn.Module
    act_path: str | None
    input_paths: tuple[str, ...] = ()
    down_path: str | None = None
    adapter: str = ""
    # Called as after_swap(owner, new_activation) once the activation is replaced: blocks that
    # cache facts about their activation (PyTorch's fast path flag) update them here.
    after_swap: Callable[[nn.Module, nn.Module], None] | None = None
    # Whether owner(x) computes exactly the FFN (no residual, no other input), so it can be
    # replaced whole; None when unknown (registered blocks, blocks that cannot run alone).
    whole: bool | None = None

    # -- structure -----------------------------------------------------------------------
    @property
    def activation(self) -> nn.Module | Callable | None:
        """The activation (module or callable); None when it is a functional call in ``forward``."""
        return _get_path(self.owner, self.act_path) if self.act_path else None

    @property
    def swappable(self) -> bool:
        return self.act_path is not None and _get_path(self.owner, self.act_path) is not None

    @property
    def inputs(self) -> tuple[nn.Module, ...]:
        """``(gate, up)`` for gated FFNs, ``(fc,)`` for plain ones, ``()`` for bare activations."""
        return tuple(_get_path(self.owner, p) for p in self.input_paths)

    @property
    def down(self) -> nn.Module | None:
        """The down (or proj) projection reading the site's tensor; None for bare activations."""
        return _get_path(self.owner, self.down_path) if self.down_path else None

    @property
    def w_down(self) -> torch.Tensor:
        """Down-projection weight ``[d, f]`` in ``nn.Linear`` layout (what CETT needs)."""
        if self.down is None:
            raise ValueError(f"Site {self.name!r} ({self.kind}) has no down projection.")
        return linear_weight(self.down)

    @property
    def width(self) -> int | None:
        """Number of FFN neurons ``f`` (None for bare activations: it depends on the input)."""
        return self.w_down.shape[1] if self.down is not None else None

    def require_swappable(self) -> None:
        """Raise the error that names the module when the activation cannot be swapped."""
        if not self.swappable:
            raise TypeError(
                f"Site {self.name!r} ({type(self.owner).__name__}) computes its activation as a "
                "functional call inside forward(), so there is no module to swap. Make the "
                "activation a submodule (e.g. self.act = nn.GELU()) and call self.act(...) instead."
            )

    def set_activation(self, module: nn.Module) -> None:
        self.require_swappable()
        _set_path(self.owner, self.act_path, module)
        if self.after_swap is not None:
            self.after_swap(self.owner, module)

    # -- hooks -----------------------------------------------------------------------------
    def register_hook(self, fn: Callable[["Site", torch.Tensor], None]) -> torch.utils.hooks.RemovableHandle:
        """Call ``fn(site, tensor)`` with the site's tensor on every forward.

        FFN sites: the input of the down projection (``x1``). Bare activations: the module's
        output. The tensor is the live one: ``fn`` must not modify it in place; if ``fn``
        returns a tensor, it replaces the site tensor (FFN sites: the down projection's input;
        bare activations: the module's output), which is how truncation drops neurons.
        """
        if self.down is not None:
            return self.down.register_forward_pre_hook(lambda mod, args: fn(self, args[0]))
        act = self.activation
        return act.register_forward_hook(lambda mod, args, out: fn(self, out))

    def __repr__(self) -> str:
        act = self.activation
        act_name = (type(act).__name__ if isinstance(act, nn.Module)
                    else "functional" if act is None else getattr(act, "__name__", repr(act)))
        return f"Site(name={self.name!r}, kind={self.kind!r}, activation={act_name})"


# -- the adapter registry ---------------------------------------------------------------------

@dataclass
class SiteAdapter:
    name: str
    match: Callable[[nn.Module], bool]
    kind: str
    inputs: tuple[str, ...]
    down: str
    act: tuple[str, ...]
    after_swap: Callable[[nn.Module, nn.Module], None] | None = None

    def build(self, qualified_name: str, module: nn.Module) -> Site | None:
        if not self.match(module):
            return None
        if any(_get_path(module, p) is None for p in (*self.inputs, self.down)):
            return None
        act = next((p for p in self.act if _get_path(module, p) is not None), None)
        return Site(qualified_name, self.kind, module, act, self.inputs, self.down, self.name, self.after_swap)


_ADAPTERS: list[SiteAdapter] = []
_ACTIVATION_TYPES: list[type[nn.Module]] = [nn.ReLU, nn.GELU, nn.SiLU, FATReLU]


def _matcher(match) -> tuple[str, Callable[[nn.Module], bool]]:
    if isinstance(match, str):
        return match, lambda m: type(m).__name__ == match
    if isinstance(match, type):
        return match.__name__, lambda m: isinstance(m, match)
    if callable(match):
        return getattr(match, "__name__", "predicate"), match
    raise TypeError(f"match must be a module class, a class name or a predicate, got {match!r}.")


def register_ffn(
    match,
    *,
    down: str,
    act: str | Sequence[str] | None,
    gate: str | None = None,
    up: str | None = None,
    fc: str | None = None,
    first: bool = False,
    after_swap: Callable[[nn.Module, nn.Module], None] | None = None,
) -> SiteAdapter:
    """Teach :func:`find_sites` an FFN block.

    Args:
        match: the block's class, its class name (no import needed), or a predicate.
        down: path of the down/proj projection (reads the site tensor ``x1``).
        act: path of the activation (or candidate paths, the first present wins); none
            present means the activation is a functional call in ``forward``.
        gate, up: paths of a gated FFN's projections; or ``fc`` for a plain FFN.
        first: try this adapter before the built-in ones.
        after_swap: ``f(block, new_activation)`` run after a swap, for blocks that cache facts
            about their activation (see :func:`_torch_fast_path_flag`).
    """
    if (gate is None) != (up is None) or (gate is None) == (fc is None):
        raise ValueError("Give either gate= and up= (gated FFN) or fc= (plain FFN).")
    label, predicate = _matcher(match)
    kind = GATED_FFN if gate else PLAIN_FFN
    inputs = (gate, up) if gate else (fc,)
    acts = () if act is None else (act,) if isinstance(act, str) else tuple(act)
    adapter = SiteAdapter(label, predicate, kind, inputs, down, acts, after_swap)
    _ADAPTERS.insert(0, adapter) if first else _ADAPTERS.append(adapter)
    return adapter


def register_activation_type(cls: type[nn.Module]) -> None:
    """Make every module of class ``cls`` a bare activation site."""
    if cls not in _ACTIVATION_TYPES:
        _ACTIVATION_TYPES.append(cls)


def searched_types() -> list[str]:
    """What :func:`find_sites` looks for, for error messages and docs."""
    return [STRUCTURES] + [a.name for a in _ADAPTERS] + [t.__name__ for t in _ACTIVATION_TYPES]


# Blocks whose forward is down(act(fc(x))) or down(act(gate(x)) * up(x)) over their own
# Linear/Conv1D children (LLaMA, GPT-2, OPT, GPT-NeoX, Phi, BERT, nanoGPT, ...) are found by
# structure (plugins/ffn_structure.py); the registry holds what structure cannot decide.
# actsparse's own FFNs register themselves in actsparse/models/llama.py.


def _torch_fast_path_flag(layer: nn.Module, activation: nn.Module) -> None:
    """Keep ``nn.TransformerEncoderLayer``'s fast path right after a swap.

    In eval mode the layer may skip ``forward`` for a fused kernel that applies ReLU or GELU
    according to ``activation_relu_or_gelu`` (set once in ``__init__``); left as it was, a
    swapped-in FATReLU/SiLU would be silently replaced by the old activation there. ReLU and
    exact GELU keep their fused kernel; anything else turns the fast path off.
    """
    if not hasattr(layer, "activation_relu_or_gelu"):
        return  # the decoder layer has no fast path
    if type(activation) is nn.ReLU:
        layer.activation_relu_or_gelu = 1
    elif type(activation) is nn.GELU and getattr(activation, "approximate", "none") == "none":
        layer.activation_relu_or_gelu = 2
    else:
        layer.activation_relu_or_gelu = 0


def _register_torch_transformer_layers() -> None:
    # PyTorch's own layers (hence nn.TransformerEncoder/Decoder, nn.Transformer and Lightning's
    # demo Transformer): FFN = linear2(dropout(activation(linear1(x)))). `activation` is a
    # function (F.relu, F.gelu, or a string turned into one) or a module; a swap replaces the
    # attribute with a module either way.
    for cls in (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer):
        register_ffn(cls, fc="linear1", down="linear2", act="activation", after_swap=_torch_fast_path_flag)


_register_torch_transformer_layers()


# -- finding sites -----------------------------------------------------------------------------

class NoSitesError(ValueError):
    """The model has no activation site actsparse understands."""


STRUCTURES = ("FFN blocks by structure (down(act(fc(x))) or down(act(gate(x)) * up(x)) over a module's own "
              "nn.Linear/Conv1D children; fused experts with 3-D gate_up/down parameters)")


def eager_name(name: str) -> str:
    """A module name without ``torch.compile``'s ``_orig_mod`` segments, so a compiled model's
    sites carry the eager model's names (and state keyed by site name matches)."""
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def _selected(name: str, patterns: str | Sequence[str] | Callable[[str], bool] | None, default: bool) -> bool:
    if patterns is None:
        return default
    if callable(patterns):
        return bool(patterns(name))
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def find_sites(
    model: nn.Module,
    include: str | Sequence[str] | Callable[[str], bool] | None = None,
    exclude: str | Sequence[str] | Callable[[str], bool] | None = None,
) -> list[Site]:
    """The activation sites of ``model``, in module order.

    Args:
        include / exclude: glob patterns on site names (``"blocks.*.ffn"``), or a predicate.

    Raises:
        NoSitesError: nothing found (naming the module types searched), or nothing left after
            ``include``/``exclude``.

    Example:
        >>> from actsparse.models import TinyLM
        >>> [s.name for s in find_sites(TinyLM(d_model=16, n_layers=2, n_heads=2))]
        ['blocks.0.ffn', 'blocks.1.ffn']
        >>> mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> find_sites(mlp)
        [Site(name='1', kind='activation', activation=ReLU)]
    """
    # Late import: ffn_structure and ffn_experts build Site objects, so they import this module.
    from actsparse.plugins.ffn_experts import expert_sites
    from actsparse.plugins.ffn_structure import structural_site

    sites: list[Site] = []
    claimed: set[str] = set()  # modules inside an FFN site are not sites of their own
    for raw, module in model.named_modules():
        if any(c == "" or raw == c or raw.startswith(c + ".") for c in claimed):  # "" = the model itself
            continue
        name = eager_name(raw)
        site = next((s for a in _ADAPTERS if (s := a.build(name, module)) is not None), None)
        found = [site] if site is not None else expert_sites(name, module)
        if not found and (site := structural_site(name, module)) is not None:
            found = [site]
        if found:
            sites.extend(found)
            claimed.add(raw)
        elif isinstance(module, tuple(_ACTIVATION_TYPES)) and raw:
            parent, _, attr = raw.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            sites.append(Site(name, ACTIVATION, owner, attr, adapter=type(module).__name__))
    if not sites:
        raise NoSitesError(
            f"No activation sites found in {type(model).__name__}. Searched for {STRUCTURES}, registered FFN "
            f"blocks ({', '.join(a.name for a in _ADAPTERS)}) and activation modules "
            f"({', '.join(t.__name__ for t in _ACTIVATION_TYPES)}). If the activation is a "
            "functional call (F.relu) inside forward(), make it a module; for a new FFN block, "
            "use actsparse.plugins.register_ffn."
        )
    chosen = [s for s in sites if _selected(s.name, include, True) and not _selected(s.name, exclude, False)]
    if not chosen:
        raise NoSitesError(
            f"include={include!r} / exclude={exclude!r} left none of the sites of "
            f"{type(model).__name__}: {[s.name for s in sites]}."
        )
    return chosen


def ffn_sites(model: nn.Module, sites: Iterable[Site] | str | Sequence[str] | None = None) -> list[Site]:
    """The FFN sites of ``model`` (gated or plain: those with a down projection, which CETT,
    truncation and the sparse FFN need), selected by ``sites`` as in :func:`resolve_sites`.

    Raises:
        NoSitesError: no site at all (naming the module types searched), or none of the
            selected sites is an FFN block (naming the sites found and how to register a block).

    Example:
        >>> from actsparse.models import TinyLM
        >>> [s.name for s in ffn_sites(TinyLM(d_model=16, n_layers=2, n_heads=2), "blocks.1.*")]
        ['blocks.1.ffn']
        >>> ffn_sites(nn.Sequential(nn.Linear(4, 8), nn.ReLU()))
        Traceback (most recent call last):
        ...
        actsparse.plugins.sites.NoSitesError: Sequential has no FFN site with a down projection ...
    """
    found = resolve_sites(model, sites)
    ffn = [s for s in found if s.down is not None]
    if not ffn:
        raise NoSitesError(
            f"{type(model).__name__} has no FFN site with a down projection (found only bare activations "
            f"{[s.name for s in found]}; searched {STRUCTURES} and registered blocks "
            f"{', '.join(a.name for a in _ADAPTERS)}). "
            "Pass the model that holds the FFN blocks, or register its block with "
            "actsparse.plugins.register_ffn(BlockClass, gate=..., up=..., down=..., act=...) "
            "(or fc=... and down=... for a plain FFN)."
        )
    return ffn


def resolve_sites(model: nn.Module, sites: Iterable[Site] | str | Sequence[str] | None) -> list[Site]:
    """``sites`` as given by users: None (all), glob pattern(s) for ``include``, or Site objects."""
    if sites is None or isinstance(sites, str):
        return find_sites(model, include=sites)
    sites = list(sites)
    if sites and all(isinstance(s, Site) for s in sites):
        return sites
    return find_sites(model, include=sites)
