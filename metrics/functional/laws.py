"""Sparsing-Law fits of activation ratio ``A`` against training tokens ``D`` (DESIGN §4).

- ReLU (decreasing): ``A(D) = exp(−c·D^α + b) + A0``
- SiLU (increasing): ``A(D) = −c / D^α + A0``

Fitted with SciPy's Levenberg–Marquardt (``curve_fit(method="lm")``). Tokens are rescaled by
their largest value inside the fit (``D' = D / D_max``) for conditioning; the returned
parameters are for ``D`` itself (raw token counts). The paper reports ``c`` with ``D`` in
billions of tokens: :meth:`ActivationLaw.c_in` converts (``c·10^{9α}`` for ReLU,
``c/10^{9α}`` for SiLU; ``α``, ``b`` and ``A0`` do not depend on the unit).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["ActivationLaw", "fit_activation_law"]

KINDS = ("relu", "silu")


@dataclass
class ActivationLaw:
    """A fitted law: ``kind``, parameters (``c``, ``alpha``, ``b`` for ReLU), limit ``A0``, ``r2``."""

    kind: str
    c: float
    alpha: float
    A0: float
    r2: float
    b: float = 0.0

    def c_in(self, unit: float = 1e9) -> float:
        """``c`` for ``D`` counted in ``unit`` tokens (default billions, the paper's unit): the
        same curve, ``A(D) = A_unit(D / unit)``.

        Example:
            >>> law = ActivationLaw("silu", c=2.0, alpha=0.5, A0=0.3, r2=1.0)
            >>> round(law.c_in(1e6), 6), round(float(law(4e6)), 6) == round(-law.c_in(1e6) / 4**0.5 + 0.3, 6)
            (0.002, True)
        """
        scale = float(unit) ** self.alpha
        return self.c * scale if self.kind == "relu" else self.c / scale

    @property
    def c_billions(self) -> float:
        """``c`` with ``D`` in billions of tokens (the paper's unit)."""
        return self.c_in(1e9)

    def __call__(self, tokens) -> np.ndarray:
        d = np.asarray(tokens, dtype=np.float64)
        if self.kind == "relu":
            return np.exp(-self.c * d**self.alpha + self.b) + self.A0
        return -self.c / d**self.alpha + self.A0

    def __str__(self) -> str:
        if self.kind == "relu":
            return f"A(D) = exp(-{self.c:.3g}·D^{self.alpha:.3g} + {self.b:.3g}) + {self.A0:.4f}  (R² {self.r2:.3f})"
        return f"A(D) = -{self.c:.3g}/D^{self.alpha:.3g} + {self.A0:.4f}  (R² {self.r2:.3f})"


# c and alpha are fitted as logs, so both stay positive (the laws' shapes need c, alpha > 0).
def _relu(d, log_c, log_alpha, b, a0):
    return np.exp(-np.exp(log_c) * d ** np.exp(log_alpha) + b) + a0


def _silu(d, log_c, log_alpha, a0):
    return -np.exp(log_c) / d ** np.exp(log_alpha) + a0


def fit_activation_law(tokens: Sequence[float], ratio: Sequence[float], kind: str = "relu",
                       p0: Sequence[float] | None = None) -> ActivationLaw:
    """Fit the Sparsing-Law curve of ``kind`` to ``(tokens, ratio)`` points.

    Args:
        tokens: training tokens seen (> 0).
        ratio: activation ratio (1 − sparsity) at those points.
        kind: ``"relu"`` (decreasing law) or ``"silu"`` (increasing law).
        p0: optional starting values, in rescaled tokens ``D / max(D)``: ``log c, log alpha, b, A0``
            (ReLU) or ``log c, log alpha, A0`` (SiLU).

    Example:
        >>> d = np.linspace(1e6, 1e8, 40)
        >>> law = fit_activation_law(d, -2.0 / d**0.3 + 0.3, kind="silu")
        >>> round(law.A0, 4), round(law.alpha, 3), law.r2 > 0.999
        (0.3, 0.3, True)
    """
    from scipy.optimize import curve_fit

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    d = np.asarray(tokens, dtype=np.float64)
    a = np.asarray(ratio, dtype=np.float64)
    if d.shape != a.shape or d.ndim != 1:
        raise ValueError(f"tokens and ratio must be 1-d of the same length, got {d.shape} and {a.shape}.")
    n_params = 4 if kind == "relu" else 3
    if d.size <= n_params:
        raise ValueError(f"The {kind} law has {n_params} parameters: give more than {n_params} points, got {d.size}.")
    if (d <= 0).any():
        raise ValueError("tokens must be > 0 (the laws use D^alpha).")
    scale = d.max()
    x = d / scale
    if kind == "relu":
        a0 = max(a.min() - 0.01, 0.0)
        span = max(a.max() - a0, 1e-6)
        guesses = [p0] if p0 is not None else [[math.log(c), math.log(al), math.log(span) + c * x.min() ** al, a0]
                                               for c in (1.0, 5.0) for al in (0.5, 1.0)]
        fn = _relu
    else:
        a0 = a.max() + 0.01
        guesses = [p0] if p0 is not None else [[math.log(max(a0 - a.min(), 1e-3) * x.min() ** al), math.log(al), a0]
                                               for al in (0.3, 1.0)]
        fn = _silu
    best, best_sse = None, math.inf
    for guess in guesses:
        try:
            with warnings.catch_warnings():  # overflow while exploring, and inf covariances: not errors
                warnings.simplefilter("ignore")
                params, _ = curve_fit(fn, x, a, p0=guess, method="lm", maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        sse = float(((fn(x, *params) - a) ** 2).sum())
        if np.isfinite(sse) and sse < best_sse:
            best, best_sse = params, sse
    if best is None:
        raise RuntimeError(f"The {kind} law did not converge on these {d.size} points; try p0= starting values.")
    sst = float(((a - a.mean()) ** 2).sum())
    r2 = 1 - best_sse / sst if sst > 0 else float("nan")
    if kind == "relu":
        log_c, log_alpha, b, a0 = best
        c, alpha = math.exp(log_c), math.exp(log_alpha)
        return ActivationLaw("relu", c=float(c / scale**alpha), alpha=float(alpha), b=float(b), A0=float(a0), r2=r2)
    log_c, log_alpha, a0 = best
    c, alpha = math.exp(log_c), math.exp(log_alpha)
    return ActivationLaw("silu", c=float(c * scale**alpha), alpha=float(alpha), A0=float(a0), r2=r2)
