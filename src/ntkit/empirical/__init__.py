"""Finite-width kernels of any PyTorch model: the empirical NTK and NNGP, and NTK-vector products."""

from .nngp import empirical_nngp
from .ntk import empirical_ntk
from .vector_product import ntk_vector_product

__all__ = ["empirical_nngp", "empirical_ntk", "ntk_vector_product"]
