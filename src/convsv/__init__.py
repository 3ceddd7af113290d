"""convsv: exact singular values of convolutional layers, for any array-API backend.

The public API is re-exported here; every other module is private.
"""

from ._clipping import ClipInfo
from ._norms import conv_matrix, operator_norm, operator_norm_bounds, singular_values
from ._projection import clip_operator_norm, clip_singular_values

__version__ = "0.1.0"

__all__ = [
    "ClipInfo",
    "__version__",
    "clip_operator_norm",
    "clip_singular_values",
    "conv_matrix",
    "operator_norm",
    "operator_norm_bounds",
    "singular_values",
]
