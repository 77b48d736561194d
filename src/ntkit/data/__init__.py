"""Data sets for the experiments: one :class:`Dataset` value, five loaders, target encodings.

``load(name, **options)`` with ``name`` one of :data:`DATASETS`:

- ``"digits"``: scikit-learn's 8×8 digits, embedded (no files, no download), the default;
- ``"circle"``: points on the unit circle/sphere with target sin(kθ) (regression, synthetic);
- ``"mnist"``, ``"fashion-mnist"``: the official IDX files; ``"cifar10"``: the official python pickles.

The file-based sets read ``data_dir`` (or the cache folder, see :func:`ntkit.data.files.cache_dir`) and download
into it only with ``download=True``. Documentation: ``docs/data.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError
from .cifar import find_cifar10, load_cifar10
from .dataset import Dataset, prepare
from .digits import load_digits
from .files import cache_dir
from .mnist import find_idx_files, load_fashion_mnist, load_mnist, spec_for
from .synthetic import load_circle
from .targets import centered_one_hot, encode_targets, one_hot, plus_minus_one, predicted_labels

__all__ = [
    "BINARY_CLASSES",
    "DATASETS",
    "FILE_DATASETS",
    "Dataset",
    "binary_classes",
    "cache_dir",
    "centered_one_hot",
    "encode_targets",
    "ensure_available",
    "load",
    "load_cifar10",
    "load_circle",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "one_hot",
    "plus_minus_one",
    "predicted_labels",
    "prepare",
]

_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "circle": load_circle,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
}
DATASETS = tuple(_LOADERS)
FILE_DATASETS = ("mnist", "fashion-mnist", "cifar10")

# The two classes of each classification set used for two-class (±1) tasks. CIFAR-10: airplane vs horse, as in
# Lee et al. 2019; digits and MNIST: 3 vs 5, a pair that is not linearly trivial; Fashion-MNIST: pullover vs coat.
BINARY_CLASSES: dict[str, tuple[int, int]] = {
    "digits": (3, 5),
    "mnist": (3, 5),
    "fashion-mnist": (2, 4),
    "cifar10": (0, 7),
}


def _check_name(name: str) -> None:
    if name not in _LOADERS:
        raise InvalidArgumentError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}.")


def load(name: str, **options: Any) -> Dataset:
    """Load the data set ``name`` (one of :data:`DATASETS`); ``options`` go to its loader (``data_dir``,
    ``download``, ``verify`` for the file-based sets; ``classes``, ``n_train``, ``n_test``, ``seed``,
    ``standardize``, ``normalize``, ``flatten``, ``dtype``, ``device`` for all, see :func:`prepare`)."""
    _check_name(name)
    if name not in FILE_DATASETS:
        for key in ("data_dir", "download", "verify"):
            options.pop(key, None)  # embedded and synthetic sets read no files
    return _LOADERS[name](**options)


def binary_classes(name: str) -> tuple[int, int] | None:
    """The class pair of ``name``'s two-class task (:data:`BINARY_CLASSES`), ``None`` for a regression set."""
    _check_name(name)
    return BINARY_CLASSES.get(name)


def ensure_available(
    name: str, data_dir: str | Path | None = None, *, download: bool = False, verify: bool = True
) -> None:
    """Check that ``name``'s files can be found (downloading them with ``download``), without loading them.

    Raises :class:`~ntkit.errors.DataNotFoundError` or :class:`~ntkit.errors.ChecksumError` as the loader would;
    a no-op for the embedded and synthetic sets.
    """
    _check_name(name)
    if name == "cifar10":
        find_cifar10(data_dir, download=download, verify=verify)
    elif name in FILE_DATASETS:
        find_idx_files(spec_for(name), data_dir, download=download, verify=verify)
