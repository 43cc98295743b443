"""The classifiers the deep kernels are compared with (Radhakrishnan, Belkin, Uhler; DESIGN §4).

- :func:`kernel_regression`: the kernel predictor ``k(x)^T K^{-1} Y`` on one-hot labels (for two
  classes the same as on +-1 labels), with a solver that detects a singular Gram matrix;
- :func:`nearest_neighbor_predict` (1-NN), :func:`majority_vote_predict`,
  :func:`singular_kernel_predict` (``||x - z||^-alpha``, Devroye's Hilbert kernel at alpha = d - 1 on
  the sphere in R^d); the Bayes classifier of the data model is ``DirichletSphere.bayes_predict``.

Labels are class indices ``0..C-1``; ties go to the lower class index.
"""

from __future__ import annotations

import warnings

import torch

from actsparse.plugins.ntk.kernels import LogKernel

Tensor = torch.Tensor
SINGULAR_RCOND = 1e-13
# Cholesky answers when LAPACK's 1-norm estimate (dpocon) of 1/cond is this far above rcond: the
# 1-norm rcond of a symmetric matrix is at most its eigenvalue ratio, and the estimate is rarely
# off by more than a factor 10, so such a matrix is certainly not singular by the eigenvalue test.
FAST_PATH_MARGIN = 1e4


class SingularKernelError(ValueError):
    """The Gram matrix is singular to working precision (see the message for what to do)."""


def one_hot(y: Tensor, num_classes: int | None = None) -> Tensor:
    y = torch.as_tensor(y).long()
    if y.dim() != 1 or (y.numel() and y.min() < 0):
        raise ValueError("Labels must be a 1-d tensor of class indices 0..C-1.")
    return torch.nn.functional.one_hot(y, num_classes or int(y.max()) + 1).to(torch.float64)


def solve_gram(gram: Tensor, targets: Tensor, on_singular: str = "raise", rcond: float = SINGULAR_RCOND) -> Tensor:
    """``K^{-1} targets`` for a symmetric PSD Gram matrix ``K`` (float64: by Cholesky when ``K`` is
    clearly well conditioned, else by eigendecomposition).

    When ``lambda_min / lambda_max < rcond`` the system is singular to working precision: with
    ``on_singular="raise"`` a :class:`SingularKernelError` says so and what to do; ``"lstsq"`` warns
    and returns the minimum-norm (pseudo-inverse) solution instead.
    """
    if on_singular not in ("raise", "lstsq"):
        raise ValueError(f"on_singular must be 'raise' or 'lstsq', got {on_singular!r}.")
    gram = torch.as_tensor(gram, dtype=torch.float64)
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"The Gram matrix must be square, got shape {tuple(gram.shape)}.")
    if not torch.isfinite(gram).all():
        raise ValueError("The Gram matrix has inf/NaN entries; for deep NTKs use ntk_kernel(..., normalize=True).")
    targets = torch.as_tensor(targets, dtype=torch.float64)
    fast = _cholesky_solve((gram + gram.T) / 2, targets, rcond * FAST_PATH_MARGIN)
    if fast is not None:
        return fast
    evals, evecs = torch.linalg.eigh((gram + gram.T) / 2)
    top = evals.abs().max()
    ratio = float(evals.min() / top) if top > 0 else 0.0
    keep = evals > rcond * top
    if ratio < rcond:
        message = (
            f"The kernel Gram matrix ({gram.shape[0]}x{gram.shape[0]}) is singular to working precision: "
            f"lambda_min/lambda_max = {ratio:.3g} < {rcond:g} ({int((~keep).sum())} eigenvalues below). "
            "Deep kernels collapse this way (e.g. the ReLU NNGP tends to the all-ones matrix; duplicated "
            "points give equal rows). Use the NTK (ntk_kernel, which stays invertible), a smaller depth, "
            "remove duplicate points, or on_singular='lstsq' for the minimum-norm solution."
        )
        if on_singular == "raise":
            raise SingularKernelError(message)
        warnings.warn(message + " Using the pseudo-inverse.", RuntimeWarning, stacklevel=2)
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, 1.0), 0.0)
    return evecs @ (inv[:, None] * (evecs.T @ targets)) if targets.dim() == 2 else evecs @ (inv * (evecs.T @ targets))


