"""A tile's zarr chunk file written past the page cache (``O_DIRECT``), on a local disk that allows it.

zarr writes a chunk through the page cache, and :meth:`KernelStore.mark_done` then flushes it (fsync). On the
shared 2-core machine, under load, writes through the page cache ran at 25-90 MB/s (each page allocated in the
cache, then written back), while the same disk took direct writes at 900 MB/s (``dd``, 512 MiB, load 15);
writing a store's tiles through the cache took longer than computing them (docs/scale.md, "Store overhead").
``O_DIRECT`` moves the bytes from one aligned buffer straight to the device.

The file is byte for byte what zarr writes for an uncompressed chunk (zarr v3, a single ``bytes`` codec,
little-endian, C order, :meth:`KernelStore._ensure_arrays`): the full (tile, tile) chunk, ragged edges padded with
the array's fill value. Like zarr, it is written under a temporary name and renamed, so the chunk's name never
shows a partial file; durability still comes from :meth:`KernelStore.mark_done`'s fsync. Where ``O_DIRECT`` is
missing (not Linux) or refused (tmpfs, some network file systems), :meth:`DirectChunkWriter.write` returns False
and the caller writes through zarr.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DirectChunkWriter"]

#: Alignment of the buffer's address, of the file offset and of the length of an O_DIRECT write (4 KiB covers
#: the logical block size of local disks).
ALIGN = 4096


class DirectChunkWriter:
    """Writes whole chunk files with ``O_DIRECT`` from a page-aligned buffer reused by each thread."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._refused: set[Path] = set()  # directories whose file system refused O_DIRECT

    def write(self, path: Path, values: np.ndarray, array: Any) -> bool:
        """Write ``values`` (rows, cols), the part of chunk ``path`` of zarr ``array`` that lies inside the array,
        as that chunk's file; False (nothing written) where this is not possible, for zarr to write it."""
        flag = getattr(os, "O_DIRECT", None)
        if flag is None or path.parent in self._refused or not _raw_chunks(array):
            return False
        chunk = self._chunk(np.dtype(array.dtype).newbyteorder("<"), tuple(array.chunks))
        if values.shape != chunk.shape:  # a ragged edge tile: zarr stores the full chunk, padded
            chunk.fill(array.fill_value)
        chunk[: values.shape[0], : values.shape[1]] = values
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | flag, 0o644)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._refused.add(path.parent)
            return False
        try:
            try:
                _write_all(fd, memoryview(self._local.buffer)[: _aligned(chunk.nbytes)])
                os.ftruncate(fd, chunk.nbytes)  # the aligned write's padding cut off
            finally:
                os.close(fd)
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return True

    def _chunk(self, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
        """This thread's buffer (anonymous memory: page-aligned), grown if needed, viewed as one chunk."""
        nbytes = int(np.prod(shape)) * dtype.itemsize
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or len(buffer) < _aligned(nbytes):
            buffer = self._local.buffer = mmap.mmap(-1, _aligned(nbytes))
        return np.frombuffer(buffer, dtype=dtype, count=nbytes // dtype.itemsize).reshape(shape)


def _raw_chunks(array: Any) -> bool:
    """Whether zarr stores this array's chunks as their raw little-endian bytes in C order (then a chunk file
    is exactly the chunk's bytes)."""
    from zarr.codecs import BytesCodec

    codecs: tuple[Any, ...] = tuple(getattr(array.metadata, "codecs", ()))
    only = codecs[0] if len(codecs) == 1 else None
    return (
        isinstance(only, BytesCodec)
        and getattr(only.endian, "value", None) == "little"
        and array.order == "C"
        and len(array.chunks) == 2
    )


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]
