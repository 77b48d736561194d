"""The optional dependencies of :mod:`ntkit.scale` (the ``scale`` extra), imported when first needed."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import MissingDependencyError

__all__ = ["require"]


def require(module: str, feature: str) -> ModuleType:
    """``import module``, or :class:`MissingDependencyError` saying that ``feature`` needs the ``scale`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = exc.name or module
        raise MissingDependencyError(
            f"{feature} needs {module}, which is not installed ({missing} is missing): pip install 'ntkit[scale]' "
            "(zarr and dask[distributed]; client=None needs only zarr)."
        ) from None