def _cholesky_solve(gram: Tensor, targets: Tensor, min_rcond: float) -> Tensor | None:
    """``gram^{-1} targets`` by Cholesky (10-20x faster than eigh) when ``gram`` is positive
    definite and its estimated reciprocal condition number exceeds ``min_rcond``; else None."""
    chol, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        return None
    from scipy.linalg.lapack import dpocon  # LAPACK's condition estimate from the Cholesky factor

    estimate, status = dpocon(chol.numpy(), float(gram.abs().sum(0).max()), uplo="L")
    if status != 0 or not estimate > min_rcond:
        return None
    rhs = targets if targets.dim() == 2 else targets[:, None]
    out = torch.cholesky_solve(rhs, chol)
    return out if targets.dim() == 2 else out[:, 0]


def kernel_regression(
    gram_train: Tensor | LogKernel,
    y_train: Tensor,
    gram_test_train: Tensor | LogKernel,
    num_classes: int | None = None,
    on_singular: str = "raise",
) -> Tensor:
    """Class predictions ``argmax_c (k(x)^T K^{-1} Y)_c`` of kernel regression on one-hot labels.

    ``gram_train`` is ``K(X_train, X_train)`` ``[n, n]``; ``gram_test_train`` is ``K(X_test,
    X_train)`` ``[m, n]``. Either may be a :class:`LogKernel` (deep kernels): the test rows are then
    rescaled by their largest entry (``LogKernel.row_scaled``), which does not change any prediction.
    """
    train = gram_train.value() if isinstance(gram_train, LogKernel) else torch.as_tensor(gram_train, dtype=torch.float64)
    test = gram_test_train.row_scaled() if isinstance(gram_test_train, LogKernel) else torch.as_tensor(gram_test_train, dtype=torch.float64)
    targets = one_hot(y_train, num_classes)
    if test.shape[-1] != train.shape[0]:
        raise ValueError(f"gram_test_train has {test.shape[-1]} columns but there are {train.shape[0]} training points.")
    coef = solve_gram(train, targets, on_singular=on_singular)
    return (test @ coef).argmax(1)


def nearest_neighbor_predict(x_train: Tensor, y_train: Tensor, x_test: Tensor) -> Tensor:
    """1-NN (Euclidean) predictions."""
    dist = torch.cdist(torch.as_tensor(x_test, dtype=torch.float64), torch.as_tensor(x_train, dtype=torch.float64))
    return torch.as_tensor(y_train)[dist.argmin(1)]


def majority_vote_predict(y_train: Tensor, n_test: int) -> Tensor:
    """The most frequent training class, for every test point."""
    counts = torch.bincount(torch.as_tensor(y_train).long())
    return torch.full((int(n_test),), int(counts.argmax()), dtype=torch.long)


def singular_kernel_predict(x_train: Tensor, y_train: Tensor, x_test: Tensor, alpha: float | None = None,
                            num_classes: int | None = None) -> Tensor:
    """Predictions of the singular kernel classifier ``argmax_c sum_{i: y_i = c} ||x - x_i||^-alpha``.

    ``alpha`` defaults to ``d - 1``, the dimension of the sphere in R^d (Devroye's consistent Hilbert
    kernel; the authors' ``devroye_classifier``). A test point equal to a training point takes its label.
    Computed from log distances, so no power overflows.
    """
    x_train = torch.as_tensor(x_train, dtype=torch.float64)
    x_test = torch.as_tensor(x_test, dtype=torch.float64)
    alpha = float(x_train.shape[1] - 1 if alpha is None else alpha)
    if alpha <= 0:
        raise ValueError(f"The singular kernel needs alpha > 0, got {alpha}.")
    log_w = -alpha * torch.log(torch.cdist(x_test, x_train))  # +inf where a test point is a training point
    log_w = log_w - log_w.amax(1, keepdim=True)
    weights = torch.where(torch.isnan(log_w), 1.0, torch.exp(log_w))  # inf - inf: the coinciding point
    return (weights @ one_hot(y_train, num_classes)).argmax(1)
