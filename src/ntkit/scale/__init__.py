"""Kernels at large N: tiled, stored, resumable, on Dask; solvers that stream them (docs/scale.md).

- :func:`kernel`, :func:`empirical_ntk`: ``nk.kernel`` / ``nk.empirical_ntk`` computed tile by tile into a
  zarr :class:`KernelStore`, in this process, on a Dask cluster (``client=``) or one process per GPU
  (``devices=``); a call on an existing store computes only its missing tiles.
- :class:`KernelStore`: the stored kernel (``KernelStore.open``, lazy dask arrays ``.nngp`` / ``.ntk``,
  ``.to_torch()``, tile counts).

Needs the ``scale`` extra (zarr; dask[distributed] for ``client=``), imported only when used.
"""

from .kernels import empirical_ntk, kernel
from .store import KernelStore

__all__ = ["KernelStore", "empirical_ntk", "kernel"]
