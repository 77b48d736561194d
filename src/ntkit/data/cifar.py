"""CIFAR-10 from its official python distribution (32×32 colour, 50 000 train / 10 000 test, 10 classes).

Accepted in ``data_dir`` (or ``data_dir/cifar10``): the archive ``cifar-10-python.tar.gz`` (read in place, not
extracted) or its extracted folder ``cifar-10-batches-py/`` with ``data_batch_1`` .. ``data_batch_5`` and
``test_batch``. Each batch is a pickled dict with ``b"data"`` (10 000 × 3072 uint8, rows are R, G, B planes of
32×32 in C order, i.e. CHW) and ``b"labels"`` (10 000 ints). The pickles are read with an unpickler that accepts
only plain containers and numpy arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import functools
import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataFormatError, DataNotFoundError
from .dataset import Dataset, prepare
from .files import Resource, locate, verify_md5
from .mnist import folders_for

__all__ = ["ARCHIVE", "BATCHES", "load_cifar10"]

ARCHIVE = Resource(
    "cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a",
    ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
)
FOLDER = "cifar-10-batches-py"
# Official MD5 of each extracted batch file (as in torchvision).
BATCHES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how Python 3 pickles bytes with protocol <= 2
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def _unpickle_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:
        raise DataFormatError(f"{where} is not a CIFAR-10 python batch ({type(exc).__name__}: {exc}).") from None
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DataFormatError(f"{where}: expected a dict with keys b'data' and b'labels', got {keys}.")
    data, labels = np.asarray(obj[b"data"]), np.asarray(obj[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataFormatError(f"{where}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}.")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(f"{where}: b'labels' must hold {len(data)} integers, got {labels.dtype} {labels.shape}.")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataFormatError(f"{where}: labels must lie in 0..9, found {int(labels.min())}..{int(labels.max())}.")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_batches_from_tar(path: Path) -> dict[str, bytes]:
    try:
        with tarfile.open(path, "r:*") as tar:
            out = {}
            for name in BATCHES:
                member = tar.getmember(f"{FOLDER}/{name}")
                fh = tar.extractfile(member)
                if fh is None:
                    raise KeyError(name)
                out[name] = fh.read()
            return out
    except KeyError as exc:
        raise DataFormatError(
            f"{path} does not contain {FOLDER}/{exc.args[0]}; it is not the CIFAR-10 archive."
        ) from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataFormatError(f"{path} cannot be read as a tar.gz archive ({exc}); the file is damaged.") from None


def _find_extracted(folders: list[Path]) -> Path | None:
    for folder in folders:
        for candidate in (folder / FOLDER, folder):
            if (candidate / "data_batch_1").is_file():
                return candidate
    return None


@functools.lru_cache(maxsize=2)
def _read_all(source: Path, mtime_ns: int, verify: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if source.is_dir():
        missing = [n for n in BATCHES if not (source / n).is_file()]
        if missing:
            raise DataNotFoundError(f"cifar10: {source} lacks {', '.join(missing)}; copy the whole {FOLDER} folder.")
        if verify:
            for name, md5 in BATCHES.items():
                verify_md5(source / name, md5, what="cifar10")
        raw = {name: (source / name).read_bytes() for name in BATCHES}
    else:
        raw = _read_batches_from_tar(source)
    parts = {name: _unpickle_batch(blob, f"{source}:{name}") for name, blob in raw.items()}
    train = [parts[f"data_batch_{i}"] for i in range(1, 6)]
    arrays = (
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        *parts["test_batch"],
    )
    for a in arrays:
        a.flags.writeable = False  # cached: shared between calls
    return arrays


def find_cifar10(data_dir: str | Path | None, *, download: bool, verify: bool) -> Path:
    """The extracted batch folder or the archive, found in ``data_dir`` (or the cache) or downloaded there."""
    folders, target = folders_for("cifar10", ("cifar10",), data_dir)
    extracted = _find_extracted(folders)
    if extracted is not None:
        return extracted
    return locate([ARCHIVE], folders, download_folder=target, download_missing=download, verify=verify, what="cifar10")[
        ARCHIVE.filename
    ]


def load_cifar10(
    data_dir: str | Path | None = None, *, download: bool = False, verify: bool = True, **options: Any
) -> Dataset:
    """CIFAR-10 as a :class:`~ntkit.data.Dataset`: inputs (N, 3072) or (N, 3, 32, 32) (NCHW), pixels scaled to
    [0, 1] before standardisation, labels 0..9 (airplane .. truck).

    ``data_dir``, ``download``, ``verify`` as for :func:`ntkit.data.load_mnist` (MD5s: the archive's, or each
    extracted batch's); ``options``: those of :func:`ntkit.data.prepare`.
    """
    source = find_cifar10(data_dir, download=download, verify=verify)
    x_train, y_train, x_test, y_test = _read_all(source, source.stat().st_mtime_ns, verify)
    return prepare(
        "cifar10",
        x_train,
        y_train,
        x_test,
        y_test,
        n_classes=10,
        class_names=CLASS_NAMES,
        image_shape=(3, 32, 32),
        scale=1.0 / 255.0,
        **options,
    )
