"""Exceptions raised by ntkit.

Every error ntkit raises on purpose is an :class:`NtkitError`. Each subclass also derives from the
built-in exception a Python user would expect (``ValueError``, ``TypeError``, ``MemoryError``), so
``except ValueError`` keeps working. Messages say what was wrong and how to fix it.

The rule (docs/development.md, "Code conventions"): a bad argument raises an ``NtkitError`` subclass at the
call that received it, never a plain ``ValueError`` or ``TypeError``. Which one:

- :class:`InvalidArgumentError`: the argument is wrong whatever ntkit could do with it: a wrong type (``fn``
  not callable, a model that is not a module), a value outside its range (a negative degree, an unknown
  ``method``). It is both a ``ValueError`` and a ``TypeError``, so either ``except`` clause catches it.
- :class:`UnsupportedError`: a valid argument that ntkit cannot handle (a layer without an infinite-width
  kernel, integer model outputs, more spatial axes than supported); the message says what to use instead.
- :class:`ShapeError`, :class:`NonFiniteError`, :class:`ParameterSelectionError`, :class:`MemoryBudgetError`,
  ...: the more specific cases below.
"""

from __future__ import annotations

__all__ = [
    "BatchCouplingError",
    "ChecksumError",
    "DataFormatError",
    "DataNotFoundError",
    "IllConditionedError",
    "InitializationWarning",
    "InvalidArgumentError",
    "MemoryBudgetError",
    "MissingDependencyError",
    "NonFiniteError",
    "NotConvergedError",
    "NotPSDError",
    "NtkitError",
    "NumericalWarning",
    "ParameterSelectionError",
    "ShapeError",
    "StoreError",
    "StoreMismatchError",
    "UnsupportedError",
    "WorkerError",
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
    """A valid layer, dtype or operation that ntkit cannot handle; the message names it and says what to use.
    (An invalid argument is an :class:`InvalidArgumentError`.)"""


class BatchCouplingError(NtkitError, ValueError):
    """A model whose output for one example depends on other examples of the batch or on random draws

    (BatchNorm or dropout in train mode). Kernels are defined per pair of inputs, so such models are
    rejected; the message says how to fix it (usually ``model.eval()``).
    """


class MemoryBudgetError(NtkitError, MemoryError):
    """A result or intermediate that cannot fit in the memory budget; the message gives its size."""


class NotPSDError(NtkitError, ValueError):
    """A kernel matrix that should be positive semi-definite has clearly negative eigenvalues."""


class IllConditionedError(NtkitError, ValueError):
    """A kernel matrix too ill-conditioned to solve with, even after adding jitter.

    The message gives the condition number and suggests ``diag_reg`` or float64.
    """


class DataNotFoundError(NtkitError, FileNotFoundError):
    """The files of a data set are not where they were looked for (and downloading was not asked for).

    The message lists the files and the folder searched, and says to put them there or pass ``download=True``.
    """


class ChecksumError(NtkitError, ValueError):
    """A downloaded file whose checksum differs from the official one (a corrupt or altered download)."""


class DataFormatError(NtkitError, ValueError):
    """A data file that exists but is not in the expected format (bad magic number, truncated, wrong keys)."""


class InvalidArgumentError(NtkitError, ValueError, TypeError):
    """An argument of the wrong type or outside its valid range, or an unknown option (a negative learning
    rate or time, momentum >= 1, an unknown ``reduction``, a ``fn`` that is not callable); the message names
    the valid values. Also a ``TypeError``, since a wrong type is one of its cases."""


class MissingDependencyError(NtkitError, ImportError):
    """An optional dependency that the called feature needs is not installed; the message names the extra
    to install (``pip install 'ntkit[scale]'``)."""


class StoreError(NtkitError, OSError):
    """A kernel store that cannot be created, written or read (read-only location, full disk, a path holding
    something else); the message names the location and what to do. Tiles not yet written stay not done."""


class StoreMismatchError(NtkitError, ValueError):
    """An existing kernel store whose fingerprint (network, inputs, dtype, kernels, ntkit version) differs from
    the call's: the message names what differs. The store is left as it is."""


class WorkerError(NtkitError, RuntimeError):
    """The local processes computing kernel tiles (``nk.scale.kernel(..., devices=...)``) died more often than
    allowed (killed, out of memory); tiles already done are kept, and calling again resumes."""


class NotConvergedError(NtkitError, ArithmeticError):
    """An iterative solver (conjugate gradients) that did not reach its tolerance; the message gives the
    iterations and the residual, and what to change (more iterations, a larger preconditioner, diag_reg)."""


class NumericalWarning(RuntimeWarning):
    """A result was computed after a numerical repair (negative eigenvalues clipped, jitter added) or
    describes a diverging iteration; the message says what was done and how to avoid it."""


class InitializationWarning(UserWarning):
    """A plain PyTorch weight layer's weights do not look drawn with the variance ``nk.kernel`` assumes for it
    (PyTorch's default, or what ``nk.declare_init`` declared): the kernel then describes other networks than the
    user's. The message says how to declare the distribution."""
