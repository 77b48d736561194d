"""Layers that are torch modules and know their infinite-width kernels."""

from .activations import Activation, Erf, ReLU
from .combinators import Parallel, Residual, Sequential
from .conv import Conv1d, Conv2d
from .dropout import Dropout
from .linear import Linear
from .normalization import LayerNorm
from .pooling import AvgPool1d, AvgPool2d, GlobalAvgPool
from .reshape import Flatten, Identity

__all__ = [
    "Activation",
    "AvgPool1d",
    "AvgPool2d",
    "Conv1d",
    "Conv2d",
    "Dropout",
    "Erf",
    "Flatten",
    "GlobalAvgPool",
    "Identity",
    "LayerNorm",
    "Linear",
    "Parallel",
    "ReLU",
    "Residual",
    "Sequential",
]
