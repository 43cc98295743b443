"""Sparse FFN inference: the ops' Python fronts and model conversion.

``sparse_gated_ffn(x, w_gate, w_up, w_down_t, threshold)`` computes
``(FATReLU_t(x w_gateᵀ) * (x w_upᵀ)) w_down_t`` and ``sparse_ffn(x, w_fc, w_proj_t, threshold)``
computes ``FATReLU_t(x w_fcᵀ) w_proj_t`` (DESIGN §3). All weights are neuron-major ``[f, d]``:
gate/up/fc in ``nn.Linear`` layout, the down/proj weight transposed once at conversion, so that
the neurons a token activates are contiguous rows everywhere. The gate is computed densely; up
and down touch only the neurons active for some token of the batch (their union), and run dense
when that union is too large for sparsity to pay (``dense_above``).

The compiled kernels (``csrc/``, built on first use by :mod:`actsparse.ext`) serve CPU (fp32,
bf16) and CUDA (fp32, fp16, bf16); anything else, ``ACTSPARSE_NO_EXT=1``, or a call that needs
gradients takes the pure PyTorch reference path (same math, differentiable;
:mod:`actsparse.plugins.sparse_ffn_reference`). Sparse or dense per call is the measured
dispatch's choice (:mod:`actsparse.plugins.sparse_ffn_dispatch`).

Example:
    >>> import torch
    >>> from actsparse.models import TinyLM
    >>> from actsparse.plugins.sparse_ffn import convert_to_sparse, SparseFFN
    >>> torch.manual_seed(0) and None
    >>> model = TinyLM(d_model=32, n_layers=2, n_heads=2, activation="relu").eval()
    >>> prompt = torch.randint(0, 256, (1, 8))
    >>> dense_tokens = model.generate(prompt, 5)
    >>> sparse_model = convert_to_sparse(model, inplace=False)
    >>> type(sparse_model.blocks[0].ffn).__name__
    'SparseFFN'
    >>> torch.equal(sparse_model.generate(prompt, 5), dense_tokens)
    True
"""

from __future__ import annotations

import copy

import torch
from actsparse.plugins.activations import FATReLU  # noqa: F401  (the docstring examples use it)
from actsparse.plugins.sites import (
    GATED_FFN,
    PLAIN_FFN,
    NoSitesError,
    Site,
    ffn_sites,
    find_sites,
    linear_weight,
)
from actsparse.plugins.sparse_ffn_dispatch import (
    KERNELS,
    calibrate_sparsity,
    choose,
    dense_above_for,
)
from actsparse.plugins.sparse_ffn_reference import (
    activation_id,
    reference_ffn,
    reference_gated_ffn,
    site_activation,
    validate_reference_args,
)
from torch import nn

__all__ = [
    "SparseFFN",
    "convert_to_sparse",
    "default_dense_above",
    "sparse_ffn",
    "sparse_gated_ffn",
]

def default_dense_above(device: torch.device | str, batch: int, sparsity: float | None = None) -> float:
    """The ``dense_above`` used when none is given: the measured dispatch of
    :mod:`actsparse.plugins.sparse_ffn_dispatch` for this device, batch and layer sparsity
    (a fraction; ``None`` when unknown). ``1`` runs the sparse kernels at any union, ``0`` the
    dense path; the CPU also uses ``0.5`` (dense when the union exceeds half the neurons).

    Example (no dispatch table for the CPU: the built-in rule):
        >>> default_dense_above("cpu", 1), default_dense_above("cpu", 12), default_dense_above("cpu", 32)
        (1.0, 0.5, 0.0)
    """
    return dense_above_for(device, batch, sparsity)


