"""The IDX file format of MNIST and Fashion-MNIST, plain or gzipped.

Layout (big-endian): two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64), the number of dimensions, one 4-byte size per dimension, then the data in C order.
Labels files have magic 0x00000801 (uint8, 1 dimension), image files 0x00000803 (uint8, 3 dimensions).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..errors import DataFormatError

__all__ = ["read_idx", "write_idx"]

_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise DataFormatError(
            f"{path} looks gzipped but cannot be decompressed ({exc}); the file is damaged."
        ) from None


def read_idx(path: Path) -> np.ndarray:
    """The array stored in an IDX file (gzipped or not, told apart by the gzip magic bytes)."""
    data = _read_bytes(Path(path))
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _TYPES:
        raise DataFormatError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'none'}).")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"{path}: IDX header is truncated ({len(data)} bytes for {ndim} dimensions).")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_TYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataFormatError(
            f"{path}: the IDX header announces shape {shape} ({expected} bytes of data) but the file holds "
            f"{len(data) - header}; the file is truncated or damaged."
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: Path, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (gzipped if ``compress``, default: when the name ends in .gz)."""
    code = {np.dtype(v).newbyteorder("="): k for k, v in _TYPES.items()}[array.dtype.newbyteorder("=")]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.dtype(_TYPES[code])).tobytes()
    if compress if compress is not None else str(path).endswith(".gz"):
        payload = gzip.compress(payload)
    Path(path).write_bytes(payload)
