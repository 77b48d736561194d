"""Kernels at large N: tiled, stored, resumable, on Dask; solvers that stream them (docs/scale.md).

- :func:`kernel`, :func:`empirical_ntk`: ``nk.kernel`` / ``nk.empirical_ntk`` computed tile by tile into a
  zarr :class:`KernelStore`, in this process, on a Dask cluster (``client=``) or one process per GPU
  (``devices=``); a call on an existing store computes only its missing tiles.
- :class:`KernelStore`: the stored kernel (``KernelStore.open``, lazy dask arrays ``.nngp`` / ``.ntk``,
  ``.to_torch()``, tile counts).
- :func:`gp_inference`: posterior means and variances from stored kernels, by blocked Cholesky when the kernel
  fits the memory budget, else by preconditioned conjugate gradients streaming the tiles.
- :func:`gradient_descent_mse`: outputs of gradient-descent training at finite times from a stored NTK, by
  Lanczos (Krylov) approximations of the matrix functions, streaming the tiles.

Needs the ``scale`` extra (zarr; dask[distributed] for ``client=``), imported only when used.
"""

from .dynamics import ScaleMSEPredictor, gradient_descent_mse
from .gp import ScaleGPPredictor, gp_inference
from .kernels import empirical_ntk, kernel
from .store import KernelStore

__all__ = [
    "KernelStore",
    "ScaleGPPredictor",
    "ScaleMSEPredictor",
    "empirical_ntk",
    "gp_inference",
    "gradient_descent_mse",
    "kernel",
]
