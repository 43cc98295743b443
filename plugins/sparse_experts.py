"""Sparse inference for fused mixture-of-experts blocks: one :class:`SparseExperts` per experts module.

A fused experts module (transformers >= 5: ``MixtralExperts``, ``Qwen2MoeExperts``, ...) holds every
expert's weights as 3-D parameters and runs ``forward(hidden_states, top_k_index, top_k_weights)``:
for each expert hit, its FFN on the tokens routed to it, weighted by the routing weights and summed
with ``index_add_``. :class:`SparseExperts` replaces such a module: it stores each expert's gate/up
rows and its down weight transposed once (as :meth:`SparseFFN.from_dense` does for one FFN, read
through the experts' :class:`~actsparse.plugins.ffn_experts.ExpertSite` views, so interleaved,
transposed and biased layouts are covered) and runs :func:`sparse_gated_ffn` (or :func:`sparse_ffn`
when the experts are not gated) per expert hit, in the eager loop's order, so its output equals the
dense module's.

Only modules whose behaviour is that loop are converted: the forward's parameters must be
``(hidden_states, top_k_index, top_k_weights)``, no post-expert norm, no custom gate function, a
ReLU/FATReLU activation. :func:`plan_experts` (used by
:func:`~actsparse.plugins.sparse_ffn.convert_to_sparse`) leaves a module of another structure dense
with a warning naming what is missing.
"""

from __future__ import annotations

import inspect
import logging

import torch
import torch.nn.functional as F
from actsparse.plugins.activations import FATReLU
from actsparse.plugins.ffn_experts import ExpertSite, expert_sites
from actsparse.plugins.sparse_ffn import sparse_ffn, sparse_gated_ffn
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["SparseExperts", "UnsupportedExperts", "plan_experts"]

FORWARD_PARAMS = ("hidden_states", "top_k_index", "top_k_weights")


class UnsupportedExperts(TypeError):
    """The experts module does not compute the eager routed loop SparseExperts reproduces."""


def check_experts_module(module: nn.Module) -> None:
    """Raise :class:`UnsupportedExperts` (naming the class and what is missing) unless ``module``'s
    forward is the eager routed loop over its experts that :class:`SparseExperts` reproduces."""
    cls = type(module).__name__
    try:
        params = tuple(inspect.signature(type(module).forward).parameters)[1:]
    except (TypeError, ValueError) as err:
        raise UnsupportedExperts(f"{cls}.forward has no inspectable signature ({err}).") from err
    if params != FORWARD_PARAMS:
        raise UnsupportedExperts(f"{cls}.forward takes ({', '.join(params)}), not ({', '.join(FORWARD_PARAMS)}): "
                                 "SparseExperts reproduces only that routed loop.")
    if getattr(module, "has_post_expert_norm", False):
        raise UnsupportedExperts(f"{cls} normalizes each expert's output (has_post_expert_norm), which "
                                 "SparseExperts does not compute.")
    gate = getattr(type(module), "_apply_gate", None)
    if gate is not None and getattr(gate, "__name__", "") != "_default_apply_gate":
        raise UnsupportedExperts(f"{cls} defines its own _apply_gate ({gate.__qualname__}), not act(gate) * up; "
                                 "SparseExperts computes only the latter.")


def experts_threshold(module: nn.Module, act_path: str) -> float:
    """The FATReLU threshold of the experts' shared activation; ``TypeError`` unless ReLU/FATReLU."""
    act = getattr(module, act_path)
    if isinstance(act, FATReLU):
        return float(act.threshold)
    if isinstance(act, nn.ReLU):
        return 0.0
    raise TypeError(
        f"{type(module).__name__}'s experts use {type(act).__name__} ({act_path}); the sparse FFN computes "
        "ReLU/FATReLU activations only (zeros are what it skips). Swap the activation first "
        "(actsparse.plugins.swap_activation(model, 'relu') or 'fatrelu') and fine-tune, then convert."
    )


def _stack(tensors) -> torch.Tensor | None:
    if any(t is None for t in tensors):
        return None
    return torch.stack([t.detach() for t in tensors]).contiguous()


