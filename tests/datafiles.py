"""Small data files in the real distribution formats, written for the tests (nothing is downloaded).

IDX files are written byte by byte here (big-endian header, magic 0x0801 / 0x0803), independently of ntkit's
own writer; CIFAR-10 batches are pickled dicts with b"data" / b"labels", packed in a tar.gz like the official
archive.
"""

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from ntkit.data import cifar

MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_images(a: np.ndarray) -> bytes:
    return struct.pack(">IIII", 0x0803, *a.shape) + a.astype(np.uint8).tobytes()


def idx_labels(a: np.ndarray) -> bytes:
    return struct.pack(">II", 0x0801, len(a)) + a.astype(np.uint8).tobytes()


def mnist_arrays(seed=0, n_train=40, n_test=10):
    """Random images; every class appears n/10 times, in random order."""
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n_train, 28, 28)),
        rng.permutation(np.arange(n_train) % 10),
        rng.integers(0, 256, (n_test, 28, 28)),
        rng.permutation(np.arange(n_test) % 10),
    )


def write_mnist(folder: Path, *, gz=True, seed=0) -> tuple:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = mnist_arrays(seed)
    for name, arr, enc in zip(MNIST_NAMES, arrays, (idx_images, idx_labels) * 2, strict=True):
        payload = enc(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / name).write_bytes(payload)
    return arrays


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def patch_md5s(monkeypatch, module, attr, folder: Path):
    """Make the spec's official MD5s those of the files in ``folder`` (the test files are not the official ones)."""
    spec = getattr(module, attr)
    res = tuple(replace(r, md5=md5(folder / r.filename)) for r in spec.resources)
    monkeypatch.setattr(module, attr, replace(spec, resources=res))


def cifar_batches(seed=0, n=6):
    rng = np.random.default_rng(seed)
    out = {}
    for name in cifar.BATCHES:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        out[name] = {b"batch_label": name.encode(), b"data": data, b"labels": rng.integers(0, 10, n).tolist()}
    return out


def write_cifar_tar(path: Path, batches: dict) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in batches.items():
            blob = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
