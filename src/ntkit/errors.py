"""Exceptions raised by ntkit.

Every error ntkit raises on purpose is an :class:`NtkitError`. Each subclass also derives from the
built-in exception a Python user would expect (``ValueError``, ``TypeError``, ``MemoryError``), so
``except ValueError`` keeps working. Messages say what was wrong and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "BatchCouplingError",
    "DomainError",
    "IllConditionedError",
    "MemoryBudgetError",
    "NonFiniteError",
    "NotPSDError",
    "NtkitError",
    "ParameterSelectionError",
    "ShapeError",
    "UnsupportedError",
]


class NtkitError(Exception):
    """Base class of every error ntkit raises on purpose."""


class ShapeError(NtkitError, ValueError):
    """Tensors whose shapes do not fit together (or an empty batch)."""


class NonFiniteError(NtkitError, ValueError):
    """An input holds NaN or Inf values."""


class ParameterSelectionError(NtkitError, ValueError):
    """A ``params`` selection that matches nothing, names unknown parameters, or has a bad type."""


class UnsupportedError(NtkitError, TypeError):
    """A layer, dtype or operation ntkit cannot handle; the message names it and says what to use."""


class BatchCouplingError(NtkitError, ValueError):
    """A model whose output for one example depends on other examples of the batch or on random draws

    (BatchNorm or dropout in train mode). Kernels are defined per pair of inputs, so such models are
    rejected; the message says how to fix it (usually ``model.eval()``).
    """


class DomainError(NtkitError, ValueError):
    """An argument outside its valid range (a negative degree, ``n_samples < 1``), or a value where a quantity

    is infinite (``Gaussian(b > 0)`` at a variance ≥ 1/(4b)). The message gives the bound and how to stay within it.
    """


class MemoryBudgetError(NtkitError, MemoryError):
    """A result or intermediate that cannot fit in the memory budget; the message gives its size."""


class NotPSDError(NtkitError, ValueError):
    """A kernel matrix that should be positive semi-definite has clearly negative eigenvalues."""


class IllConditionedError(NtkitError, ValueError):
    """A kernel matrix too ill-conditioned to solve with, even after adding jitter.

    The message gives the condition number and suggests ``diag_reg`` or float64.
    """