class SparseExperts(nn.Module):
    """Inference replacement of a fused experts module (see the module docstring).

    Weights are buffers ``[E, f, d]`` (gate/up or fc, ``nn.Linear`` layout per expert) and
    ``[E, f, d_out]`` (down, transposed once). ``sparsity`` is a per-expert list (None: unknown),
    passed to the dispatch as :class:`SparseFFN`'s single value is.
    """

    def __init__(self, gated: bool, w_in, w_out_t, w_up=None, b_in=None, b_up=None, b_out=None,
                 threshold: float = 0.0, dense_above: float | None = None, backend: str = "auto") -> None:
        super().__init__()
        if gated != (w_up is not None):
            raise ValueError("Gated experts need w_up; ungated experts must not have one.")
        self.gated, self.threshold, self.dense_above, self.backend = gated, float(threshold), dense_above, backend
        self.num_experts = w_in.shape[0]
        self.sparsity: list[float | None] = [None] * self.num_experts
        for name, t in (("w_in", w_in), ("w_up", w_up), ("w_out_t", w_out_t), ("b_in", b_in), ("b_up", b_up),
                        ("b_out", b_out)):
            self.register_buffer(name, None if t is None else t.detach().contiguous())

    @classmethod
    def from_dense(cls, sites_or_module: nn.Module | list[ExpertSite], dense_above: float | None = None,
                   backend: str = "auto") -> SparseExperts:
        """Convert one fused experts module, given as the module or as all of its expert sites.

        Raises :class:`UnsupportedExperts` (the module's forward is not the routed loop) or
        ``TypeError`` (not ReLU/FATReLU), each naming the module class.

        Example:
            >>> from transformers import MixtralConfig
            >>> from transformers.models.mixtral.modeling_mixtral import MixtralExperts
            >>> torch.manual_seed(0) and None
            >>> cfg = MixtralConfig(hidden_size=8, intermediate_size=16, num_local_experts=3, hidden_act="relu")
            >>> dense = MixtralExperts(cfg)
            >>> for p in dense.parameters(): _ = torch.nn.init.normal_(p)
            >>> x, idx, w = torch.randn(5, 8), torch.randint(0, 3, (5, 2)), torch.rand(5, 2)
            >>> torch.allclose(SparseExperts.from_dense(dense)(x, idx, w), dense(x, idx, w), atol=1e-5)
            True
        """
        if isinstance(sites_or_module, nn.Module):
            sites = expert_sites("", sites_or_module)
            if not sites:
                raise UnsupportedExperts(f"{type(sites_or_module).__name__} holds no fused expert weights (two 3-D "
                                         "parameters with one leading expert dimension and an activation child).")
        else:
            sites = sorted(sites_or_module, key=lambda s: s.expert)
        owner = sites[0].owner
        if any(s.owner is not owner for s in sites) or [s.expert for s in sites] != list(range(len(sites))):
            raise ValueError("SparseExperts.from_dense needs every expert site of one experts module, in order.")
        check_experts_module(owner)
        threshold = experts_threshold(owner, sites[0].act_path)
        views = [(*s.inputs, s.down) for s in sites]
        w_out_t = _stack([v[-1].weight.t() for v in views])
        b_out = _stack([v[-1].bias for v in views])
        if sites[0].gated:
            return cls(True, _stack([v[0].weight for v in views]), w_out_t, _stack([v[1].weight for v in views]),
                       _stack([v[0].bias for v in views]), _stack([v[1].bias for v in views]), b_out, threshold,
                       dense_above, backend)
        return cls(False, _stack([v[0].weight for v in views]), w_out_t, None, _stack([v[0].bias for v in views]),
                   None, b_out, threshold, dense_above, backend)

    def _expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        def pick(t):
            return None if t is None else t[e]

        if self.gated:
            return sparse_gated_ffn(x, self.w_in[e], self.w_up[e], self.w_out_t[e], self.threshold, b_gate=pick(self.b_in),
                                    b_up=pick(self.b_up), b_down=pick(self.b_out), dense_above=self.dense_above,
                                    sparsity=self.sparsity[e], backend=self.backend)
        return sparse_ffn(x, self.w_in[e], self.w_out_t[e], self.threshold, b_fc=pick(self.b_in),
                          b_proj=pick(self.b_out), dense_above=self.dense_above, sparsity=self.sparsity[e],
                          backend=self.backend)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        """The eager experts loop (same order of ``index_add_``), each expert's FFN sparse."""
        final = torch.zeros_like(hidden_states)
        with torch.no_grad():
            mask = F.one_hot(top_k_index, num_classes=self.num_experts + 1).permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for e in hit[:, 0].tolist():
            if e == self.num_experts:  # index E marks a slot routed to no local expert
                continue
            top_k_pos, token_idx = torch.where(mask[e])
            y = self._expert(e, hidden_states[token_idx]) * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, y.to(final.dtype))
        return final

    def extra_repr(self) -> str:
        e, f, d = self.w_in.shape
        return (f"experts={e}, gated={self.gated}, d={d}, f={f}, d_out={self.w_out_t.shape[2]}, "
                f"threshold={self.threshold}")


def _path_of(model: nn.Module, module: nn.Module) -> str | None:
    return next((n for n, m in model.named_modules(remove_duplicate=False) if m is module), None)


def plan_experts(model: nn.Module, sites: list[ExpertSite], dense_above: float | None = None,
                 backend: str = "auto") -> tuple[list[tuple[nn.Module | None, str, SparseExperts]], list[str]]:
    """The assignments that put one :class:`SparseExperts` in place of each experts module of
    ``sites`` (nothing applied yet), and the names of the expert sites left dense.

    Raises ``ValueError`` when the selection holds some, not all, experts of one module (they share
    one module, which is replaced whole) and ``TypeError`` for a non-ReLU activation; a module whose
    forward is not the routed loop stays dense with a warning naming its class and what is missing.
    """
    groups: dict[int, list[ExpertSite]] = {}
    for s in sites:
        groups.setdefault(id(s.owner), []).append(s)
    plan, dense = [], []
    for group in groups.values():
        owner = group[0].owner
        total = getattr(owner, group[0].down_path).shape[0]
        if len(group) != total:
            raise ValueError(
                f"The selection holds {len(group)} of the {total} experts of {type(owner).__name__} "
                f"({', '.join(s.name for s in group[:4])}{' ...' if len(group) > 4 else ''}); its experts are one "
                "module, converted whole: select all of them (or none, with exclude=...).")
        try:
            new = SparseExperts.from_dense(group, dense_above=dense_above, backend=backend)
        except UnsupportedExperts as err:
            log.warning("convert_to_sparse: the %d experts of %s stay dense: %s", len(group), group[0].name.rpartition(".")[0]
                        or type(owner).__name__, err)
            dense += [s.name for s in group]
            continue
        path = _path_of(model, owner)
        if path is None:
            raise ValueError(f"{type(owner).__name__} (experts of site {group[0].name!r}) is not a submodule of the model.")
        if not path:
            plan.append((None, "", new))
            continue
        parent, _, attr = path.rpartition(".")
        plan.append((model.get_submodule(parent) if parent else model, attr, new))
    return plan, dense
