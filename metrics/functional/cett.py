"""CETT (cumulative errors of tail truncation) and activation ratio (DESIGN §4).

For an FFN site with tensor ``x1`` (the input of the down projection) and down weight
``W_down [d, f]``, neuron ``i`` of a token outputs ``n_i = x1_i · W_down[:, i]`` and is *weak* at
threshold ``ε`` when ``|x1_i| · ‖W_down[:, i]‖₂ <= ε``. For one token,
``CETT(ε) = ‖Σ_{weak i} n_i‖₂ / ‖y‖₂`` with ``y = W_down x1``; :func:`cett` averages it over tokens.

A neuron is weak when its importance is at or below the threshold (``importance <= ε``; the one
counting rule of :mod:`actsparse.metrics.functional.sparsity`): at ``ε = 0`` exactly the zero
entries are weak, so the dropped fraction at ``ε = 0`` is the activation sparsity. (The papers
write ``< ε``; the two differ only for neurons whose importance equals ``ε`` exactly.)

Truncating a model (zeroing the weak neurons of its FFN sites) is a procedure:
:func:`actsparse.evaluation.truncate`.
"""

from __future__ import annotations

import torch

__all__ = ["candidate_values", "cett", "neuron_norms", "threshold_for_cett"]


def _check(x1: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    if w_down.dim() != 2:
        raise ValueError(f"w_down must be [d, f] (nn.Linear layout), got shape {tuple(w_down.shape)}.")
    if x1.shape[-1] != w_down.shape[1]:
        raise ValueError(
            f"x1's last dim ({x1.shape[-1]}) must equal w_down's second dim f={w_down.shape[1]}: "
            "pass w_down in nn.Linear layout [d, f] (site.w_down), not transposed."
        )
    return x1.reshape(-1, x1.shape[-1])


def neuron_norms(w_down: torch.Tensor) -> torch.Tensor:
    """``‖W_down[:, i]‖₂`` for every neuron ``i`` (``[f]``); cache it, it only changes with the weights."""
    return torch.linalg.vector_norm(w_down, dim=0)


def _weak_sums(x: torch.Tensor, w: torch.Tensor, importance: torch.Tensor, eps: torch.Tensor,
               y_norm: torch.Tensor) -> torch.Tensor:
    """Per-token CETT for each threshold in ``eps`` ([K]) -> [K, tokens]."""
    weak = importance.unsqueeze(0) <= eps.view(-1, 1, 1)  # [K, N, f]
    tail = torch.matmul(x.unsqueeze(0) * weak, w.t())  # [K, N, d]
    return torch.linalg.vector_norm(tail, dim=-1) / y_norm


def _prepare(x1: torch.Tensor, w_down: torch.Tensor, dtype: torch.dtype | None):
    x = _check(x1, w_down)
    dtype = dtype or torch.promote_types(x.dtype, torch.float64 if x.dtype == torch.float64 else torch.float32)
    x, w = x.to(dtype), w_down.to(device=x.device, dtype=dtype)
    importance = x.abs() * neuron_norms(w)
    y_norm = torch.linalg.vector_norm(x @ w.t(), dim=-1)
    # A token with y = 0 has no output to lose: its CETT is 0 (not 0/0).
    y_norm = torch.where(y_norm > 0, y_norm, torch.full_like(y_norm, float("inf")))
    return x, w, importance, y_norm


def cett(x1: torch.Tensor, w_down: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ``‖Σ_{weak i} n_i‖₂ / ‖y‖₂`` at ``threshold`` (0-dim tensor).

    Computed in float64 whatever the input dtype (returned in ``x1``'s floating dtype), so
    float32 inputs give the float64 value rounded once. Tokens whose output ``y`` is zero count
    as CETT 0.

    Args:
        x1: site tensor ``[..., f]`` (tokens flattened).
        w_down: down projection weight ``[d, f]`` (``nn.Linear`` layout, ``site.w_down``).
        threshold: ``ε >= 0``; neuron ``i`` is weak when ``|x1_i|·‖W_down[:, i]‖₂ <= ε``.

    Example:
        >>> x1 = torch.tensor([[1.0, 0.1]])
        >>> w = torch.eye(2)
        >>> cett(x1, w, 0.5)   # the weak neuron carries 0.1 of an output of norm sqrt(1.01)
        tensor(0.0995)
    """
    if float(threshold) < 0:
        raise ValueError(f"threshold must be >= 0, got {float(threshold)}.")
    x, w, importance, y_norm = _prepare(x1, w_down, torch.float64)
    eps = torch.as_tensor(float(threshold), dtype=torch.float64, device=x.device).view(1)
    out_dtype = x1.dtype if x1.is_floating_point() else torch.float32
    return _weak_sums(x, w, importance, eps, y_norm)[0].mean().to(out_dtype)


def _check_targets(target) -> torch.Tensor:
    t = torch.as_tensor(target, dtype=torch.float64).reshape(-1)
    if t.numel() == 0 or bool(((t < 0) | (t > 1) | t.isnan()).any()):
        raise ValueError(f"CETT target must be in [0, 1], got {target!r}: CETT is a fraction of the output norm.")
    return t


def _bisect_thresholds(x, w, importance, y_norm, targets, chunk: int = 8192,
                       values: torch.Tensor | None = None, memo: dict[int, float] | None = None) -> torch.Tensor:
    """Vectorized bisection over the sorted importance values, one threshold per target.

    Candidate thresholds are 0 and the distinct importance values ``0 = v_0 < v_1 < …`` plus
    ``+inf``; CETT only changes at them. For each target, the smallest candidate whose mean CETT
    reaches the target is returned (``v_0 = 0`` drops only zeros, CETT 0: a target of 0 gives 0). ``memo``
    (candidate index -> mean CETT) carries evaluations across calls: later targets start from
    the tightest bracket already known (a warm start for nearby targets).
    """
    if values is None:
        values = candidate_values(importance)
    targets = targets.to(device=x.device, dtype=torch.float64)
    n = x.shape[0]

    memo = {} if memo is None else memo

    def mean_cett(idx: torch.Tensor) -> torch.Tensor:
        keys = idx.tolist()
        todo = sorted({i for i in keys if i not in memo})
        if todo:
            eps = values[torch.tensor(todo, device=values.device)]
            total = torch.zeros(len(todo), dtype=torch.float64, device=x.device)
            for s in range(0, n, chunk):
                total += _weak_sums(x[s:s + chunk], w, importance[s:s + chunk], eps, y_norm[s:s + chunk]).sum(-1).double()
            memo.update(zip(todo, (total / max(n, 1)).tolist()))
        return torch.tensor([memo[i] for i in keys], dtype=torch.float64, device=x.device)

    top = values.numel() - 1
    met0 = mean_cett(torch.zeros(targets.numel(), dtype=torch.long)) >= targets  # only target 0
    known = sorted(memo.items())
    lo = torch.tensor([max([i for i, c in known if c < t] or [0]) for t in targets.tolist()], dtype=torch.long)
    hi = torch.tensor([min([i for i, c in known if c >= t and i > l] or [top]) for t, l in zip(targets.tolist(), lo.tolist())],
                      dtype=torch.long)
    # Invariant for the others: CETT(values[lo]) < target <= CETT(values[hi]) (the top is +inf:
    # every neuron weak, CETT 1 unless tokens have y = 0).
    while True:
        open_ = hi - lo > 1
        if not bool(open_.any()):
            break
        mid = torch.where(open_, (lo + hi) // 2, hi)
        ok = mean_cett(mid) >= targets
        hi = torch.where(open_ & ok, mid, hi)
        lo = torch.where(open_ & ~ok, mid, lo)
    return torch.where(met0, values[0].expand_as(hi), values[hi]).to(torch.float64)


def candidate_values(importance: torch.Tensor) -> torch.Tensor:
    """The thresholds at which CETT can change: 0 (drops only exact zeros, CETT 0), the sorted
    distinct importances, then ``+inf``."""
    values = torch.unique(torch.cat([importance.new_zeros(1), importance.reshape(-1)]))
    return torch.cat([values, values.new_tensor([float("inf")])])


def threshold_for_cett(x1: torch.Tensor, w_down: torch.Tensor, target, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The threshold ``ε`` whose mean CETT reaches ``target`` (bisection).

    CETT is a step function of ``ε`` (it changes only at the importance values
    ``|x1_i|·‖W_down[:, i]‖₂``), so "equals" means: the smallest such value ``ε`` with
    ``cett(x1, w_down, ε) >= target``; the next smaller candidate gives CETT below the target.
    ``+inf`` is returned when only dropping every neuron reaches the target.

    Args:
        target: a float in [0, 1] (0-dim result) or a sequence of them (one threshold each,
            solved together in one vectorized bisection).
        dtype: arithmetic of the search (float64 by default; float32 is faster, for large inputs).

    Example:
        >>> x1 = torch.tensor([[1.0, 0.1, 0.01]])
        >>> eps = threshold_for_cett(x1, torch.eye(3), 0.05)
        >>> round(float(eps), 6), float(cett(x1, torch.eye(3), eps)) >= 0.05   # drops the 0.1 and 0.01 neurons
        (0.1, True)
    """
    targets = _check_targets(target)
    x, w, importance, y_norm = _prepare(x1, w_down, dtype)
    eps = _bisect_thresholds(x, w, importance, y_norm, targets)
    return eps.reshape(()) if torch.as_tensor(target).dim() == 0 else eps
