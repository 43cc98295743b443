"""The sparse FFN's pure PyTorch reference: the same math as the compiled kernels, differentiable.

Used for gradients, for dtypes or devices without compiled kernels and with ``backend="reference"``
(:mod:`actsparse.plugins.sparse_ffn` routes calls here). Shares the kernels' semantics: a neuron
is active where NOT ``z < t`` (a NaN gate propagates, as in the dense path), the threshold is
compared exactly (:func:`threshold_like`), and above ``dense_above`` of the neurons in the union
up/down run dense.

Two gate activations (``activation``, :data:`ACTIVATIONS`): ``"fatrelu"`` keeps ``z`` where
``z >= t``; ``"cats"`` (Lee et al. 2024, CATS) keeps ``a = SiLU(z)`` where ``|a| > t``, the rule of
:class:`actsparse.plugins.training_free.CATSActivation` (a NaN ``a`` is dropped there, and here).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from actsparse.plugins.activations import FATReLU
from actsparse.plugins.training_free import CATSActivation
from torch import nn

__all__ = ["ACTIVATIONS", "activate", "activation_id", "computes", "fatrelu", "inactive", "reference_ffn",
           "reference_gated_ffn", "site_activation", "threshold_like", "validate_reference_args"]

# The op's ``activation`` argument by name (csrc/sparse_ffn.h: kActFatrelu, kActCatsSilu).
ACTIVATIONS = {"fatrelu": 0, "cats": 1}


def activation_id(activation: str) -> int:
    """The op's integer for an activation name, with the fix named for an unknown one."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)} ('fatrelu': z where z >= threshold; "
                         f"'cats': SiLU(z) where |SiLU(z)| > threshold), got {activation!r}.")
    return ACTIVATIONS[activation]


def threshold_like(z: torch.Tensor, threshold: float, down: bool = False) -> torch.Tensor:
    """``threshold`` as the smallest value of ``z``'s dtype that is ``>= threshold`` (0-dim, on CPU);
    with ``down``, the largest that is ``<= threshold`` (for CATS's ``|a| > t``).

    ``z >= 0.1`` with a Python float rounds the threshold to ``z``'s dtype (nearest), so a ``z``
    between the two would flip; against the value rounded up the comparison is exact, as in the
    compiled kernels (``threshold_f32`` / ``threshold_in`` in ``csrc/ops.cpp``).

    Example:
        >>> t = float(torch.tensor(0.1).item()) + 1e-12   # just above the float32 nearest 0.1
        >>> bool(torch.tensor(0.1) >= t), bool(torch.tensor(0.1) >= threshold_like(torch.tensor(0.1), t))
        (True, False)
    """
    t = torch.tensor(float(threshold), dtype=torch.float64).to(z.dtype)
    if down and float(t) > threshold:
        t = torch.nextafter(t, torch.tensor(float("-inf"), dtype=z.dtype))
    elif not down and float(t) < threshold:
        t = torch.nextafter(t, torch.tensor(float("inf"), dtype=z.dtype))
    return t


def inactive(z: torch.Tensor, threshold: float, activation: str = "fatrelu") -> torch.Tensor:
    """Where the activation of the pre-activation ``z`` is dropped. FATReLU: ``z < t`` (a NaN is
    active and propagates, as in the dense path); CATS: NOT ``|SiLU(z)| > t`` (a NaN is dropped)."""
    if activation_id(activation) == ACTIVATIONS["cats"]:
        a = F.silu(z)
        return ~(a.abs() > threshold_like(a, threshold, down=True))
    return z < threshold_like(z, threshold)


def activate(z: torch.Tensor, threshold: float, activation: str = "fatrelu") -> torch.Tensor:
    """The gate activation with exact zeros where inactive: FATReLU's ``z`` or CATS's ``SiLU(z)``."""
    a = F.silu(z) if activation_id(activation) == ACTIVATIONS["cats"] else z
    return torch.where(inactive(z, threshold, activation), torch.zeros((), dtype=z.dtype, device=z.device), a)


def fatrelu(z: torch.Tensor, threshold: float) -> torch.Tensor:
    return activate(z, threshold, "fatrelu")