def _route(x: torch.Tensor, batch: int, dense_above, sparsity, kernel) -> tuple[float, int]:
    """(dense_above, kernel id) for the op: the caller's values, else the measured dispatch's."""
    if kernel is not None and kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)} or None (the dispatch table's choice), got {kernel!r}.")
    if dense_above is None:
        choice = choose(x.device, batch, sparsity)
        return choice.dense_above, KERNELS[kernel or choice.kernel or "three_kernel"]
    return float(dense_above), KERNELS[kernel or "three_kernel"]


# -- the fronts --------------------------------------------------------------------------------------

def use_kernels(x: torch.Tensor, tensors, backend: str) -> bool:
    """Whether a call on ``x`` runs the compiled kernels (``backend`` "auto", "ext" or "reference"): not
    when a tensor needs gradients or sits elsewhere, nor for a device or dtype without kernels."""
    if backend not in ("auto", "ext", "reference"):
        raise ValueError(f"backend must be 'auto', 'ext' or 'reference', got {backend!r}.")
    if backend == "reference":
        return False
    if any(t is not None and t.device != x.device for t in tensors):
        return False  # the reference path's checks name the misplaced tensor
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        if backend == "ext":
            raise RuntimeError("The compiled sparse-FFN kernels are inference-only; call under torch.no_grad() "
                               "or torch.inference_mode(), or use backend='reference' for gradients.")
        return False  # gradients flow through the (differentiable) reference path
    from actsparse import ext

    if backend == "auto" and not ext.supports(x.device, x.dtype):
        if x.is_cuda and not ext.supports(x.device):
            ext.warn_no_cuda_kernels()
        return False  # e.g. float64: the reference path serves every dtype, as documented
    if backend == "ext" and not ext.supports(x.device):
        raise RuntimeError(f"backend='ext' but no compiled kernel serves {x.device}: {ext.load().reason}")
    return True


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _activation(op: str, activation: str, threshold: float) -> int:
    act = activation_id(activation)
    if activation == "cats" and not threshold >= 0:
        raise ValueError(f"{op}: the CATS threshold is a magnitude (|SiLU(z)| > threshold) and must be >= 0, "
                         f"got {threshold}.")
    return act


def sparse_gated_ffn(x, w_gate, w_up, w_down_t, threshold: float = 0.0, *, b_gate=None, b_up=None, b_down=None,
                     dense_above: float | None = None, sparsity: float | None = None,
                     kernel: str | None = None, activation: str = "fatrelu", backend: str = "auto") -> torch.Tensor:
    """``(FATReLU_t(x w_gateᵀ + b_gate) * (x w_upᵀ + b_up)) w_down_t + b_down`` for x ``[..., d]``.

    Args:
        x: activations ``[..., d]`` (leading dimensions are flattened into one batch).
        w_gate, w_up: ``[f, d]`` (``nn.Linear`` layout), contiguous.
        w_down_t: ``[f, d_out]``, the down weight transposed once (``down.weight.t().contiguous()``).
        threshold: FATReLU threshold: a neuron is active where its gate pre-activation is ``>= threshold``
            (with ``activation="cats"``: where ``|SiLU(z)| > threshold``).
        dense_above: union fraction of active neurons above which up/down run dense; ``None``
            picks :func:`default_dense_above`, ``0`` forces dense, ``1`` forces sparse. On CUDA a
            value strictly between 0 and 1 reads the union size back to the host (one
            synchronization per call; refused under CUDA-graph capture).
        sparsity: the layer's measured sparsity (fraction of inactive neurons per token), which the
            dispatch table uses when ``dense_above`` is None (``SparseFFN`` passes its own).
        kernel: the sparse CUDA kernel set by name (``"three_kernel"``, the measured default;
            ``"three_kernel_pdl"``, the same with programmatic dependent launch, H100/H200 only;
            ``"persistent"``, one persistent pipelined kernel for batch 1; ``"tensor_core"``, bf16
            mma for batches 2-8; the last three not yet measured); None: the dispatch table's
            choice. The CPU has one set.
        activation: ``"fatrelu"`` (default) or ``"cats"``: ``h = SiLU(z)`` where ``|SiLU(z)| > threshold``,
            else 0 (CATS, Lee et al. 2024; what ``convert_to_sparse`` uses for a site carrying
            :class:`~actsparse.plugins.training_free.CATSActivation`).
        backend: ``"auto"`` (compiled kernels when available), ``"ext"`` (require them) or ``"reference"``.

    Example:
        >>> torch.manual_seed(0) and None
        >>> x, wg, wu, wd = torch.randn(3, 16), torch.randn(40, 16), torch.randn(40, 16), torch.randn(16, 40)
        >>> y = sparse_gated_ffn(x, wg, wu, wd.t().contiguous(), threshold=0.5)
        >>> dense = (FATReLU(0.5)(x @ wg.t()) * (x @ wu.t())) @ wd.t()
        >>> torch.allclose(y, dense, rtol=1e-4, atol=1e-4)
        True
    """
    op = "actsparse.sparse_gated_ffn"
    x2 = _flat(x)
    act = _activation(op, activation, threshold)
    dense_above, kernel_id = _route(x, x2.shape[0], dense_above, sparsity, kernel)
    tensors = (x, w_gate, w_up, w_down_t, b_gate, b_up, b_down)
    if use_kernels(x, tensors, backend):
        y = torch.ops.actsparse.sparse_gated_ffn(x2, w_gate, w_up, w_down_t, float(threshold), b_gate, b_up, b_down,
                                                 dense_above, kernel_id, act)
    else:
        validate_reference_args(op, x, {"w_gate": w_gate, "w_up": w_up, "w_down_t": w_down_t},
               {"b_gate": b_gate, "b_up": b_up, "b_down": b_down}, "w_down_t")
        y = reference_gated_ffn(x2, w_gate, w_up, w_down_t, threshold, b_gate, b_up, b_down, dense_above, activation)
    return y.reshape(*x.shape[:-1], w_down_t.shape[1])


def sparse_ffn(x, w_fc, w_proj_t, threshold: float = 0.0, *, b_fc=None, b_proj=None,
               dense_above: float | None = None, sparsity: float | None = None, kernel: str | None = None,
               activation: str = "fatrelu", backend: str = "auto") -> torch.Tensor:
    """``FATReLU_t(x w_fcᵀ + b_fc) w_proj_t + b_proj`` for x ``[..., d]`` (GPT-2/BERT-style FFN).

    Arguments as in :func:`sparse_gated_ffn`; ``w_proj_t`` is ``proj.weight.t().contiguous()``.

    Example:
        >>> torch.manual_seed(0) and None
        >>> x, wf, wp, bf = torch.randn(2, 5, 16), torch.randn(40, 16), torch.randn(16, 40), torch.randn(40)
        >>> y = sparse_ffn(x, wf, wp.t().contiguous(), b_fc=bf)
        >>> torch.allclose(y, torch.relu(x @ wf.t() + bf) @ wp.t(), rtol=1e-4, atol=1e-4), y.shape
        (True, torch.Size([2, 5, 16]))
    """
    op = "actsparse.sparse_ffn"
    x2 = _flat(x)
    act = _activation(op, activation, threshold)
    dense_above, kernel_id = _route(x, x2.shape[0], dense_above, sparsity, kernel)
    if use_kernels(x, (x, w_fc, w_proj_t, b_fc, b_proj), backend):
        y = torch.ops.actsparse.sparse_ffn(x2, w_fc, w_proj_t, float(threshold), b_fc, b_proj, dense_above, kernel_id,
                                           act)
    else:
        validate_reference_args(op, x, {"w_fc": w_fc, "w_proj_t": w_proj_t}, {"b_fc": b_fc, "b_proj": b_proj}, "w_proj_t")
        y = reference_ffn(x2, w_fc, w_proj_t, threshold, b_fc, b_proj, dense_above, activation)
    return y.reshape(*x.shape[:-1], w_proj_t.shape[1])


# -- conversion ----------------------------------------------------------------------------------------

class SparseFFN(nn.Module):
    """Inference FFN that skips inactive neurons (see the module docstring).

    Built with :meth:`from_dense`; weights are buffers (it is not meant to be trained), stored
    neuron-major with the down/proj weight transposed once. ``forward`` accepts ``[..., d]``.
    ``sparsity`` (fraction of neurons a token leaves at zero, measured by :func:`convert_to_sparse`
    on calibration data, or set by hand) picks sparse or dense per batch size from the measured
    dispatch table (:mod:`actsparse.plugins.sparse_ffn_dispatch`) unless ``dense_above`` is set.
    """

    def __init__(self, kind: str, w_in: torch.Tensor, w_out_t: torch.Tensor, w_up: torch.Tensor | None = None,
                 b_in=None, b_up=None, b_out=None, threshold: float = 0.0, dense_above: float | None = None,
                 backend: str = "auto", sparsity: float | None = None, activation: str = "fatrelu") -> None:
        super().__init__()
        if kind not in (GATED_FFN, PLAIN_FFN):
            raise ValueError(f"kind must be {GATED_FFN!r} or {PLAIN_FFN!r}, got {kind!r}.")
        if (kind == GATED_FFN) != (w_up is not None):
            raise ValueError("A gated FFN needs w_up; a plain FFN must not have one.")
        self.kind, self.threshold, self.dense_above, self.backend = kind, float(threshold), dense_above, backend
        self.sparsity = sparsity
        activation_id(activation)
        self.activation = activation
        for name, t in (("w_in", w_in), ("w_up", w_up), ("w_out_t", w_out_t), ("b_in", b_in), ("b_up", b_up),
                        ("b_out", b_out)):
            self.register_buffer(name, None if t is None else t.detach().contiguous())

    @classmethod
    def from_dense(cls, module_or_site: nn.Module | Site, dense_above: float | None = None,
                   backend: str = "auto", sparsity: float | None = None) -> "SparseFFN":
        """Convert one FFN (a module :func:`find_sites` understands, or one of its sites).

        The result computes the site's whole FFN, ``proj(act(fc(x)))`` or
        ``down(act(gate(x)) * up(x))`` with biases, whatever modules hold its parts (BERT's
        ``BertLayer`` splits them over ``BertIntermediate`` and ``BertOutput``);
        :func:`convert_to_sparse` decides where it goes in the model.

        Example:
            >>> from actsparse.models.llama import GatedFFN
            >>> ffn = GatedFFN(16, 48, "relu")
            >>> sparse = SparseFFN.from_dense(ffn)
            >>> x = torch.randn(4, 16)
            >>> torch.allclose(sparse(x), ffn(x), atol=1e-6)
            True
        """
        site = module_or_site if isinstance(module_or_site, Site) else _own_ffn_site(module_or_site)
        if site.kind not in (GATED_FFN, PLAIN_FFN):
            raise TypeError(f"Site {site.name!r} is a bare activation ({site.kind}), not an FFN block.")
        activation, threshold = site_activation(site)

        def bias(layer):
            return getattr(layer, "bias", None)

        down = site.down
        w_out_t = linear_weight(down).t()  # [f, d_out]; contiguous() in __init__ copies once
        if site.kind == GATED_FFN:
            gate, up = site.inputs
            return cls(GATED_FFN, linear_weight(gate), w_out_t, linear_weight(up), bias(gate), bias(up), bias(down),
                       threshold, dense_above, backend, sparsity, activation)
        (fc,) = site.inputs
        return cls(PLAIN_FFN, linear_weight(fc), w_out_t, None, bias(fc), None, bias(down), threshold, dense_above,
                   backend, sparsity, activation)

    @property
    def sparsity(self) -> float | None:
        return self._sparsity

    @sparsity.setter
    def sparsity(self, value: float | None) -> None:
        if value is not None and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"sparsity is the fraction of inactive neurons per token, in [0, 1]; got {value}.")
        self._sparsity = None if value is None else float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == GATED_FFN:
            return sparse_gated_ffn(x, self.w_in, self.w_up, self.w_out_t, self.threshold, b_gate=self.b_in,
                                    b_up=self.b_up, b_down=self.b_out, dense_above=self.dense_above,
                                    sparsity=self._sparsity, activation=self.activation, backend=self.backend)
        return sparse_ffn(x, self.w_in, self.w_out_t, self.threshold, b_fc=self.b_in, b_proj=self.b_out,
                          dense_above=self.dense_above, sparsity=self._sparsity, activation=self.activation,
                          backend=self.backend)

    def extra_repr(self) -> str:
        f, d = self.w_in.shape
        sparsity = "" if self._sparsity is None else f", sparsity={self._sparsity:.3f}"
        act = "" if self.activation == "fatrelu" else f", activation={self.activation}"
        return f"kind={self.kind}, d={d}, f={f}, d_out={self.w_out_t.shape[1]}, threshold={self.threshold}{act}{sparsity}"


