"""Finite-width kernels of any PyTorch model: the empirical NTK and NNGP."""

from .kernels import empirical_nngp, empirical_ntk

__all__ = ["empirical_nngp", "empirical_ntk"]
