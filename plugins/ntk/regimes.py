"""Which classifier a deep kernel predictor becomes (Radhakrishnan, Belkin, Uhler; DESIGN §4).

:func:`regime_agreement` runs the ridgeless kernel-regression predictor of one dual's NNGP or NTK
at several depths and says, at each, how often it predicts what 1-NN, majority vote, the singular
kernel ``||x - z||^-(d-1)`` and the Bayes classifier predict: the theory's three deep regimes
(1-NN, majority vote, singular kernel; consistent, i.e. Bayes in the limit of many samples, when
``beta = (d - 1)/2``).

Which kernel: the authors' reference (uhlerlab/inf_depth_ntks, ``main.py``) runs the NNGP for
every dual but ReLU, and the NTK for ReLU (whose NNGP collapses to a constant kernel):
:func:`authors_kind`. Both kinds run for any dual.

Kernels: depths ``<= exact_max_depth`` use the exact recursion on the Gram matrices; deeper ones
a :class:`~actsparse.plugins.ntk.kernels.KernelProfile` (the exact recursion on a grid of xi,
interpolated; data independent, so kept per activation, kind and depths for the process).
"""

from __future__ import annotations

import functools
import warnings
from typing import Sequence

import torch

from actsparse.plugins.ntk.classifiers import (
    kernel_regression,
    majority_vote_predict,
    nearest_neighbor_predict,
    singular_kernel_predict,
)
from actsparse.plugins.ntk.duals import DualActivation, dual_activation
from actsparse.plugins.ntk.kernels import KINDS, KernelProfile, LogKernel, kernel_path, kernel_profiles, sphere_gram

Tensor = torch.Tensor
BASELINES = ("bayes", "1nn", "majority", "singular")
KIND_CHOICES = ("authors", *KINDS)


def authors_kind(activation: str | Sequence[float] | DualActivation) -> str:
    """The kernel the authors' reference runs for a dual: ``"ntk"`` for ReLU, ``"nngp"`` otherwise."""
    return "ntk" if dual_activation(activation).name == "relu" else "nngp"


def resolve_kind(kind: str, activation: str | Sequence[float] | DualActivation) -> str:
    """``"nngp"``/``"ntk"`` as given; ``"authors"`` as :func:`authors_kind` chooses for ``activation``."""
    if kind not in KIND_CHOICES:
        raise ValueError(f"kind must be one of {', '.join(KIND_CHOICES)} (authors: NNGP, NTK for ReLU), got {kind!r}.")
    return authors_kind(activation) if kind == "authors" else kind


def baseline_predictions(x_train: Tensor, y_train: Tensor, x_test: Tensor,
                         bayes: Tensor | None = None) -> dict[str, Tensor]:
    """Test predictions of 1-NN, majority vote and the singular kernel ``||x - z||^-(d-1)`` (the
    consistent one on the sphere in R^d), plus ``bayes`` when the data model's are given."""
    out = {
        "1nn": nearest_neighbor_predict(x_train, y_train, x_test),
        "majority": majority_vote_predict(y_train, len(x_test)),
        "singular": singular_kernel_predict(x_train, y_train, x_test, alpha=x_train.shape[1] - 1),
    }
    if bayes is not None:
        out["bayes"] = torch.as_tensor(bayes)
    return out


@functools.lru_cache(maxsize=16)
def _named_profiles(activation: str, kind: str, depths: tuple[int, ...], grid_size: int) -> dict[int, KernelProfile]:
    return kernel_profiles(depths, activation, kind=kind, grid_size=grid_size, allow_overflow=True)


def _profiles(activation, kind: str, depths: list[int], grid_size: int) -> dict[int, KernelProfile]:
    if not depths:
        return {}
    if isinstance(activation, str):  # data independent: one pass per activation for all data sets
        return _named_profiles(activation, kind, tuple(depths), int(grid_size))
    return kernel_profiles(depths, activation, kind=kind, grid_size=grid_size, allow_overflow=True)


def _predict(kernel: LogKernel, n_train: int, y_train: Tensor) -> tuple[Tensor, bool]:
    """Kernel-regression predictions from the stacked ``[K(train, train); K(test, train)]``, and
    whether the Gram matrix was singular (then the minimum-norm solution, the ridgeless limit)."""
    train = LogKernel(kernel.logabs[:n_train], kernel.sign[:n_train])
    test = LogKernel(kernel.logabs[n_train:], kernel.sign[n_train:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        preds = kernel_regression(train, y_train, test, on_singular="lstsq")
    return preds, any("singular" in str(w.message) for w in caught)


def regime_agreement(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    activation: str | Sequence[float] | DualActivation,
    depths: Sequence[int],
    kind: str = "authors",
    baselines: dict[str, Tensor] | None = None,
    exact_max_depth: int = 10,
    grid_size: int = 8192,
) -> list[dict[str, float]]:
    """One row per depth (ascending): ``depth``, test ``acc``, ``agree_<b>`` for every baseline
    ``b`` (the fraction of test points where the kernel predictor and ``b`` predict the same class)
    and ``singular_gram`` (1.0 where the Gram matrix was singular to working precision and the
    minimum-norm solution was used). ``baselines`` defaults to :func:`baseline_predictions`
    (without Bayes). Depths a profile cannot reach (``log|K|`` past float64, e.g. ``hermite_2``
    beyond ~1000 layers) are left out.

    The first row past ``exact_max_depth`` carries ``profile_check``: the agreement of the
    profile's predictions with the exact recursion's at ``exact_max_depth`` (1.0 unless the
    interpolation changes a prediction).
    """
    kind = resolve_kind(kind, activation)
    wanted = sorted({int(d) for d in depths})
    if not wanted or wanted[0] < 0:
        raise ValueError(f"depths must be non-negative integers, got {list(depths)!r}.")
    baselines = baselines if baselines is not None else baseline_predictions(x_train, y_train, x_test)
    n = len(x_train)
    xi = torch.cat([sphere_gram(x_train), sphere_gram(x_test, x_train)])
    exact_max = int(exact_max_depth)
    deep = [d for d in wanted if d > exact_max]
    exact = dict(kernel_path(xi, [d for d in wanted if d <= exact_max] + ([exact_max] if deep else []), activation, kind))
    profiles = _profiles(activation, kind, deep + [exact_max] if deep else [], grid_size)
    points = next(iter(profiles.values())).locate(xi) if profiles else None  # one grid for every depth
    agree = lambda a, b: float((a == b).double().mean())
    rows = []
    for depth in wanted:
        if depth > exact_max and depth not in profiles:
            continue  # past a KernelDepthOverflow
        kernel = exact[depth] if depth <= exact_max else profiles[depth](xi, points)
        preds, singular = _predict(kernel, n, y_train)
        row = {"depth": float(depth), "acc": agree(preds, y_test), "singular_gram": float(singular),
               **{f"agree_{b}": agree(preds, p) for b, p in baselines.items()}}
        if depth > exact_max and not any("profile_check" in r for r in rows):
            via_exact, _ = _predict(exact[exact_max], n, y_train)
            via_profile, _ = _predict(profiles[exact_max](xi, points), n, y_train)
            row["profile_check"] = agree(via_exact, via_profile)
        rows.append(row)
    return rows
