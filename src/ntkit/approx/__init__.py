"""Approximate kernels for N far beyond exact: random features and sketches of the NNGP/NTK (docs/approx.md).

- :func:`features`: φ(x) with φ(x1) φ(x2)ᵀ ≈ ``nk.kernel(net, x1, x2)`` for dense and convolutional (pooled)
  ``ntkit.nn`` networks;
- :func:`ridge`: kernel ridge regression in feature space, O(N F²);
- :func:`nystrom`: Nyström features of any exact kernel (a network, a function or an ``ntkit.scale`` store).
"""

from .features import FeatureMap, features
from .nystrom import NystromFeatures, nystrom
from .ridge import RidgeFit, ridge

__all__ = ["FeatureMap", "NystromFeatures", "RidgeFit", "features", "nystrom", "ridge"]
