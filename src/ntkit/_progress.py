"""Opt-in progress bars (``progress=True``) for long calls: ``nk.kernel``, ``nk.empirical_ntk`` and
``nk.predict.gradient_descent``.

The bar is tqdm's (``tqdm.auto``, on stderr); tqdm is not a dependency of the core, so ``progress=True``
without tqdm installed raises :class:`~ntkit.errors.MissingDependencyError` naming the package (no silent fallback:
a user who asked for a bar learns why there is none). ``progress=False`` (the default) never imports tqdm.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

from .errors import InvalidArgumentError, MissingDependencyError

__all__ = ["Progress", "progress_bar"]


class Progress(Protocol):
    """What the computations call: ``update(n)`` after finishing n more units of work."""

    def update(self, n: float = 1) -> object: ...


class _Silent:
    def update(self, n: float = 1) -> None:
        pass


@contextlib.contextmanager
def progress_bar(progress: object, total: float, desc: str, unit: str) -> Iterator[Progress]:
    """A tqdm bar of ``total`` units when ``progress`` is True, else an object whose ``update`` does nothing."""
    if not isinstance(progress, bool):
        raise InvalidArgumentError(f"progress must be True or False, got {progress!r}.")
    if not progress:
        yield _Silent()
        return
    try:
        from tqdm.auto import tqdm
    except ModuleNotFoundError:
        raise MissingDependencyError(
            "progress=True shows a tqdm progress bar, but tqdm is not installed: pip install tqdm "
            "(it comes with the 'repro' and 'scale' extras), or leave progress=False."
        ) from None
    with tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False) as bar:
        yield bar
