"""What plugs into a model: activation sites (find, record, swap), activation functions, the
sparse FFN kernels and module; one subpackage per method family, re-exported here: S-KAN layers
(:mod:`.kan`), SDR theory, k-WTA and dendritic layers (:mod:`.dendrites`), dual activations and
NNGP/NTK kernels (:mod:`.ntk`).

Kept importable without Hydra or wandb: the GPU machine has neither.
"""

# First, before any module of this package: actsparse.metrics's classes import this package's
# modules (sites, recording) by their full names, and recording counts with
# actsparse.metrics.functional; with metrics loaded first, either package can be imported first.
import actsparse.metrics  # noqa: F401  isort: skip
from actsparse.plugins.activations import ACTIVATIONS, FATReLU, make_activation
from actsparse.plugins.recording import STATS, Recording, SiteRecord, pack_codes, record, unpack_codes
from actsparse.plugins.sites import (
    ACTIVATION,
    EXPERT_FFN,
    GATED_FFN,
    PLAIN_FFN,
    NoSitesError,
    Site,
    eager_name,
    ffn_sites,
    find_sites,
    register_activation_type,
    register_ffn,
)
from actsparse.plugins.pruning import activating_prune, magnitude_prune
from actsparse.plugins.sparse_ffn import SparseFFN, convert_to_sparse, sparse_ffn, sparse_gated_ffn
from actsparse.plugins.sparse_ffn_teal import TealFFN, teal_ffn
from actsparse.plugins.sparse_experts import SparseExperts
from actsparse.plugins.ffn_experts import ExpertSite
from actsparse.plugins.swap import SwapReport, swap_activation
from actsparse.plugins.training_free import (
    CATSActivation,
    MagnitudeSamples,
    MagnitudeSparsifier,
    TrainingFree,
    calibrate_cats,
    calibrate_teal,
    collect_cats,
    collect_teal,
    install_cats,
    install_teal,
    teal_thresholds,
)
from actsparse.plugins.kan import (
    SPACES,
    KANLinear,
    SKANConv2d,
    SKANLinear,
    kan_regularization,
    prune_spaces,
    register_basis,
    update_grids,
)
from actsparse.plugins.ntk import (
    DualActivation,
    HermiteActivation,
    SingularKernelError,
    dual_activation,
    kernel_regression,
    nngp_kernel,
    ntk_kernel,
    register_dual,
)
from actsparse.plugins.dendrites import (
    DendriticLayer,
    KWinners,
    KWinners2d,
    false_match_probability,
    log_false_match_probability,
    match_probability_with_noise,
    optimal_threshold,
    overlap_set_size,
    union_false_match_probability,
)

__all__ = [
    "SparseExperts",
    "EXPERT_FFN",
    "ExpertSite",
    "eager_name",
    "CATSActivation",
    "MagnitudeSamples",
    "MagnitudeSparsifier",
    "TrainingFree",
    "calibrate_cats",
    "calibrate_teal",
    "collect_cats",
    "collect_teal",
    "install_cats",
    "install_teal",
    "teal_thresholds",
    "ACTIVATION",
    "DendriticLayer",
    "DualActivation",
    "HermiteActivation",
    "KANLinear",
    "KWinners",
    "KWinners2d",
    "SingularKernelError",
    "SKANConv2d",
    "SKANLinear",
    "SPACES",
    "kan_regularization",
    "kernel_regression",
    "nngp_kernel",
    "ntk_kernel",
    "prune_spaces",
    "register_dual",
    "register_basis",
    "update_grids",
    "dual_activation",
    "false_match_probability",
    "log_false_match_probability",
    "match_probability_with_noise",
    "optimal_threshold",
    "overlap_set_size",
    "union_false_match_probability",
    "ACTIVATIONS",
    "FATReLU",
    "GATED_FFN",
    "NoSitesError",
    "PLAIN_FFN",
    "Recording",
    "STATS",
    "Site",
    "SiteRecord",
    "SparseFFN",
    "SwapReport",
    "TealFFN",
    "activating_prune",
    "convert_to_sparse",
    "ffn_sites",
    "find_sites",
    "magnitude_prune",
    "make_activation",
    "pack_codes",
    "record",
    "register_activation_type",
    "register_ffn",
    "sparse_ffn",
    "sparse_gated_ffn",
    "swap_activation",
    "teal_ffn",
    "unpack_codes",
]
