"""Approximate kernels for N far beyond exact: random features and sketches of the NNGP/NTK (docs/approx.md).

- :func:`features`: φ(x) with φ(x1) φ(x2)ᵀ ≈ ``nk.kernel(net, x1, x2)`` for dense ``ntkit.nn`` networks;
- :func:`ridge`: kernel ridge regression in feature space, O(N F²).
"""

from .features import FeatureMap, features
from .ridge import RidgeFit, ridge

__all__ = ["FeatureMap", "RidgeFit", "features", "ridge"]
