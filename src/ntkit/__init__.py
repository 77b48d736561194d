"""ntkit: neural tangent kernels, linearized networks and infinite-width Gaussian processes in PyTorch.

The four capabilities, in the order data flows through them:

- finite width: :func:`empirical_ntk`, :func:`empirical_nngp`, :func:`ntk_vector_product`;
- linearized models: :func:`linearize`, :func:`taylor_expand`;
- infinite width: :mod:`ntkit.nn` layers and :func:`kernel`; :func:`monte_carlo_kernel` for any network;
- training dynamics and GP inference: :mod:`ntkit.predict`.
"""

from . import errors, predict
from .empirical import empirical_nngp, empirical_ntk, ntk_vector_product
from .errors import NtkitError
from .linearize import LinearizedModel, TaylorExpandedModel, linearize, taylor_expand
from .monte_carlo import MonteCarloKernel, monte_carlo_kernel

__version__ = "0.1.0"

__all__ = [
    "LinearizedModel",
    "MonteCarloKernel",
    "NtkitError",
    "TaylorExpandedModel",
    "__version__",
    "empirical_nngp",
    "empirical_ntk",
    "errors",
    "linearize",
    "monte_carlo_kernel",
    "ntk_vector_product",
    "predict",
    "taylor_expand",
]
