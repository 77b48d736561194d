"""ntkit: neural tangent kernels, linearized networks and infinite-width Gaussian processes in PyTorch.

The four capabilities, in the order data flows through them:

- finite width: :func:`empirical_ntk`, :func:`empirical_nngp`, :func:`ntk_vector_product`;
- linearized models: :func:`linearize`, :func:`taylor_expand`;
- infinite width: :mod:`ntkit.nn` layers and :func:`kernel`; :func:`monte_carlo_kernel` for any network;
- training dynamics and GP inference: :mod:`ntkit.predict`;
- large N (stored, resumable, distributed kernels and their solvers): :mod:`ntkit.scale`;
- random features and sketches of the kernels for large N: :mod:`ntkit.approx`.
"""

from . import approx, errors, nn, predict, scale
from .empirical import empirical_nngp, empirical_ntk, ntk_vector_product
from .errors import NtkitError
from .infinite.compute import kernel, kernels
from .infinite.kernel_type import Kernel
from .infinite.registry import declare_init, register_kernel
from .linearize import LinearizedModel, TaylorExpandedModel, linearize, taylor_expand
from .monte_carlo import MonteCarloKernel, monte_carlo_kernel

__version__ = "0.1.0"

__all__ = [
    "Kernel",
    "LinearizedModel",
    "MonteCarloKernel",
    "NtkitError",
    "TaylorExpandedModel",
    "__version__",
    "approx",
    "declare_init",
    "empirical_nngp",
    "empirical_ntk",
    "errors",
    "kernel",
    "kernels",
    "linearize",
    "monte_carlo_kernel",
    "nn",
    "ntk_vector_product",
    "predict",
    "register_kernel",
    "scale",
    "taylor_expand",
]
