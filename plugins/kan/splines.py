"""Piecewise bases on a knot grid: B-splines (KAN, pykan) and ReLU-KAN's squared-ReLU bumps.

Both vanish outside the grid they cover (``outside="zero"``: the ``silu`` base carries the edge
there, pykan's behaviour); the B-spline grid follows the data (``update_grid``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from actsparse.plugins.kan.bases import Basis, check_range, register_basis


def bspline_basis(x: torch.Tensor, knots: torch.Tensor, order: int) -> torch.Tensor:
    """Cox–de Boor for all inputs at once: ``x [B, in]``, ``knots [in, n]`` -> ``[B, in, n - order - 1]``.

    ``B_{i,0} = 1[t_i <= x < t_{i+1}]``, ``B_{i,p} = (x - t_i)/(t_{i+p} - t_i)·B_{i,p-1}
    + (t_{i+p+1} - x)/(t_{i+p+1} - t_{i+1})·B_{i+1,p-1}``.
    """
    xe = x.unsqueeze(-1)
    t = knots.unsqueeze(0)
    value = ((xe >= t[..., :-1]) & (xe < t[..., 1:])).to(x.dtype)
    for p in range(1, order + 1):
        left = (xe - t[..., : -(p + 1)]) / (t[..., p:-1] - t[..., : -(p + 1)])
        right = (t[..., p + 1:] - xe) / (t[..., p + 1:] - t[..., 1:-p])
        value = left * value[..., :-1] + right * value[..., 1:]
    return value


@register_basis("bspline")
class BSpline(Basis):
    """Order-``order`` B-splines on ``grid_size`` intervals of ``grid_range`` per input, the grid
    extended by ``order`` knots on each side (as pykan): ``K = grid_size + order``.

    ``update_grid(x, coef)`` moves the grid to the data (KAN paper §2.4: sample quantiles mixed
    with a uniform grid by ``grid_eps``) and refits the coefficients by least squares so the
    edge functions are kept on the data.
    """

    outside_rules = ("zero", "clamp", "error")

    def __init__(self, in_features: int, grid_size: int = 5, order: int = 3,
                 grid_range: Sequence[float] = (-1.0, 1.0), grid_eps: float = 0.02, outside: str | None = None) -> None:
        super().__init__(in_features)
        if order < 0:
            raise ValueError(f"B-spline order must be >= 0, got {order}.")
        if grid_size < max(order, 1):
            raise ValueError(
                f"B-spline grid_size={grid_size} is smaller than the spline order {order}: each piece of an "
                f"order-{order} spline spans {order + 1} knots, so use grid_size >= {max(order, 1)} "
                "(e.g. grid_size=5 with order=3, the KAN default).")
        if not 0.0 <= grid_eps <= 1.0:
            raise ValueError(f"grid_eps must be in [0, 1] (0: quantiles of the data, 1: uniform), got {grid_eps}.")
        self.grid_size, self.order, self.grid_eps = int(grid_size), int(order), float(grid_eps)
        self.outside = self.check_outside(outside)
        a, b = check_range(grid_range)
        inner = torch.linspace(a, b, self.grid_size + 1).expand(self.in_features, -1)
        self.register_buffer("grid", extend_grid(inner, self.order))

    @property
    def num_functions(self) -> int:
        return self.grid_size + self.order

    def select_inputs(self, index: torch.Tensor) -> BSpline:
        self.grid = self.grid.index_select(0, index.to(self.grid.device)).clone()
        return super().select_inputs(index)

    @property
    def inner_grid(self) -> torch.Tensor:
        """The ``grid_size + 1`` knots that bound the covered range, per input ``[in, G+1]``."""
        return self.grid[:, self.order: self.grid.shape[1] - self.order]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outside != "zero":
            low, high = self.inner_grid[:, 0], self.inner_grid[:, -1]
            if self.outside == "clamp":
                # just inside the last knot: the half-open last interval would give 0 at `high`.
                high = high - 1e-6 * (high - low)
            x = self.enforce_domain(x, low, high)
        return bspline_basis(x, self.grid.to(x.dtype), self.order)

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """Move the grid to the inputs ``x [N, in]`` and return coefficients ``[out, in, K]`` (fitted
        by least squares on ``x``) that keep ``Σ_k coef·B_k`` where the data lie."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"update_grid needs inputs [N, {self.in_features}], got {tuple(x.shape)}.")
        n = x.shape[0]
        if n < self.num_functions:
            raise ValueError(f"update_grid needs at least K={self.num_functions} samples to refit the "
                             f"coefficients, got {n}.")
        x = x.to(self.grid.dtype)
        old = torch.einsum("nik,oik->nio", self.forward(x), coef.to(x.dtype))  # [N, in, out]
        xs = torch.sort(x, dim=0).values
        ids = torch.linspace(0, n - 1, self.grid_size + 1, device=x.device).round().long()
        adaptive = xs[ids].T                                                           # [in, G+1]
        span = (adaptive[:, -1:] - adaptive[:, :1]).clamp_min(1e-6)
        uniform = adaptive[:, :1] + span * torch.linspace(0, 1, self.grid_size + 1, device=x.device, dtype=x.dtype)
        inner = self.grid_eps * uniform + (1 - self.grid_eps) * adaptive
        # Knots must increase strictly (repeated data values would collapse an interval).
        inner = torch.maximum(inner, torch.cummax(inner, dim=1).values)
        eps = 1e-6 * span
        inner = inner + eps * torch.arange(self.grid_size + 1, device=x.device, dtype=x.dtype)
        # The last sample sits on the closing knot, where the half-open intervals give 0: nudge it out.
        inner[:, -1] = inner[:, -1] + eps[:, 0]
        self.grid.copy_(extend_grid(inner, self.order))
        design = self.forward(x).permute(1, 0, 2)                                      # [in, N, K]
        target = old.permute(1, 0, 2)                                                  # [in, N, out]
        solution = torch.linalg.lstsq(design.double(), target.double()).solution       # [in, K, out]
        return solution.permute(2, 0, 1).to(coef.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, grid_size={self.grid_size}, order={self.order}, outside={self.outside!r}"


def extend_grid(inner: torch.Tensor, k: int) -> torch.Tensor:
    """Add ``k`` knots on each side of ``inner [in, G+1]`` at the end intervals' spacing."""
    h = (inner[:, -1:] - inner[:, :1]) / (inner.shape[1] - 1)
    steps = torch.arange(1, k + 1, device=inner.device, dtype=inner.dtype)
    left = inner[:, :1] - h * steps.flip(0)
    right = inner[:, -1:] + h * steps
    return torch.cat([left, inner, right], dim=1)



@register_basis("relu_kan")
class ReLUKAN(Basis):
    """ReLU-KAN's bumps ``R_i(x) = r·[relu(e_i - x)·relu(x - s_i)]²`` with ``s_i = a + (i-k-1)h``,
    ``e_i = a + i·h`` (``h = (b-a)/G``, ``i = 1..G+k``) and ``r = 16/((k+1)h)⁴`` (peak 1). Zero
    outside ``[a - k·h, b + k·h]`` (``outside="zero"``)."""

    outside_rules = ("zero", "clamp", "error")

    def __init__(self, in_features: int, grid_size: int = 5, order: int = 3,
                 grid_range: Sequence[float] = (-1.0, 1.0), outside: str | None = None) -> None:
        super().__init__(in_features)
        if grid_size < max(order, 1) or order < 1:
            raise ValueError(f"relu_kan needs order >= 1 and grid_size >= order, got grid_size={grid_size}, order={order}.")
        a, b = check_range(grid_range)
        self.grid_size, self.order, self.outside = int(grid_size), int(order), self.check_outside(outside)
        self.low, self.high = a, b
        self.step = (b - a) / self.grid_size
        self.scale = 16.0 / ((self.order + 1) * self.step) ** 4

    @property
    def num_functions(self) -> int:
        return self.grid_size + self.order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.enforce_domain(x, self.low, self.high)
        xe = x.unsqueeze(-1)
        i = torch.arange(1, self.grid_size + self.order + 1, dtype=x.dtype, device=x.device)
        starts, ends = self.low + (i - self.order - 1) * self.step, self.low + i * self.step
        bump = torch.relu(ends - xe) * torch.relu(xe - starts)
        return self.scale * bump.square()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, grid_size={self.grid_size}, order={self.order}, outside={self.outside!r}"
