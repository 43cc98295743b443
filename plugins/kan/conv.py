"""S-ConvKAN: a convolution whose kernel is a KAN over each patch (arXiv 2408.08338, §S-ConvKAN).

Every output channel ``j`` at every position sums KAN edges over the ``C·kh·kw`` values of its
patch: ``y_j = Σ_i phi_ji(patch_i)``, with the S-KAN selection over activation spaces per output
channel. The patches come from ``F.unfold`` and all positions go through one matmul
(:class:`~actsparse.plugins.kan.layers.SelectableKAN`), so pruning, grid updates and the
selection behave exactly as in :class:`~actsparse.plugins.kan.layers.SKANLinear`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from actsparse.plugins.kan.layers import DEFAULT_SPACES, SelectableKAN, SpacesArg
from actsparse.plugins.sites import register_activation_type


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class SKANConv2d(SelectableKAN):
    """``[B, in_channels, H, W] -> [B, out_channels, H', W']`` with KAN kernels and a selection
    over ``spaces`` per output channel (``spaces="bspline"`` gives a single-space ConvKAN).

    Example:
        >>> conv = SKANConv2d(1, 4, kernel_size=3, padding=1, spaces=["bspline", "rbf"])
        >>> conv(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 4, 8, 8])
        >>> conv.prune_().pruned
        True
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 3,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, spaces: SpacesArg = DEFAULT_SPACES,
                 basis_options: Mapping[str, Mapping[str, Any]] | None = None, bias: bool = True,
                 temperature: float = 1.0, coef_init_std: float = 0.1, select: str = "outputs") -> None:
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        if min(self.kernel_size + self.stride + self.dilation) < 1 or min(self.padding) < 0:
            raise ValueError(f"bad convolution geometry: kernel_size={kernel_size}, stride={stride}, "
                             f"padding={padding}, dilation={dilation}.")
        super().__init__(in_channels * self.kernel_size[0] * self.kernel_size[1], out_channels, spaces=spaces,
                         basis_options=basis_options, bias=bias, temperature=temperature, coef_init_std=coef_init_std,
                         select=select)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)

    def _unfold(self, x: torch.Tensor) -> torch.Tensor:
        return F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)

    def input_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The patches of ``x`` as KAN inputs ``[B·L, C·kh·kw]`` (what grid updates fit to)."""
        return self._unfold(x).transpose(1, 2).reshape(-1, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SKANConv2d expects [B, {self.in_channels}, H, W], got {tuple(x.shape)}.")
        b, _, h, w = x.shape
        out_h = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        out_w = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        y = self.kan_forward(self.input_rows(x))                      # [B·L, out]
        return y.view(b, out_h * out_w, self.out_channels).transpose(1, 2).reshape(b, self.out_channels, out_h, out_w)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, " + super().extra_repr())


register_activation_type(SKANConv2d)
