"""``KernelMatrix``: a kernel (N1, N2) that solvers multiply with, tile by tile from a store or from memory.

Products are in float64 whatever the stored dtype: each tile is converted as it is used, into one reused
buffer, so memory holds one tile in float64 (and the next, read ahead in a thread while this one is
multiplied) besides the vectors. One pass over the tiles serves every column of a block of vectors (N, C), and
a symmetric store's upper tiles serve their transposes. A store's tiles can be kept in memory in their stored
dtype (:meth:`KernelMatrix.keep_in_memory`) when they fit, which saves reading the store once per product.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from .._validation import format_shape
from ..errors import InvalidArgumentError, ShapeError
from .store import KernelStore

__all__ = ["KernelMatrix"]

#: Rows per block when a kernel in memory is multiplied in float64 (a block is converted, not the whole kernel).
_ROW_BLOCK = 2048


class KernelMatrix:
    """Kernel ``name`` of a :class:`KernelStore`, or a tensor (N1, N2), as an operator in float64."""

    def __init__(self, source: KernelStore | torch.Tensor, label: str):
        self.source = source
        self.label = label
        self._kept: list[tuple[slice, slice, torch.Tensor]] | None = None
        self._tile = 1  # examples per tile side of a store (tile columns of a tensor are not used)
        if isinstance(source, KernelStore):
            self.shape = source.shape
            self._tile = source.tile_size
        else:
            if source.ndim != 2:
                shape = format_shape(source.shape)
                raise ShapeError(f"{label} must be a per-output kernel (N1, N2), got shape {shape}.")
            self.shape = (int(source.shape[0]), int(source.shape[1]))

    @classmethod
    def of(cls, kernel: Any, name: str, label: str) -> KernelMatrix:
        """Kernel ``name`` of a KernelStore, nk.Kernel-like object (``.nngp`` / ``.ntk``) or mapping; a tensor
        is taken as the kernel itself."""
        if isinstance(kernel, KernelStore):
            if name not in kernel.kernels:
                raise InvalidArgumentError(
                    f"{label} at {kernel.location} holds {', '.join(kernel.kernels)} but {name!r} is needed; "
                    f"compute it with get=({name!r},) or including it."
                )
            if not kernel.complete:
                raise InvalidArgumentError(
                    f"{label} at {kernel.location} has {kernel.tiles_done} of {kernel.tiles_total} tiles; finish it "
                    "with nk.scale.kernel(...) (same arguments and store) first."
                )
            return cls(kernel, f"{label}.{name}")
        if isinstance(kernel, torch.Tensor):
            return cls(kernel, label)
        part = kernel.get(name) if isinstance(kernel, Mapping) else getattr(kernel, name, None)
        if not isinstance(part, torch.Tensor | KernelStore):
            raise InvalidArgumentError(
                f"{label} must be a KernelStore, a tensor, or have a {name!r} kernel (an nk.Kernel or a dict); "
                f"got {type(kernel).__name__} without it."
            )
        return cls.of(part, name, label)

    def _name(self) -> str:
        return self.label.rpartition(".")[2]

    @property
    def symmetric_store(self) -> bool:
        return isinstance(self.source, KernelStore) and self.source.symmetric

    def stored_bytes(self) -> int:
        """Bytes of the kernel as stored (only the upper triangle of tiles of a symmetric store)."""
        if isinstance(self.source, torch.Tensor):
            return self.source.numel() * self.source.element_size()
        g = self.source.grid
        itemsize = torch.finfo(self.source.dtype).bits // 8
        entries = sum((g.rows(i).stop - g.rows(i).start) * (g.cols(j).stop - g.cols(j).start) for i, j in g.tiles())
        return int(entries) * itemsize

    def keep_in_memory_if_fits(self, budget: int) -> None:
        """Read a store's tiles once and keep them (stored dtype) for every later product, if they fit
        ``budget`` bytes (products then come from memory instead of one pass over the store each)."""
        if self.stored_bytes() <= budget:
            self.keep_in_memory()

    def keep_in_memory(self) -> None:
        """Read a store's tiles once and keep them (stored dtype) for every later product."""
        if isinstance(self.source, KernelStore) and self._kept is None:
            store, name = self.source, self._name()
            self._kept = [(r, c, torch.from_numpy(t)) for r, c, t in store.iter_tiles(name)]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the kernel is stored (or held) in."""
        return self.source.dtype

    def tiles(self, blocks: set[int] | None = None) -> Iterator[tuple[slice, slice, torch.Tensor]]:
        """(rows, cols, block) covering the kernel (the upper triangle of a symmetric store), in the stored
        dtype; with ``blocks``, only a store's tiles in those tile columns (and, when symmetric, tile rows).
        A store's tiles are read one ahead in a thread unless they are kept in memory."""
        if self._kept is not None:
            for rows, cols, tile in self._kept:
                if blocks is None or self._in_blocks(rows.start // self._tile, cols.start // self._tile, blocks):
                    yield rows, cols, tile
            return
        if isinstance(self.source, torch.Tensor):
            n1, _ = self.shape
            for start in range(0, n1, _ROW_BLOCK):
                rows = slice(start, min(start + _ROW_BLOCK, n1))
                yield rows, slice(0, self.shape[1]), self.source[rows]
            return
        store, name = self.source, self._name()
        grid = store.grid
        positions = [(i, j) for i, j in grid.tiles() if blocks is None or self._in_blocks(i, j, blocks)]
        with ThreadPoolExecutor(1, thread_name_prefix="ntkit-tile-reader") as reader:
            ahead = reader.submit(store.read_tile, name, *positions[0])
            for k, (i, j) in enumerate(positions):
                block = ahead.result()
                if k + 1 < len(positions):
                    ahead = reader.submit(store.read_tile, name, *positions[k + 1])
                yield grid.rows(i), grid.cols(j), torch.from_numpy(block)

    def _in_blocks(self, i: int, j: int, blocks: set[int]) -> bool:
        """Whether a store's tile (i, j) lies in one of the tile columns ``blocks`` (or rows, when symmetric)."""
        return j in blocks or (self.symmetric_store and i in blocks)

    def matmul(self, v: torch.Tensor, *, transpose: bool = False, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """K v (N1, C) for v (N2, C), or Kᵀ v (N2, C) for v (N1, C) with ``transpose``; float64.

        One pass over the tiles for all C columns. Each tile's products are computed in ``dtype`` (float64: exact
        products of the stored values; the stored dtype, e.g. float32: no conversion, for a randomized sketch)
        and summed over tiles in float64. A tile stored in another dtype is converted into one buffer that is
        reused for every tile (a fresh float64 copy per tile costs more than the products: page faults). A
        symmetric store's tile (i, j), i < j, serves both K[i, j] v[j] and its transpose K[j, i] v[i].
        """
        transpose = transpose and not self.symmetric_store  # a symmetric kernel is its own transpose
        n_out = self.shape[1] if transpose else self.shape[0]
        out = torch.zeros((n_out, v.shape[1]), dtype=torch.float64)
        v = v.to(dtype)
        buffer = torch.empty(0, dtype=dtype)
        for rows, cols, stored in self.tiles():
            tile = stored
            if stored.dtype != dtype:
                if buffer.numel() < stored.numel():
                    buffer = torch.empty(stored.numel(), dtype=dtype)
                tile = buffer[: stored.numel()].view(stored.shape).copy_(stored)
            if transpose:
                _accumulate(out[cols], tile.T, v[rows])
            else:
                _accumulate(out[rows], tile, v[cols])
            if self.symmetric_store and rows != cols:  # the lower tile, tile (j, i) = tile (i, j)ᵀ
                _accumulate(out[cols], tile.T, v[rows])
        return out

    def diagonal(self) -> torch.Tensor:
        """K(x_i, x_i) (N,) of a square kernel, float64 (read from the diagonal tiles only)."""
        n = min(self.shape)
        if isinstance(self.source, torch.Tensor):
            return torch.diagonal(self.source)[:n].to(torch.float64)
        store, name = self.source, self._name()
        t = store.grid.shape[0]
        parts = [torch.from_numpy(store.read_tile(name, i, i)).diagonal() for i in range(t)]
        return torch.cat(parts).to(torch.float64)[:n]

    def dense(self) -> torch.Tensor:
        """The whole kernel in float64 (N1, N2) (the caller checked that it fits)."""
        out = torch.empty(self.shape, dtype=torch.float64)
        for rows, cols, tile in self.tiles():
            out[rows, cols] = tile  # converted as it is copied
            if self.symmetric_store and rows != cols:
                out[cols, rows] = tile.T
        return out

    def columns(self, index: torch.Tensor) -> torch.Tensor:
        """K[:, index] (N1, P) of a kernel in float64, reading only the tiles that hold those columns."""
        if isinstance(self.source, torch.Tensor):
            return self.source[:, index].to(torch.float64)
        out = torch.empty((self.shape[0], len(index)), dtype=torch.float64)
        blocks = {int(c) // self._tile for c in index}
        for rows, cols, tile in self.tiles(blocks):
            here = ((index >= cols.start) & (index < cols.stop)).nonzero().squeeze(1)
            out[rows, here] = tile[:, index[here] - cols.start]
            if self.symmetric_store and rows != cols:  # tile (j, i) = tile (i, j)ᵀ holds columns of tile row i
                here = ((index >= rows.start) & (index < rows.stop)).nonzero().squeeze(1)
                out[cols, here] = tile[index[here] - rows.start].T
        return out

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """K[index] (M, N2) in float64 (one pass over a store)."""
        if isinstance(self.source, torch.Tensor):
            return self.source[index].to(torch.float64)
        pick = torch.zeros((self.shape[0], len(index)), dtype=torch.float64)
        pick[index, torch.arange(len(index))] = 1.0
        return self.matmul(pick, transpose=True).T


def _accumulate(out: torch.Tensor, tile: torch.Tensor, v: torch.Tensor) -> None:
    """out += tile @ v: in place when the product is float64, else the product converted and added."""
    if tile.dtype == out.dtype:
        out.addmm_(tile, v)
    else:
        out += tile @ v