def _converted(site: Site, **options) -> nn.Module:
    """The inference module for one FFN site: a TealFFN where TEAL is installed, else a SparseFFN."""
    from actsparse.plugins.sparse_ffn_teal import TealFFN  # imported here: it imports this module
    from actsparse.plugins.training_free import teal_thresholds

    thresholds = teal_thresholds(site)
    if thresholds is not None:
        return TealFFN.from_site(site, thresholds, **options)
    return SparseFFN.from_dense(site, **options)


def _own_ffn_site(module: nn.Module) -> Site:
    sites = [s for s in ffn_sites(module) if s.owner is module]
    if not sites:
        raise NoSitesError(
            f"{type(module).__name__} is not an FFN block find_sites understands; pass the FFN module itself "
            "(e.g. model.blocks[0].ffn) or a Site, or register it with actsparse.plugins.register_ffn."
        )
    return sites[0]


def _owner_is_the_ffn(site: Site) -> bool:
    """Whether the site's owner holds nothing but the FFN's projections (LlamaMLP, GPT2MLP, ...):
    then its forward is the FFN and the whole owner can be replaced. Otherwise (BertLayer,
    nn.TransformerEncoderLayer) attention and norms live there too, and only the FFN's parts may
    be rewired."""
    if site.whole is not None:  # the structural finder ran the block: it knows whether the FFN is all of it
        return site.whole
    ffn_params = {id(p) for layer in (*site.inputs, site.down) for p in layer.parameters()}
    return all(id(p) in ffn_params for p in site.owner.parameters())


