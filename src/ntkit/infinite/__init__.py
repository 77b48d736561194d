"""Infinite-width kernels: the :class:`Kernel` value type, the kernel maps of each layer kind, and ``nk.kernel``.

Layers (``ntkit.nn`` and registered PyTorch layers) map a :class:`Kernel` to the next through the functions in
:mod:`.transforms`; :func:`ntkit.kernel` (in :mod:`.compute`) plans, tiles and runs that over input batches.
This package's ``__init__`` imports nothing, so ``ntkit.nn`` can build on its low layers without a cycle.
"""
