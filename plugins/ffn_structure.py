"""FFN blocks found by their structure, not their class name.

A module is a plain FFN when its forward is ``down(act(fc(x)))`` and a gated FFN when it is
``down(act(gate(x)) * up(x))``, the projections being its own ``nn.Linear`` (or transformers'
``Conv1D``) children. The module tree proposes the parts: one child ``f -> d`` (down) and one or
two children ``d -> f`` (fc, or gate and up), ``d != f``; grandchildren count when the FFN is
split over two children (BERT's ``intermediate.dense`` and ``output.dense``). A probe forward of the module alone
(eval mode, no grad, hooks on the children) decides what the tree cannot: which input feeds the
activation (gate) and which multiplies it (up), and which child module, or else which function
(relu, gelu, gelu-tanh, silu, quick-gelu), is the activation; it also rejects modules whose
children merely have FFN shapes. Where the module cannot run alone (it needs a residual or an
attention mask), a plain FFN with exactly one activation child is still decided by the tree. The
decision is cached per (class, parts), so each family is probed once.

A gated FFN whose gate and up are the halves of one projection ``d -> 2f`` (Phi-3) is found the
same way (:class:`FusedGateUpSite`); fused mixture-of-experts blocks are in :mod:`.ffn_experts`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from actsparse.plugins.sites import (
    GATED_FFN,
    PLAIN_FFN,
    Site,
    linear_weight,
    projection_dims,
)
from torch import nn

log = logging.getLogger(__name__)

STRUCTURE = "structure"  # Site.adapter of sites found here

FUNCTIONAL_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
    "silu": F.silu,
    "quick_gelu": lambda z: z * torch.sigmoid(1.702 * z),
}

_NOT_ACTIVATIONS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)


def is_activation_candidate(module: nn.Module) -> bool:
    """A leaf that is not a dropout/identity/projection, with at most a few scalar parameters
    (learned activations such as xIELU): what an FFN's ``act`` looks like."""
    return (next(module.children(), None) is None and sum(p.numel() for p in module.parameters()) <= 8
            and not isinstance(module, _NOT_ACTIVATIONS) and projection_dims(module) is None)


def _parts(module: nn.Module, accept) -> dict[str, nn.Module]:
    """Children and grandchildren (dotted paths) that ``accept`` takes: an FFN may be split over
    two children (BERT's intermediate.dense + act and output.dense)."""
    found = {}
    for n, c in module.named_children():
        if accept(c):
            found[n] = c
        for g, gc in c.named_children():
            if accept(gc):
                found[f"{n}.{g}"] = gc
    return found


@dataclass(frozen=True)
class _Decision:
    kind: str
    inputs: tuple[str, ...]
    down: str
    act: str | None  # None: a functional activation (recordable, not swappable)
    whole: bool | None = None  # the module's output is the down projection's: replaceable whole
    gate_first: bool | None = None  # one fused gate_up input: whether its first half is the gate


_CACHE: dict[tuple, _Decision | None] = {}


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    tol = 1e-5 if a.dtype in (torch.float32, torch.float64) else 2e-2
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=tol, atol=tol)


def _probe(module: nn.Module, d: int, parts: list[str], acts: list[str]) -> dict | None:
    """Run ``module`` alone on a random ``[2, 3, d]`` input; the children's inputs and outputs, or None."""
    param = next(module.parameters())
    if param.device.type == "meta":
        return None
    x = torch.randn(2, 3, d, generator=torch.Generator().manual_seed(0)).to(param.device, param.dtype)
    seen: dict[str, tuple] = {}

    def keep(name):
        def hook(mod, args, out) -> None:  # returns None: the output is left as it is
            seen.setdefault(name, (args[0] if args else None, out))
        return hook

    handles = [module.get_submodule(n).register_forward_hook(keep(n)) for n in dict.fromkeys((*parts, *acts))]
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            out = module(x)
        seen[""] = (x, out)
    except Exception as err:  # noqa: BLE001  any failure means: it needs more than one tensor; decide from the tree
        log.debug("probe of %s failed (%s); deciding from the module tree", type(module).__name__, err)
        return None
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    return seen


