"""Layers that are torch modules and know their infinite-width kernels."""

from ..gaussian.activations import (
    GELU,
    RBF,
    ABReLU,
    Abs,
    Activation,
    Composed,
    Cos,
    Elementwise,
    Erf,
    Exp,
    Gaussian,
    LeakyReLU,
    Monomial,
    Polynomial,
    ReLU,
    SigmoidLike,
    Sign,
    Sin,
    compose,
)
from .combinators import Parallel, Residual, Sequential
from .conv import Conv1d, Conv2d
from .dropout import Dropout
from .linear import Linear
from .normalization import LayerNorm
from .pooling import AvgPool1d, AvgPool2d, GlobalAvgPool
from .reshape import Flatten, Identity

__all__ = [
    "GELU",
    "RBF",
    "ABReLU",
    "Abs",
    "Activation",
    "AvgPool1d",
    "AvgPool2d",
    "Composed",
    "Conv1d",
    "Conv2d",
    "Cos",
    "Dropout",
    "Elementwise",
    "Erf",
    "Exp",
    "Flatten",
    "Gaussian",
    "GlobalAvgPool",
    "Identity",
    "LayerNorm",
    "LeakyReLU",
    "Linear",
    "Monomial",
    "Parallel",
    "Polynomial",
    "ReLU",
    "Residual",
    "Sequential",
    "SigmoidLike",
    "Sign",
    "Sin",
    "compose",
]
