"""Assembling a kernel from blocks of examples, so that intermediates stay within the memory budget.

A method (:mod:`.jacobian`, :mod:`.ntvp`, :mod:`.structured`) computes *features* of a chunk of examples
(``features`` for the x1 side, ``features2`` for the x2 side) and contracts two chunks' features into a
block (``pair``) or matching rows into diagonal entries (``diag``). With x2 = x1 only the blocks on and above
the diagonal are computed and the others are mirrored: Θ̂(x', x) = Θ̂(x, x')ᵀ, with the output axes swapped
in the full kernel; the blocks on the diagonal are replaced by their symmetric part (a jvp of a vjp, or a
product J Jᵀ, is symmetric only to round-off), so the result is exactly symmetric for every method.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch

from .._progress import Progress

__all__ = ["KernelMethod", "assemble", "assemble_diagonal", "block_count", "chunk_for_budget", "chunks", "counted"]


class KernelMethod(Protocol):
    name: str
    same_features: bool

    def features(self, x: torch.Tensor) -> Any: ...

    def features2(self, x: torch.Tensor) -> Any: ...

    def pair(self, f1: Any, f2: Any, full: bool) -> torch.Tensor: ...

    def diag(self, f1: Any, f2: Any, full: bool) -> torch.Tensor: ...


class _Counted:
    """``method`` whose ``pair`` and ``diag`` (one block each) advance a progress bar."""

    def __init__(self, method: KernelMethod, bar: Progress) -> None:
        self.method, self.bar = method, bar
        self.name, self.same_features = method.name, method.same_features
        self.features, self.features2 = method.features, method.features2

    def pair(self, f1: Any, f2: Any, full: bool) -> torch.Tensor:
        block = self.method.pair(f1, f2, full)
        self.bar.update(1)
        return block

    def diag(self, f1: Any, f2: Any, full: bool) -> torch.Tensor:
        block = self.method.diag(f1, f2, full)
        self.bar.update(1)
        return block


def counted(method: KernelMethod, bar: Progress) -> KernelMethod:
    """``method`` counting its blocks on ``bar`` (for :func:`assemble` and :func:`assemble_diagonal`)."""
    return _Counted(method, bar)


def block_count(n1: int, n2: int, size: int, symmetric: bool, diagonal: bool) -> int:
    """How many blocks :func:`assemble` (or :func:`assemble_diagonal`) computes."""
    rows, cols = -(-n1 // size), -(-n2 // size)
    if diagonal:
        return rows
    return rows * (rows + 1) // 2 if symmetric else rows * cols


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` of range(n)."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def chunk_for_budget(n: int, bytes_per_example: float, budget: float, chunk_size: int | None) -> int:
    """``chunk_size`` if given, else the most examples (at most n, at least 1) whose bytes fit the budget."""
    if chunk_size is not None:
        return chunk_size
    return int(max(1, min(n, budget // max(bytes_per_example, 1))))


def assemble(method: KernelMethod, x1: torch.Tensor, x2: torch.Tensor | None, full: bool, size: int) -> torch.Tensor:
    """The kernel ((N1, N2) summed over outputs, or (N1, N2, O, O)) block by block, in a fresh tensor; ``x2=None``:
    x1. A problem of one block is returned as computed (no copy into a kernel-sized buffer)."""
    symmetric = x2 is None
    other = x1 if x2 is None else x2
    rows_all, cols = list(chunks(x1.shape[0], size)), list(chunks(other.shape[0], size))
    if len(rows_all) == 1 and len(cols) == 1:
        f1 = method.features(x1)
        block = method.pair(f1, f1 if symmetric and method.same_features else method.features2(other), full)
        if not symmetric:
            return block.contiguous()
        return torch.add(
            block, _mirrored(block, full), out=torch.empty_like(block, memory_format=torch.contiguous_format)
        ).div_(2)
    out: torch.Tensor | None = None
    kept = method.features2(other) if not symmetric and len(cols) == 1 else None
    for i, rows in enumerate(rows_all):
        f1 = method.features(x1[rows])
        for j in range(i if symmetric else 0, len(cols)):
            if kept is not None:
                f2 = kept
            elif symmetric and j == i and method.same_features:
                f2 = f1
            else:
                f2 = method.features2(other[cols[j]])
            block = method.pair(f1, f2, full)
            if out is None:  # every entry is written below
                out = block.new_empty((x1.shape[0], other.shape[0], *block.shape[2:]))
            mirrored = _mirrored(block, full)
            if symmetric and j == i:
                block = (block + mirrored) / 2
            out[rows, cols[j]] = block
            if symmetric and j != i:
                out[cols[j], rows] = mirrored
            del f2
    assert out is not None, "x1 holds at least one example"
    return out


def _mirrored(block: torch.Tensor, full: bool) -> torch.Tensor:
    """Θ̂(x', x) from the block Θ̂(x, x'): transposed, with the output axes swapped in the full kernel."""
    return block.permute(1, 0, 3, 2) if full else block.T


def assemble_diagonal(
    method: KernelMethod, x1: torch.Tensor, x2: torch.Tensor | None, full: bool, size: int
) -> torch.Tensor:
    """Θ̂(x1_n, x2_n) ((N,) summed over outputs, or (N, O, O)), chunk by chunk, in a fresh tensor."""
    reuse = x2 is None and method.same_features
    parts = []
    for rows in chunks(x1.shape[0], size):
        f1 = method.features(x1[rows])
        f2 = f1 if reuse else method.features2((x1 if x2 is None else x2)[rows])
        parts.append(method.diag(f1, f2, full))
    return parts[0].contiguous() if len(parts) == 1 else torch.cat(parts)
