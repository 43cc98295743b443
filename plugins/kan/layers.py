"""KAN layers whose output nodes select among activation spaces (S-KAN, arXiv 2408.08338).

Edge ``i -> j`` of a KAN layer is ``phi_ji(x_i) = w_b[j,i]·silu(x_i) + w_s[j,i]·Σ_k c[j,i,k]·B_k(x_i)``
and node ``j`` sums its edges: ``y_j = Σ_i phi_ji(x_i) (+ b_j)``. In :class:`SKANLinear` every
node ``j`` holds a softmax selection ``α_j = softmax(logits_j / τ)`` over the spaces ``s`` and its
spline term is the mixture ``Σ_s α_js·w_s^(s)[j,i]·Σ_k c^(s)[j,i,k]·B_k^(s)(x_i)`` (the ``silu``
base is shared). :meth:`SKANLinear.prune_` keeps, per node, only the space with the largest
``α`` (folding ``α`` into its scale): the layer then stores one coefficient set per node,
evaluates only the spaces some node kept, and runs one matmul per kept space.

Every layer is computed as matmuls of whole feature blocks — ``silu(x) [B, in]`` with ``w_b``
and each space's basis values ``[B, in·K]`` with its effective weights ``[out, in·K]`` — with
no loop over nodes or edges (a loop over the spaces only). :class:`KANLinear` is the single-space layer (no selection).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from actsparse.plugins.kan.bases import SPACES, Basis, make_basis
from actsparse.plugins.sites import register_activation_type

#: the seven families of the first S-KAN studies (skan_digits; skan_fit uses KANCONV_SPACES), K = 8 each
DEFAULT_SPACES = ("bspline", "chebyshev", "fourier", "rbf", "mexican_hat", "legendre", "relu_kan")

SpacesArg = str | Sequence[str] | Mapping[str, Mapping[str, Any] | None]
#: what selects a space: each output node (its incoming edges share it; the paper's nodes) or
#: each input node (its outgoing edges share it: after pruning every input is evaluated in one
#: space only, so the pruned layer costs what a single-space layer does)
SELECT = ("outputs", "inputs")


def _parse_spaces(spaces: SpacesArg, basis_options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict]:
    if isinstance(spaces, str):
        spaces = [spaces]
    if isinstance(spaces, Mapping):
        parsed = {str(k): dict(v or {}) for k, v in spaces.items()}
    else:
        names = [str(s) for s in spaces]
        if len(set(names)) != len(names):
            raise ValueError(f"spaces lists a space twice: {names}.")
        parsed = {s: {} for s in names}
    if not parsed:
        raise ValueError("spaces is empty; give at least one activation space, e.g. spaces=['bspline'].")
    unknown = [s for s in parsed if s not in SPACES]
    if unknown:
        raise ValueError(f"Unknown activation space(s) {unknown}; registered spaces: {', '.join(SPACES)}. "
                         "Register a new one with actsparse.plugins.kan.register_basis.")
    for name, opts in (basis_options or {}).items():
        if name not in parsed:
            raise ValueError(f"basis_options names {name!r}, which is not among the layer's spaces {list(parsed)}.")
        parsed[name] = {**dict(opts or {}), **parsed[name]}
    return parsed


class SelectableKAN(nn.Module):
    """What :class:`SKANLinear` and :class:`~actsparse.plugins.kan.conv.SKANConv2d` share: the
    bases, the parameters, the selection, pruning and grid updates, on inputs ``[N, in_features]``."""

    def __init__(self, in_features: int, out_features: int, spaces: SpacesArg = DEFAULT_SPACES,
                 basis_options: Mapping[str, Mapping[str, Any]] | None = None, bias: bool = True,
                 temperature: float = 1.0, coef_init_std: float = 0.1, select: str = "outputs") -> None:
        super().__init__()
        if select not in SELECT:
            raise ValueError(f"select={select!r}: choose 'outputs' (a space per output node) or 'inputs' "
                             "(a space per input node).")
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features}, {out_features}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        parsed = _parse_spaces(spaces, basis_options)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.select = select
        n_select = self.out_features if select == "outputs" else self.in_features
        self.space_options = parsed
        self.spaces: tuple[str, ...] = tuple(parsed)
        self.bases = nn.ModuleDict({s: make_basis(s, in_features, **o) for s, o in parsed.items()})
        bound = 1.0 / math.sqrt(in_features)
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.spline_scale = nn.ParameterDict({s: nn.Parameter(torch.full((out_features, in_features), bound))
                                              for s in self.spaces})
        self.coef = nn.ParameterDict({
            s: nn.Parameter(torch.randn(out_features, in_features, self.bases[s].num_functions) * coef_init_std)
            for s in self.spaces})
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.selection_logits = (nn.Parameter(torch.zeros(n_select, len(self.spaces)))
                                 if len(self.spaces) > 1 else None)
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        # -1: not pruned; otherwise the index (into self.all_spaces) of the space each node kept.
        self.register_buffer("node_space", torch.full((n_select,), -1, dtype=torch.long))
        self.all_spaces: tuple[str, ...] = self.spaces
        self._groups: list[tuple[str, torch.Tensor]] = []
        self._last_input: torch.Tensor | None = None

    # -- selection ----------------------------------------------------------------------------
    @property
    def pruned(self) -> bool:
        return bool(self.node_space[0] >= 0)

    @property
    def selection(self) -> torch.Tensor:
        """``α [nodes, S]`` (nodes: outputs or inputs, see ``select``): each row sums to 1
        (one-hot after pruning; ones for a single space)."""
        if self.pruned:
            return F.one_hot(self.node_space, len(self.all_spaces)).to(self.base_weight.dtype)
        if self.selection_logits is None:
            return torch.ones(len(self.node_space), 1, dtype=self.base_weight.dtype, device=self.base_weight.device)
        return torch.softmax(self.selection_logits / self.temperature, dim=-1)

    def chosen_spaces(self) -> list[str]:
        """The space each selecting node uses (after pruning) or would keep (largest ``α``)."""
        index = self.node_space if self.pruned else self.selection.argmax(-1)
        return [self.all_spaces[i] for i in index.tolist()]

    # -- forward ------------------------------------------------------------------------------
    def _terms(self) -> list[tuple[torch.Tensor | None, torch.Tensor, list[tuple[str, torch.Tensor, torch.Tensor | None]]]]:
        """Per output group: ``(output index or None for all outputs, silu weight [n, in],
        [(space, effective spline weight [n, in', K], input index or None for all inputs), ...])``."""
        if self.pruned and self.select == "outputs":
            return [(index, self.base_weight[index],
                     [(space, self.spline_scale[space].unsqueeze(-1) * self.coef[space], None)])
                    for space, index in self._groups]
        if self.pruned:
            return [(None, self.base_weight,
                     [(space, self.spline_scale[space].unsqueeze(-1) * self.coef[space], index)
                      for space, index in self._groups])]
        alpha = self.selection if self.selection_logits is not None else None
        parts = []
        for s, space in enumerate(self.spaces):
            scale = self.spline_scale[space]
            if alpha is not None:
                scale = scale * (alpha[:, s:s + 1] if self.select == "outputs" else alpha[:, s].unsqueeze(0))
            parts.append((space, scale.unsqueeze(-1) * self.coef[space], None))
        return [(None, self.base_weight, parts)]

    def kan_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in] -> [N, out]``: one matmul for the ``silu`` term and one per space (no
        concatenated feature copy)."""
        if x.dim() != 2 or x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__} expects inputs [N, {self.in_features}], got {tuple(x.shape)}.")
        if self.training:
            self._last_input = x  # for KAN regularization (no copy: autograd keeps it anyway)
        base = F.silu(x)
        bases: dict[str, torch.Tensor] = {}
        outs = []
        for _, base_weight, parts in self._terms():
            y = F.linear(base, base_weight)
            for space, weight, inputs in parts:
                if space not in bases:
                    bases[space] = self.bases[space](x if inputs is None else x.index_select(1, inputs)).flatten(1)
                y = y + F.linear(bases[space], weight.flatten(1))
            outs.append(y)
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1).index_select(1, self.output_order)
        return y + self.bias if self.bias is not None else y

    @torch.no_grad()
    def edge_values(self, x: torch.Tensor) -> torch.Tensor:
        """Every edge function on ``x [N, in]``: ``phi_ji(x_i)`` as ``[N, out, in]`` (plots, tests)."""
        return self._edges(x)

    def _edges(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(x.shape[0], self.out_features, self.in_features)
        base = F.silu(x)
        for index, base_weight, parts in self._terms():
            edges = base.unsqueeze(1) * base_weight
            for space, weight, inputs in parts:
                if inputs is None:
                    edges = edges + torch.einsum("nik,oik->noi", self.bases[space](x), weight)
                else:
                    spline = torch.einsum("nik,oik->noi", self.bases[space](x.index_select(1, inputs)), weight)
                    edges = edges.index_add(2, inputs, spline)
            out = edges if index is None else out.index_copy(1, index, edges)
        return out

    def edge_l1(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """``|phi_ji|_1 = mean_n |phi_ji(x_n)|`` per edge ``[out, in]`` (KAN paper eq. 2.17), on
        ``x`` or on the last training input; differentiable."""
        x = self._last_input if x is None else x
        if x is None:
            raise RuntimeError(f"{type(self).__name__}.edge_l1 needs inputs: run a training forward first or pass x.")
        return self._edges(x).abs().mean(0)

    # -- pruning ------------------------------------------------------------------------------
    @torch.no_grad()
    def prune_(self) -> SelectableKAN:
        """Keep one space per node (the largest ``α``), folding ``α`` into its scale; drop the
        other spaces' coefficients and every space no node kept. In place; returns ``self``.
        When a node's ``α`` is already one-hot, its output is unchanged."""
        if self.pruned:
            return self
        alpha = self.selection
        choice = alpha.argmax(-1)
        for s, space in enumerate(self.spaces):
            self.spline_scale[space].mul_(alpha[:, s:s + 1] if self.select == "outputs" else alpha[:, s].unsqueeze(0))
        self._become_pruned(choice, keep_values=True)
        return self

    def _become_pruned(self, node_space: torch.Tensor, keep_values: bool) -> None:
        node_space = node_space.to(self.node_space.device, torch.long)
        kept = [s for s in range(len(self.spaces)) if bool((node_space == s).any())]
        scales, coefs = {}, {}
        for s in kept:
            space = self.spaces[s]
            index = (node_space == s).nonzero().flatten()
            dim = 0 if self.select == "outputs" else 1
            scale, coef = self.spline_scale[space], self.coef[space]
            if keep_values:
                scales[space] = nn.Parameter(scale.index_select(dim, index).clone())
                coefs[space] = nn.Parameter(coef.index_select(dim, index).clone())
            else:  # shapes only: values come from a state dict
                shape = list(coef.shape)
                shape[dim] = len(index)
                scales[space] = nn.Parameter(scale.new_empty(shape[:2]))
                coefs[space] = nn.Parameter(coef.new_empty(shape))
            if self.select == "inputs":  # the space now reads only its inputs
                self.bases[space].select_inputs(index)
        self.spline_scale = nn.ParameterDict(scales)
        self.coef = nn.ParameterDict(coefs)
        self.bases = nn.ModuleDict({self.spaces[s]: self.bases[self.spaces[s]] for s in kept})
        self.selection_logits = None
        self.node_space.copy_(node_space)
        self._refresh_groups()

    def _refresh_groups(self) -> None:
        self._groups = []
        order = []
        for s, space in enumerate(self.all_spaces):
            index = (self.node_space == s).nonzero().flatten()
            if len(index):
                self._groups.append((space, index))
                order.append(index)
        self.spaces = tuple(space for space, _ in self._groups)
        # output column j of the concatenated groups is node order[j]; output_order undoes that
        if self.select == "outputs":
            self.register_buffer("output_order", torch.argsort(torch.cat(order)), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        saved = state_dict.get(prefix + "node_space")
        if saved is not None and bool((saved >= 0).all()) and not self.pruned:
            self._become_pruned(saved, keep_values=False)  # a checkpoint written after pruning
        elif saved is not None and not bool((saved >= 0).all()) and self.pruned:
            raise RuntimeError(f"{prefix or 'layer'}: the state dict is of an unpruned S-KAN layer but this layer "
                               "is pruned; load it into a freshly built (unpruned) model.")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if self.pruned:
            self._groups = [(space, index.to(self.node_space.device)) for space, index in self._groups]

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if self.pruned:  # keep the cached group indices on the module's device
            self._groups = [(space, index.to(self.node_space.device)) for space, index in self._groups]
        return out

    # -- grid update --------------------------------------------------------------------------
    @torch.no_grad()
    def update_grid(self, x: torch.Tensor) -> None:
        """Move every B-spline grid to the inputs ``x [N, in]`` and refit its coefficients so the
        edge functions keep their values on ``x`` (KAN paper §2.4). Other spaces are unchanged."""
        inputs = dict(self._groups) if self.pruned and self.select == "inputs" else {}
        for space in self.spaces:
            basis = self.bases[space]
            if hasattr(basis, "update_grid"):
                xs = x.index_select(1, inputs[space]) if space in inputs else x
                self.coef[space].copy_(basis.update_grid(xs, self.coef[space]))

    # -- bookkeeping --------------------------------------------------------------------------
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        state = f", pruned ({', '.join(f'{s}: {len(i)}' for s, i in self._groups)})" if self.pruned else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"spaces={list(self.all_spaces)}, select={self.select!r}{state}")


class SKANLinear(SelectableKAN):
    """S-KAN layer ``[..., in_features] -> [..., out_features]``: each output node learns a
    softmax selection over ``spaces`` (see the module docstring).

    Args:
        spaces: names of registered spaces, or ``{name: options}`` (e.g. ``{"bspline":
            {"grid_size": 10}, "chebyshev": {"degree": 4}}``); default: all seven families.
        basis_options: options per space, merged under those given in ``spaces``.
        bias: a learnable offset per output node.
        temperature: ``τ`` of the selection softmax (the S-KAN callback lowers it to sharpen).
        select: ``"outputs"`` (default): each output node selects the space of its incoming
            edges; ``"inputs"``: each input node selects the space of its outgoing edges (after
            pruning, each input's basis is evaluated once, in its own space: the cheapest
            pruned layer).

    Example:
        >>> layer = SKANLinear(3, 4, spaces=["bspline", "chebyshev", "fourier"])
        >>> layer(torch.randn(5, 3)).shape, layer.selection.sum(-1)
        (torch.Size([5, 4]), tensor([1., 1., 1., 1.], grad_fn=<SumBackward1>))
        >>> layer.prune_().chosen_spaces()
        ['bspline', 'bspline', 'bspline', 'bspline']
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        return self.kan_forward(x.reshape(-1, x.shape[-1])).reshape(*lead, self.out_features)


class KANLinear(SKANLinear):
    """A single-space KAN layer (no selection): ``KANLinear(4, 8, space="chebyshev", degree=5)``.

    Example:
        >>> KANLinear(2, 3, space="rbf", grid_size=6)(torch.zeros(4, 2)).shape
        torch.Size([4, 3])
    """

    def __init__(self, in_features: int, out_features: int, space: str = "bspline", bias: bool = True,
                 coef_init_std: float = 0.1, **options: Any) -> None:
        super().__init__(in_features, out_features, spaces={space: options}, bias=bias, coef_init_std=coef_init_std)
        self.space = space


def skan_layers(model: nn.Module) -> list[tuple[str, SelectableKAN]]:
    """``(name, layer)`` for every KAN layer of ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SelectableKAN)]


def prune_spaces(model: nn.Module) -> dict[str, list[str]]:
    """Prune every S-KAN layer of ``model`` to one space per node; returns the chosen spaces."""
    return {name: layer.prune_().chosen_spaces() for name, layer in skan_layers(model)}


def update_grids(model: nn.Module, x: torch.Tensor) -> int:
    """Update the B-spline grids of every KAN layer from the inputs each layer sees when ``model``
    runs on ``x`` (one forward, like pykan's ``update_grid_from_samples``). A module that offers
    pykan's own ``update_grid_from_samples`` (pykan's ``KAN`` inside a wrapper) is updated by it,
    from the inputs it sees. Returns how many layers or pykan models were updated."""
    layers = [m for _, m in skan_layers(model) if any(hasattr(m.bases[s], "update_grid") for s in m.spaces)]
    offered = [(n, m) for n, m in model.named_modules() if callable(getattr(m, "update_grid_from_samples", None))]
    # the outermost only: pykan's KAN updates its own KANLayers (which offer the method too)
    pykans = [m for n, m in offered if not any(n.startswith(f"{o}.") or (o == "" and n) for o, _ in offered if o != n)]
    if not layers and not pykans:
        return 0
    seen: dict[int, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args: seen.__setitem__(id(mod), args[0]))
               for m in [*layers, *pykans]]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    for layer in layers:
        inputs = layer.input_rows(seen[id(layer)]) if hasattr(layer, "input_rows") else seen[id(layer)]
        layer.update_grid(inputs.reshape(-1, layer.in_features))
    for kan in pykans:
        kan.update_grid_from_samples(seen[id(kan)])
    return len(layers) + len(pykans)


register_activation_type(SKANLinear)

__all__ = [
    "DEFAULT_SPACES",
    "Basis",
    "KANLinear",
    "SKANLinear",
    "SelectableKAN",
    "prune_spaces",
    "skan_layers",
    "update_grids",
]