_warned_capture = False


def _capturing(x: torch.Tensor) -> bool:
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def _gather_allowed(x: torch.Tensor, dense_above: float) -> bool:
    """Whether the reference may gather active rows: that reads the union size back to the host
    (``nonzero``), which CUDA-graph capture forbids. Under capture it computes the same values
    densely instead, and says so once."""
    global _warned_capture
    if dense_above <= 0:
        return False
    if _capturing(x):
        if not _warned_capture:
            _warned_capture = True
            warnings.warn("actsparse: the sparse FFN's PyTorch reference path is being captured in a CUDA graph; "
                          "it runs dense there (a gather would synchronize with the host and break the capture). "
                          "Build the CUDA kernels (see actsparse.ext) for a sparse, capturable op.", stacklevel=4)
        return False
    return True


def reference_gated_ffn(x, w_gate, w_up, w_down_t, threshold=0.0, b_gate=None, b_up=None, b_down=None,
                        dense_above=1.0, activation="fatrelu"):
    """Pure PyTorch sparse gated FFN on 2-D ``x`` (gather of the active rows; differentiable).

    Example:
        >>> x, w = torch.ones(1, 2), torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
        >>> reference_gated_ffn(x, w, w, w)   # neuron 0 active: 2 * 2 * [1, 1]
        tensor([[4., 4.]])
    """
    z = F.linear(x, w_gate, b_gate)
    gather = _gather_allowed(x, dense_above)
    active = (~inactive(z, threshold, activation)).any(0).nonzero().squeeze(1) if gather else None
    if not gather or active.numel() > dense_above * w_gate.shape[0]:
        h = activate(z, threshold, activation) * F.linear(x, w_up, b_up)
        out = h @ w_down_t
    else:
        up = F.linear(x, w_up.index_select(0, active), None if b_up is None else b_up.index_select(0, active))
        h = activate(z.index_select(1, active), threshold, activation) * up
        out = h @ w_down_t.index_select(0, active)
    return out if b_down is None else out + b_down


def reference_ffn(x, w_fc, w_proj_t, threshold=0.0, b_fc=None, b_proj=None, dense_above=1.0, activation="fatrelu"):
    """Pure PyTorch sparse plain FFN on 2-D ``x`` (gather of the active rows; differentiable).

    Example:
        >>> reference_ffn(torch.ones(1, 2), torch.tensor([[1.0, 1.0], [-1.0, 0.0]]), torch.eye(2))
        tensor([[2., 0.]])
    """
    z = F.linear(x, w_fc, b_fc)
    gather = _gather_allowed(x, dense_above)
    active = (~inactive(z, threshold, activation)).any(0).nonzero().squeeze(1) if gather else None
    if not gather or active.numel() > dense_above * w_fc.shape[0]:
        out = activate(z, threshold, activation) @ w_proj_t
    else:
        out = activate(z.index_select(1, active), threshold, activation) @ w_proj_t.index_select(0, active)
    return out if b_proj is None else out + b_proj


def validate_reference_args(op: str, x, weights: dict, biases: dict, d_out_name: str) -> None:
    """The reference path's argument checks. The compiled ops check their arguments in C++
    (csrc/ops.cpp, check_ffn_args) with the same messages; the fronts themselves only route."""
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"{op}: x must be [..., d] with d > 0, got shape {tuple(x.shape)}.")
    f = None
    for name, w in weights.items():
        if w.device != x.device:
            raise ValueError(f"{op}: {name} is on {w.device} but x is on {x.device}; move the module "
                             "(model.to(device)) so weights and inputs share a device.")
        if w.dtype != x.dtype:
            raise ValueError(f"{op}: {name} has dtype {w.dtype} but x has dtype {x.dtype}; cast one of "
                             f"them (e.g. x.to({name}.dtype)).")
        f = w.shape[0] if f is None else f
        want_cols = None if name == d_out_name else x.shape[-1]
        if w.dim() != 2 or w.shape[0] != f or (want_cols is not None and w.shape[1] != want_cols):
            raise ValueError(f"{op}: {name} must be neuron-major [f, d] = [{f}, {want_cols or 'd_out'}], got "
                             f"{tuple(w.shape)}. Down/proj weights are stored transposed (weight.t().contiguous()).")
        if not w.is_contiguous():
            raise ValueError(f"{op}: {name} with shape {tuple(w.shape)} is not contiguous (strides {w.stride()}); "
                             "store it once with .contiguous() (SparseFFN.from_dense does).")
    sizes = {"b_gate": f, "b_up": f, "b_fc": f, "b_down": weights[d_out_name].shape[1],
             "b_proj": weights[d_out_name].shape[1]}
    for name, b in biases.items():
        if b is not None and (b.shape != (sizes[name],) or b.dtype != x.dtype or b.device != x.device):
            raise ValueError(f"{op}: {name} must be a 1-D tensor of size {sizes[name]} with x's dtype and "
                             f"device, got {tuple(b.shape)} {b.dtype} on {b.device}.")


