"""Layers that are torch modules and know their infinite-width kernels."""

from .activations import Activation, Erf, ReLU

__all__ = ["Activation", "Erf", "ReLU"]
