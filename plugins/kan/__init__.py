"""S-KAN: KAN layers whose nodes select among several activation spaces (DESIGN §4, arXiv 2408.08338).

- :mod:`~actsparse.plugins.kan.bases`: the basis registry (``SPACES``, ``register_basis``,
  ``KANCONV_SPACES``: the S-KAN paper's pool); the families by idea in
  :mod:`~actsparse.plugins.kan.splines` (B-spline with grid update, ReLU-KAN),
  :mod:`~actsparse.plugins.kan.polynomials` (Chebyshev, Legendre, Jacobi, GRAM, Fourier) and
  :mod:`~actsparse.plugins.kan.radial` (Gaussian RBF, FastKAN, RSWAF, Mexican hat, Wav-KAN wavelet).
- :mod:`~actsparse.plugins.kan.layers`: ``SKANLinear`` (selection per node, ``prune_``),
  ``KANLinear`` (one space), ``prune_spaces``/``update_grids`` for whole models.
- :mod:`~actsparse.plugins.kan.conv`: ``SKANConv2d`` (S-ConvKAN).
- :mod:`~actsparse.plugins.kan.regularization`: ``kan_regularization`` (L1 + entropy).

Both layer types are activation sites (their output is the site tensor), so
``actsparse.plugins.find_sites``/``record`` and the sparsity monitors work on them. The
three-phase training is the callback ``actsparse.callbacks.skan.SKANTraining``.
"""

from actsparse.plugins.kan import polynomials, radial  # noqa: F401  (importing a family module registers its spaces)
from actsparse.plugins.kan.bases import (
    KANCONV_SPACES,
    SPACES,
    Basis,
    make_basis,
    register_basis,
)
from actsparse.plugins.kan.conv import SKANConv2d
from actsparse.plugins.kan.layers import (
    DEFAULT_SPACES,
    KANLinear,
    SelectableKAN,
    SKANLinear,
    prune_spaces,
    skan_layers,
    update_grids,
)
from actsparse.plugins.kan.regularization import edge_l1_entropy, kan_regularization
from actsparse.plugins.kan.splines import bspline_basis

__all__ = [
    "DEFAULT_SPACES",
    "KANCONV_SPACES",
    "SPACES",
    "Basis",
    "KANLinear",
    "SKANConv2d",
    "SKANLinear",
    "SelectableKAN",
    "bspline_basis",
    "edge_l1_entropy",
    "kan_regularization",
    "make_basis",
    "prune_spaces",
    "register_basis",
    "skan_layers",
    "update_grids",
]
