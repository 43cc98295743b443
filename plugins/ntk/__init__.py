"""Infinitely wide and deep networks: dual activations, NNGP/NTK kernels (DESIGN §4).

- :mod:`.duals`: ``dual_activation(name)`` (relu, erf, sine_<a>, opt3/5/9, hermite_<k>, normalized
  Hermite coefficients), each with its derivative, activation and deep regime; ``register_dual``.
- :mod:`.kernels`: ``nngp_kernel``, ``ntk_kernel`` (log-domain recursions, stable for thousands of
  layers), ``kernel_path`` (many depths in one pass), ``kernel_profiles``, ``sphere_gram``.
- :mod:`.classifiers`: kernel regression with a singular-Gram check, 1-NN, majority vote, the
  singular kernel ``||x - z||^-alpha``.
- :mod:`.hermite`: ``HermiteActivation`` (an activation site), ``hermite_series``.
- :mod:`.optimal`: ``optimal_dual(d, k)``, the consistent dual ``c xi + (1 - c) xi^k`` for any input
  dimension d (``opt2``, ``optimal_<d>``, ``optimal_<d>_<k>`` in the registry).
- :mod:`.regimes`: ``regime_agreement``, the deep kernel predictors vs depth against 1-NN,
  majority vote, the singular kernel and Bayes (``authors_kind``: NNGP, NTK for ReLU).

Kept free of Hydra, wandb and matplotlib.
"""

from actsparse.plugins.ntk.classifiers import (
    SingularKernelError,
    kernel_regression,
    majority_vote_predict,
    nearest_neighbor_predict,
    singular_kernel_predict,
    solve_gram,
)
from actsparse.plugins.ntk.duals import DualActivation, available_duals, dual_activation, hermite_dual, register_dual
from actsparse.plugins.ntk.hermite import HermiteActivation, hermite_series
from actsparse.plugins.ntk.kernels import (
    KernelDepthOverflow,
    KernelProfile,
    LogKernel,
    kernel_path,
    kernel_profiles,
    nngp_kernel,
    ntk_kernel,
    ntk_log_scale,
    sphere_gram,
    to_sphere,
)
from actsparse.plugins.ntk.optimal import default_degree, optimal_coefficient, optimal_dual, optimal_exponent
from actsparse.plugins.ntk.regimes import BASELINES, authors_kind, baseline_predictions, regime_agreement

__all__ = [
    "BASELINES",
    "authors_kind",
    "baseline_predictions",
    "default_degree",
    "optimal_coefficient",
    "optimal_dual",
    "optimal_exponent",
    "regime_agreement",
    "DualActivation",
    "HermiteActivation",
    "KernelDepthOverflow",
    "KernelProfile",
    "LogKernel",
    "SingularKernelError",
    "available_duals",
    "dual_activation",
    "hermite_dual",
    "hermite_series",
    "kernel_path",
    "kernel_profiles",
    "kernel_regression",
    "majority_vote_predict",
    "nearest_neighbor_predict",
    "nngp_kernel",
    "ntk_kernel",
    "ntk_log_scale",
    "register_dual",
    "singular_kernel_predict",
    "solve_gram",
    "sphere_gram",
    "to_sphere",
]
