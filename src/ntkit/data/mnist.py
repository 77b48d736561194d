"""MNIST and Fashion-MNIST from their official IDX files (28×28 grayscale, 60 000 train / 10 000 test, 10 classes).

Files (gzipped or not): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, in ``data_dir`` itself, ``data_dir/<name>`` or torchvision's ``data_dir/MNIST/raw`` /
``data_dir/FashionMNIST/raw``. The MD5s are those of the official .gz files (as in torchvision).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataFormatError
from .dataset import Dataset, prepare
from .files import Resource, cache_dir, locate
from .idx import read_idx

__all__ = ["FASHION_MNIST", "MNIST", "IdxSpec", "load_fashion_mnist", "load_mnist", "spec_for"]

_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@dataclass(frozen=True)
class IdxSpec:
    """An IDX data set: its ntkit name, the sub-folders searched, its files and the class names."""

    name: str
    subfolders: tuple[str, ...]
    resources: tuple[Resource, ...]
    class_names: tuple[str, ...]


def _resources(md5s: tuple[str, ...], mirrors: tuple[str, ...]) -> tuple[Resource, ...]:
    return tuple(Resource(f, m, tuple(base + f for base in mirrors)) for f, m in zip(_FILES, md5s, strict=True))


MNIST = IdxSpec(
    "mnist",
    ("mnist", "MNIST/raw"),
    _resources(
        (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ),
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    ),
    tuple(str(c) for c in range(10)),
)

FASHION_MNIST = IdxSpec(
    "fashion-mnist",
    ("fashion-mnist", "FashionMNIST/raw"),
    _resources(
        (
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    ),
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
)


def spec_for(name: str) -> IdxSpec:
    """The :class:`IdxSpec` of ``"mnist"`` or ``"fashion-mnist"`` (looked up when called)."""
    return MNIST if name == "mnist" else FASHION_MNIST


def folders_for(name: str, subfolders: tuple[str, ...], data_dir: str | Path | None) -> tuple[list[Path], Path]:
    """(folders to search, folder to download into) for a data set: ``data_dir`` if given, else the cache."""
    root = Path(data_dir).expanduser() if data_dir is not None else cache_dir() / name
    return [root, *(root / s for s in subfolders)], root


def find_idx_files(spec: IdxSpec, data_dir: str | Path | None, *, download: bool, verify: bool) -> dict[str, Path]:
    """The four IDX files of ``spec`` (keyed by the official .gz name), found or downloaded."""
    folders, target = folders_for(spec.name, spec.subfolders, data_dir)
    return locate(
        spec.resources,
        folders,
        download_folder=target,
        download_missing=download,
        verify=verify,
        what=spec.name,
        alternatives={f: (f.removesuffix(".gz"),) for f in _FILES},
    )


@functools.lru_cache(maxsize=8)
def _read_split(images: Path, labels: Path, mtimes: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DataFormatError(f"{images}: expected uint8 images of shape (N, H, W), got {x.dtype} {x.shape}.")
    if y.ndim != 1 or y.dtype != np.uint8:
        raise DataFormatError(f"{labels}: expected uint8 labels of shape (N,), got {y.dtype} {y.shape}.")
    if len(x) != len(y):
        raise DataFormatError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels.")
    if len(y) and y.max() > 9:
        raise DataFormatError(f"{labels}: labels must lie in 0..9, found {int(y.max())}.")
    x, y = x[:, None], y.astype(np.int64)
    x.flags.writeable = y.flags.writeable = False  # cached: shared between calls
    return x, y


def _load_idx_dataset(
    spec: IdxSpec, data_dir: str | Path | None, download: bool, verify: bool, options: dict[str, Any]
) -> Dataset:
    paths = find_idx_files(spec, data_dir, download=download, verify=verify)

    def split(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        img, lab = paths[f"{prefix}-images-idx3-ubyte.gz"], paths[f"{prefix}-labels-idx1-ubyte.gz"]
        return _read_split(img, lab, (img.stat().st_mtime_ns, lab.stat().st_mtime_ns))

    (x_train, y_train), (x_test, y_test) = split("train"), split("t10k")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataFormatError(f"{spec.name}: train images are {x_train.shape[2:]} but test images {x_test.shape[2:]}.")
    return prepare(
        spec.name,
        x_train,
        y_train,
        x_test,
        y_test,
        n_classes=10,
        class_names=spec.class_names,
        image_shape=tuple(x_train.shape[1:]),
        scale=1.0 / 255.0,
        **options,
    )


def load_mnist(
    data_dir: str | Path | None = None, *, download: bool = False, verify: bool = True, **options: Any
) -> Dataset:
    """MNIST as a :class:`~ntkit.data.Dataset`: inputs (N, 784) or (N, 1, 28, 28), pixels scaled to [0, 1] before
    standardisation, labels 0..9.

    ``data_dir``: the folder holding the files (module docstring); default: the cache folder. ``download``: fetch
    missing files there. ``verify``: check local .gz files against the official MD5. ``options``: those of
    :func:`ntkit.data.prepare`. Raises :class:`~ntkit.errors.DataNotFoundError`, :class:`~ntkit.errors.ChecksumError`
    or :class:`~ntkit.errors.DataFormatError`.
    """
    return _load_idx_dataset(MNIST, data_dir, download, verify, options)


def load_fashion_mnist(
    data_dir: str | Path | None = None, *, download: bool = False, verify: bool = True, **options: Any
) -> Dataset:
    """Fashion-MNIST, exactly as :func:`load_mnist` (same file names and format, other MD5s and class names)."""
    return _load_idx_dataset(FASHION_MNIST, data_dir, download, verify, options)