# Activations that equal FATReLU_0 everywhere (relu(0) = 0 = FATReLU_0(0)), as modules,
# functions (PyTorch's nn.TransformerEncoderLayer stores F.relu) or names.
_RELU_FUNCTIONS = (F.relu, torch.relu, torch.Tensor.relu)
_RELU_NAMES = ("relu",)


def computes(fn, reference) -> bool:
    """Whether ``fn`` computes ``reference`` (e.g. ``F.silu``), judged by its values on a float64
    grid (``nn.SiLU``, ``F.silu``, transformers' ``SiLUActivation`` all pass), so no list of
    classes has to be kept.

    Example:
        >>> computes(nn.SiLU(), F.silu), computes(nn.GELU(), F.silu)
        (True, False)
    """
    z = torch.linspace(-30, 30, 241, dtype=torch.float64)
    try:
        with torch.no_grad():
            out, want = fn(z), reference(z)
    except Exception:  # noqa: BLE001  (not callable on a float64 tensor: not what the kernels compute)
        return False
    return isinstance(out, torch.Tensor) and out.shape == z.shape and torch.allclose(out, want, rtol=1e-12, atol=0)


def _computes_silu(fn) -> bool:
    return computes(fn, F.silu)


def site_activation(site) -> tuple[str, float]:
    """The ops' (activation name, threshold) for an FFN site's activation, or a TypeError naming the fix
    (conversion calls it once per site)."""
    act = site.activation
    if isinstance(act, FATReLU):
        return "fatrelu", act.threshold
    if isinstance(act, nn.ReLU):
        return "fatrelu", 0.0
    if isinstance(act, CATSActivation):
        base = act.base
        if not _computes_silu(base):
            raise TypeError(f"Site {site.name!r} carries CATS over {base!r}; the sparse FFN computes CATS over SiLU "
                            "only (LLaMA-style gates). Keep this site dense (exclude=...) or swap its activation.")
        return "cats", act.threshold
    if isinstance(act, str):
        if act.lower() in _RELU_NAMES:
            return "fatrelu", 0.0
        name = repr(act)
    elif callable(act) and not isinstance(act, nn.Module):
        if any(act is fn for fn in _RELU_FUNCTIONS):
            return "fatrelu", 0.0
        name = f"the function {getattr(act, '__qualname__', repr(act))}"
    elif act is None:
        raise TypeError(
            f"Site {site.name!r} ({type(site.owner).__name__}) computes its activation as a functional call "
            "inside forward(), so conversion cannot tell which one it is. Make it an attribute (self.act = "
            "nn.ReLU()) or register the block with actsparse.plugins.register_ffn(..., act='act')."
        )
    else:
        name = type(act).__name__
    raise TypeError(
        f"Site {site.name!r} uses {name}; the sparse FFN computes ReLU/FATReLU and CATS (SiLU) activations only "
        "(zeros are what it skips). Install CATS or TEAL (actsparse.plugins.training_free.calibrate_cats / calibrate_teal), or swap the activation (actsparse.plugins.swap_activation(model, 'relu') or "
        "'fatrelu') and fine-tune, e.g. with the ProSparse callback, then convert."
    )