def _child_slot(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent, _, attr = path.rpartition(".")
    return (root.get_submodule(parent) if parent else root), attr


def _plan(model: nn.Module, site: Site, new: SparseFFN) -> list[tuple[nn.Module, str, object]]:
    """The attribute assignments that put ``new`` in place of the site's FFN (nothing applied yet)."""
    if _owner_is_the_ffn(site):
        if not site.name:
            return [(None, "", new)]  # the model is the FFN: convert_to_sparse returns ``new``
        return [(*_child_slot(model, site.name), new)]
    # The FFN's parts live in a larger module (the projections may even sit in different
    # children, as in BERT). For a plain FFN, fc -> SparseFFN (the whole FFN, down bias included)
    # and act, down -> identity keep the module's own forward, residuals and norms untouched:
    # down(act(fc(x))) becomes identity(identity(sparse(x))). Dropout between them is inactive in
    # eval, where converted models run.
    if site.kind == GATED_FFN:
        raise TypeError(
            f"Site {site.name!r}: the gated FFN's projections live in {type(site.owner).__name__} together with "
            "other layers, and act(gate(x)) * up(x) cannot be rewired into one module there. Register the FFN "
            "block itself (actsparse.plugins.register_ffn on the module that holds only gate/up/down)."
        )
    if site.act_path is None or isinstance(site.activation, str):
        raise TypeError(
            f"Site {site.name!r}: {type(site.owner).__name__} holds attention or norms besides the FFN, so its "
            "FFN is rewired in place, which needs the activation as an attribute holding a module or function "
            f"(found {site.activation!r}). Make it one (self.act = nn.ReLU())."
        )
    (fc_path,) = site.input_paths
    plan = [(*_child_slot(site.owner, fc_path), new), (*_child_slot(site.owner, site.act_path), nn.Identity()),
            (*_child_slot(site.owner, site.down_path), nn.Identity())]
    if getattr(site.owner, "activation_relu_or_gelu", None):
        # nn.TransformerEncoder(Layer)'s fused inference fast path reads linear1.weight directly and
        # would bypass the converted FFN; this flag is how it decides to take that path.
        plan.append((site.owner, "activation_relu_or_gelu", False))
    return plan


def convert_to_sparse(model: nn.Module, include=None, exclude=None, *, inplace: bool = True,
                      dense_above: float | None = None, backend: str = "auto", calibration=None) -> nn.Module:
    """Replace every FFN site of ``model`` (gated and plain) with a :class:`SparseFFN`.

    ``include``/``exclude`` select sites as in :func:`find_sites`. Every selected FFN must use a
    ReLU or FATReLU activation (a module, ``F.relu``, or the name ``"relu"``) or carry CATS over
    SiLU (:class:`~actsparse.plugins.training_free.CATSActivation`, installed by ``calibrate_cats``:
    the layer then computes ``activation="cats"`` with its threshold) or have TEAL installed
    (``calibrate_teal``: the site becomes a :class:`~actsparse.plugins.sparse_ffn_teal.TealFFN`
    with its thresholds and the FFN's own activation); else a ``TypeError``
    names the site and the fix. A module that is only the FFN (``LlamaMLP``, ``GPT2MLP``,
    actsparse's FFNs) is replaced whole; a plain FFN inside a larger layer (BERT's ``BertLayer``,
    ``nn.TransformerEncoderLayer``) is rewired in place: its fc becomes the :class:`SparseFFN`,
    its activation and down projection identities. A fused mixture-of-experts module becomes one
    :class:`~actsparse.plugins.sparse_experts.SparseExperts` (all its experts selected, or none). Returns the converted model (``model`` itself
    unless ``inplace=False``, which converts a deep copy). Conversion is for inference: call the
    result under ``torch.no_grad()``/``inference_mode()`` and in ``eval()`` mode.

    ``calibration``: model inputs (an iterable of batches: tensors, tuples of positional
    arguments, or dicts of keyword arguments) run through the dense model first; each site's
    measured sparsity is stored on its :class:`SparseFFN` and picks sparse or dense per batch
    size from the measured dispatch table (:func:`~actsparse.plugins.sparse_ffn_dispatch.calibrate_sparsity`).
    Without it the layers' sparsity is unknown and the table is read at 0% (conservative).

    Example:
        >>> from actsparse.models import TinyLM
        >>> m = convert_to_sparse(TinyLM(d_model=16, n_layers=2, n_heads=2, activation="fatrelu", threshold=0.01))
        >>> m.blocks[1].ffn
        SparseFFN(kind=gated_ffn, d=16, f=48, d_out=16, threshold=0.01)
    """
    if not inplace:
        model = copy.deepcopy(model)
    found = ffn_sites(model, find_sites(model, include, exclude))
    sites = [s for s in found if s.kind in (GATED_FFN, PLAIN_FFN)]
    # imported here: sparse_experts imports this module's fronts
    from actsparse.plugins.sparse_experts import plan_experts

    expert_plans, dense_experts = plan_experts(model, [s for s in found if s.kind not in (GATED_FFN, PLAIN_FFN)],
                                               dense_above=dense_above, backend=backend)
    if not sites and not expert_plans:
        raise NoSitesError(f"{type(model).__name__}'s FFN sites are all mixture-of-experts experts whose modules "
                           f"cannot be converted ({len(dense_experts)}; the warnings say why); they stay dense.")
    measured = calibrate_sparsity(model, sites, calibration) if calibration is not None else {}
    plans = [_plan(model, s, _converted(s, dense_above=dense_above, backend=backend, sparsity=measured.get(s.name)))
             for s in sites]
    plans += [[step] for step in expert_plans]
    for plan in plans:  # every site validated before the model is touched
        for owner, attr, value in plan:
            if owner is None:
                return value
            setattr(owner, attr, value)
    return model