def _judge(seen: dict, down: str, inputs: list[str], acts: list[str]) -> _Decision | None:
    """The decision a probe supports for one choice of down projection, or None."""
    if not all(isinstance(seen.get(n, (None, None))[1], torch.Tensor) for n in (down, *inputs)):
        return None
    x1 = seen[down][0]
    outs = {n: seen[n][1] for n in inputs}
    out = seen[""][1]
    whole = isinstance(out, torch.Tensor) and _close(out, seen[down][1])
    fused = len(inputs) == 1 and outs[inputs[0]].shape[-1] == 2 * x1.shape[-1]
    if fused:  # one projection d -> 2f chunked into gate and up
        first, second = outs[inputs[0]].chunk(2, dim=-1)
        outs = {"first": first, "second": second}
        orders = [("first", "second"), ("second", "first")]
    elif len(inputs) == 1:
        orders = [(inputs[0], None)]
    else:
        orders = [(inputs[0], inputs[1]), (inputs[1], inputs[0])]
    for gate, up in orders:
        def joined(a, up=up):
            return a if up is None else a * outs[up]
        kind = PLAIN_FFN if up is None else GATED_FFN
        names = tuple(inputs) if fused else (gate,) if up is None else (gate, up)
        extra = {"gate_first": gate == "first"} if fused else {}
        for a in acts:
            a_in, a_out = seen.get(a, (None, None))
            if isinstance(a_in, torch.Tensor) and _close(a_in, outs[gate]) and _close(joined(a_out), x1):
                return _Decision(kind, names, down, a, whole, **extra)
        for fn in FUNCTIONAL_ACTIVATIONS.values():
            if _close(joined(fn(outs[gate].float()).to(x1.dtype)), x1):
                return _Decision(kind, names, down, None, whole, **extra)
    return None


def _decide(module: nn.Module, candidates: list[tuple[str, list[str], int]], acts: list[str]) -> _Decision | None:
    decisions, probed = [], False
    for d in dict.fromkeys(c[2] for c in candidates):  # probe once per possible input width
        seen = _probe(module, d, [n for c in candidates for n in (c[0], *c[1])], acts)
        if seen is not None:
            probed = True
            decisions += [j for down, inputs, dd in candidates if dd == d and (j := _judge(seen, down, inputs, acts))]
    if probed:
        return decisions[0] if len(decisions) == 1 else None
    # Tree only: a plain FFN of direct children (a split one needs the probe) with one activation
    # child, its down projection the narrowing one (f > d).
    plain = [(down, inputs) for down, inputs, d in candidates
             if len(inputs) == 1 and "." not in down + inputs[0] and projection_dims(module.get_submodule(down))[0] > d]
    acts = [a for a in acts if "." not in a]
    if len(plain) == 1 and len(acts) == 1:
        # whole=False: it did not run as owner(x), so only its parts may be rewired (BLOOM's MLP takes a residual)
        return _Decision(PLAIN_FFN, tuple(plain[0][1]), plain[0][0], acts[0], whole=False)
    return None


def structural_site(name: str, module: nn.Module) -> Site | None:
    """The FFN site of ``module`` if its own children form one (see the module docstring)."""
    projs = {n: projection_dims(c) for n, c in _parts(module, lambda c: projection_dims(c) is not None).items()}
    if len(projs) < 2:
        return None
    candidates = []  # (down, inputs, d): down maps f -> d, each input d -> f, f != d
    for down, (f, d) in projs.items():
        inputs = [n for n, dims in projs.items() if n != down and dims == (d, f)]
        inputs = inputs or [n for n, dims in projs.items() if n != down and dims == (d, 2 * f)][:1]  # fused gate_up
        heads = {p.split(".")[0] for p in (down, *inputs)}
        if len(heads) == 1 and "." in down:
            continue  # all parts inside one child: that child is the FFN, found on its own
        if f != d and 1 <= len(inputs) <= 2:
            candidates.append((down, inputs, d))
    if not candidates:
        return None
    acts = list(_parts(module, is_activation_candidate))
    key = (type(module), tuple(projs.items()), tuple(acts))
    if key not in _CACHE:
        _CACHE[key] = _decide(module, candidates, acts)
    decision = _CACHE[key]
    if decision is None:
        return None
    if decision.gate_first is not None:
        return FusedGateUpSite(name, decision.kind, module, decision.act, decision.inputs, decision.down,
                               adapter=STRUCTURE, whole=decision.whole, gate_first=decision.gate_first)
    return Site(name, decision.kind, module, decision.act, decision.inputs, decision.down, adapter=STRUCTURE,
                whole=decision.whole)


@dataclass(frozen=True)
class ProjectionView:
    """Part of a fused projection (one expert's, or the gate or up half of a fused gate_up) as a
    view of its parameter, in ``nn.Linear`` layout. ``parameters()`` yields the fused parameters it
    views, so code that asks which parameters an FFN owns sees them."""

    weight: torch.Tensor  # [out, in]
    bias: torch.Tensor | None = None
    sources: tuple[nn.Parameter, ...] = ()

    def parameters(self):
        return iter(self.sources)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]


@dataclass(eq=False, repr=False)
class FusedGateUpSite(Site):
    """A gated FFN whose gate and up are the halves of one projection ``d -> 2f`` (Phi-3):
    ``inputs`` are the two halves as views."""

    gate_first: bool = True

    @property
    def inputs(self) -> tuple[ProjectionView, ProjectionView]:
        (path,) = self.input_paths
        layer = self.owner.get_submodule(path)
        w, b = linear_weight(layer), getattr(layer, "bias", None)
        f = w.shape[0] // 2
        halves = (slice(0, f), slice(f, 2 * f)) if self.gate_first else (slice(f, 2 * f), slice(0, f))
        sources = tuple(layer.parameters())
        return tuple(ProjectionView(w[s], None if b is None else b[s], sources) for s in halves)
