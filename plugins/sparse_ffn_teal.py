"""TEAL in the sparse FFN: a converted layer that never reads the weights its zeroed inputs multiply.

TEAL (Liu et al. 2024, ICLR 2025; :mod:`actsparse.plugins.training_free`) zeroes small entries of the
hidden state entering the FFN's projections: ``x_s = x·1[|x| > t_in]`` before gate/up (or fc) and
``x1_s = x1·1[|x1| > t_down]`` before down, with ``x1 = act(x_s W_gateᵀ) * (x_s W_upᵀ)``. A zero
input entry makes a whole *column* of gate/up unnecessary (a row of down, as in ReLU sparsity), so
:class:`TealFFN` stores gate/up transposed (``[d, f]``, one contiguous row per input dimension) and
the op ``torch.ops.actsparse.teal_ffn`` (``csrc/teal_ffn_cpu.cpp``) accumulates only the rows of the
active inputs, the way the paper's kernel gathers columns. The model's own activation stays (SiLU in
LLaMA; ReLU and both GELUs are also served).

:func:`~actsparse.plugins.sparse_ffn.convert_to_sparse` builds a :class:`TealFFN` for every site on
which :func:`~actsparse.plugins.training_free.calibrate_teal` (or ``install_teal``) installed TEAL;
the converted model computes what the hooked model computes (the hooks' rule ``|x| > t``, compared
in the model's dtype), so greedy decoding produces the same tokens.

Devices: the compiled kernel serves the CPU (float32, bfloat16). Elsewhere, for other dtypes, with
``backend="reference"`` or when gradients are needed, the PyTorch reference runs: the same values,
computed densely (no CUDA kernel for TEAL yet; on a GPU a converted model is as fast as the hooked one).

Example:
    >>> import torch
    >>> from actsparse.models.llama import GatedFFN
    >>> from actsparse.plugins.training_free import install_teal
    >>> torch.manual_seed(0) and None
    >>> ffn = GatedFFN(16, 48, "silu").eval()
    >>> hooked = install_teal(ffn, {"": {"input": 0.5, "down": 0.05}})
    >>> x = torch.randn(3, 16)
    >>> converted = TealFFN.from_site(next(iter(ffn_sites(ffn))), {"input": 0.5, "down": 0.05})
    >>> torch.allclose(converted(x), ffn(x), atol=1e-5)
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from actsparse.plugins.sites import GATED_FFN, PLAIN_FFN, Site, ffn_sites, linear_weight  # noqa: F401  (ffn_sites: the example)
from actsparse.plugins.sparse_ffn import default_dense_above, use_kernels
from actsparse.plugins.sparse_ffn_reference import computes
from actsparse.plugins.training_free import zero_small  # the hooks' rule: |x| > t in x's dtype
from torch import nn

__all__ = ["TEAL_ACTIVATIONS", "TealFFN", "reference_teal_ffn", "teal_activation", "teal_ffn"]

# The op's ``activation`` argument (csrc/teal_ffn_cpu.cpp: kTealSilu, ...): the FFN's own activation.
TEAL_ACTIVATIONS = {"silu": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3}
_FUNCTIONS = {"silu": F.silu, "relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda z: F.gelu(z, approximate="tanh")}
_NAMES = {"silu": "silu", "swish": "silu", "relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh",
          "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


def teal_activation(act) -> str:
    """The :data:`TEAL_ACTIVATIONS` name of an FFN's activation (a module, function or transformers
    name), judged by its values; a ``TypeError`` names the ones served.

    Example:
        >>> teal_activation(nn.SiLU()), teal_activation(F.relu), teal_activation("gelu_new")
        ('silu', 'relu', 'gelu_tanh')
    """
    if isinstance(act, str) and act.lower() in _NAMES:
        return _NAMES[act.lower()]
    if callable(act):
        for name, fn in _FUNCTIONS.items():
            if computes(act, fn):
                return name
    raise TypeError(f"TEAL's sparse FFN computes the activations {sorted(TEAL_ACTIVATIONS)}; this FFN uses {act!r}. "
                    "Keep the site dense (convert_to_sparse(..., exclude=[...])).")


def reference_teal_ffn(x, w_in_t, w_up_t, w_out_t, input_threshold, down_threshold, b_in=None, b_up=None, b_out=None,
                       activation="silu"):
    """TEAL's FFN in PyTorch on ``x [..., d]``: dense matrix products on the sparsified inputs
    (differentiable; the values the compiled kernel computes, without its skipped reads).

    Example:
        >>> x, eye = torch.tensor([[0.2, -3.0]]), torch.eye(2)
        >>> reference_teal_ffn(x, eye, None, eye, 0.5, 0.0, activation="relu")   # 0.2 dropped, relu(-3) = 0
        tensor([[0., 0.]])
    """
    xs = zero_small(x, input_threshold)
    z = xs @ w_in_t
    x1 = _FUNCTIONS[activation](z if b_in is None else z + b_in)
    if w_up_t is not None:
        u = xs @ w_up_t
        x1 = x1 * (u if b_up is None else u + b_up)
    out = zero_small(x1, down_threshold) @ w_out_t
    return out if b_out is None else out + b_out


def teal_ffn(x, w_in_t, w_out_t, input_threshold: float, down_threshold: float, *, w_up_t=None, b_in=None,
             b_up=None, b_out=None, activation: str = "silu", dense_above: float | None = None, sparsity=None,
             backend: str = "auto") -> torch.Tensor:
    """TEAL's FFN on ``x [..., d]``: ``w_in_t``/``w_up_t`` input-major ``[d, f]``, ``w_out_t`` ``[f, d_out]``.

    ``dense_above``: the fraction of active inputs (union over the batch) above which a projection
    runs dense; None picks :func:`~actsparse.plugins.sparse_ffn.default_dense_above` for the device
    and batch. ``backend`` as in :func:`~actsparse.plugins.sparse_ffn.sparse_gated_ffn`; the compiled
    kernel serves the CPU only (``backend="ext"`` elsewhere is an error).

    Example:
        >>> torch.manual_seed(0) and None
        >>> x, wg, wu, wd = torch.randn(2, 16), torch.randn(16, 40), torch.randn(16, 40), torch.randn(40, 16)
        >>> y = teal_ffn(x, wg, wd, 0.5, 0.1, w_up_t=wu)
        >>> torch.allclose(y, reference_teal_ffn(x, wg, wu, wd, 0.5, 0.1), atol=1e-4)
        True
    """
    if activation not in TEAL_ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(TEAL_ACTIVATIONS)}, got {activation!r}.")
    for name, t in (("input_threshold", input_threshold), ("down_threshold", down_threshold)):
        if not 0 <= float(t) < float("inf"):
            raise ValueError(f"teal_ffn: {name} is a magnitude (|x| > t) and must be finite and >= 0, got {t}.")
    tensors = (x, w_in_t, w_up_t, w_out_t, b_in, b_up, b_out)
    if backend == "ext" and x.device.type != "cpu":
        raise RuntimeError(f"backend='ext': the TEAL kernel serves the CPU only, x is on {x.device}; use "
                           "backend='auto' (the PyTorch reference runs there).")
    if x.device.type == "cpu" and use_kernels(x, tensors, backend):
        x2 = x.reshape(-1, x.shape[-1])
        if dense_above is None:
            dense_above = default_dense_above(x.device, x2.shape[0], sparsity)
        y = torch.ops.actsparse.teal_ffn(x2, w_in_t, w_up_t, w_out_t, float(input_threshold), float(down_threshold),
                                         b_in, b_up, b_out, TEAL_ACTIVATIONS[activation], float(dense_above))
        return y.reshape(*x.shape[:-1], w_out_t.shape[1])
    return reference_teal_ffn(x, w_in_t, w_up_t, w_out_t, input_threshold, down_threshold, b_in, b_up, b_out,
                              activation)


class TealFFN(nn.Module):
    """An FFN with TEAL's sparsified projection inputs, for inference (weights are buffers).

    Built by :meth:`from_site` (``convert_to_sparse`` does it for TEAL sites). ``sparsity`` (the
    measured zero fraction of the layer, when known) informs the default ``dense_above``.
    """

    def __init__(self, w_in_t, w_out_t, input_threshold: float, down_threshold: float, *, w_up_t=None, b_in=None,
                 b_up=None, b_out=None, activation: str = "silu", dense_above: float | None = None,
                 backend: str = "auto", sparsity: float | None = None) -> None:
        super().__init__()
        if activation not in TEAL_ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(TEAL_ACTIVATIONS)}, got {activation!r}.")
        self.input_threshold, self.down_threshold = float(input_threshold), float(down_threshold)
        self.activation, self.dense_above, self.backend, self.sparsity = activation, dense_above, backend, sparsity
        for name, t in (("w_in_t", w_in_t), ("w_up_t", w_up_t), ("w_out_t", w_out_t), ("b_in", b_in),
                        ("b_up", b_up), ("b_out", b_out)):
            self.register_buffer(name, None if t is None else t.detach().contiguous())

    @classmethod
    def from_site(cls, site: Site, thresholds: dict[str, float], dense_above: float | None = None,
                  backend: str = "auto", sparsity: float | None = None) -> "TealFFN":
        """The site's whole FFN with TEAL at ``thresholds`` (``{"input": t_in, "down": t_down}``)."""
        if site.kind not in (GATED_FFN, PLAIN_FFN):
            raise TypeError(f"Site {site.name!r} is a bare activation ({site.kind}), not an FFN block.")
        missing = [p for p in ("input", "down") if p not in thresholds]
        if missing:
            raise KeyError(f"TEAL thresholds for site {site.name!r} lack {missing}; collect_teal(...).thresholds(s) "
                           "gives both.")
        act = teal_activation(site.activation)
        bias = {layer: getattr(layer, "bias", None) for layer in (*site.inputs, site.down)}
        w_up_t = b_up = None
        if site.kind == GATED_FFN:
            gate, up = site.inputs
            w_up_t, b_up = linear_weight(up).t(), bias[up]
        else:
            (gate,) = site.inputs
        return cls(linear_weight(gate).t(), linear_weight(site.down).t(), thresholds["input"], thresholds["down"],
                   w_up_t=w_up_t, b_in=bias[gate], b_up=b_up, b_out=bias[site.down], activation=act,
                   dense_above=dense_above, backend=backend, sparsity=sparsity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return teal_ffn(x, self.w_in_t, self.w_out_t, self.input_threshold, self.down_threshold, w_up_t=self.w_up_t,
                        b_in=self.b_in, b_up=self.b_up, b_out=self.b_out, activation=self.activation,
                        dense_above=self.dense_above, sparsity=self.sparsity, backend=self.backend)

    def extra_repr(self) -> str:
        d, f = self.w_in_t.shape
        kind = GATED_FFN if self.w_up_t is not None else PLAIN_FFN
        return (f"kind={kind}, d={d}, f={f}, d_out={self.w_out_t.shape[1]}, input_threshold={self.input_threshold:.6g}, "
                f"down_threshold={self.down_threshold:.6g}, activation={self.activation}")
