"""Kernel layouts: per-output (N1, N2) kernels versus full (N1, N2, O, O) kernels, as matrices.

All linear algebra in :mod:`ntkit.predict` works on a train kernel matrix of shape (D, D) acting on
outputs stored as a matrix of shape (D, C):

- a per-output kernel (N, N) (the infinite-width case, Θ ⊗ I over outputs) is applied to every
  output column: D = N, C = O;
- a full kernel (N, N, O, O) (a finite network, ``trace_outputs=False``) is flattened to
  (N·O, N·O) with row index n·O + o, matching ``f.reshape(-1)`` of outputs (N, O): D = N·O, C = 1.

Also here: reading the ``.nngp`` / ``.ntk`` parts of kernel arguments (an ``nk.Kernel``-like object or
a mapping).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .._validation import check_tensor, format_shape
from ..errors import ShapeError, UnsupportedError

__all__ = ["Layout", "check_device", "check_targets", "kernel_part", "layout_of", "promote_dtype"]


@dataclass(frozen=True)
class Layout:
    """How outputs of shape (n, O) map to the (rows, C) matrices the linear algebra uses."""

    n_train: int
    n_outputs: int
    full: bool
    vector_targets: bool  # y_train was 1-D (N,): results are returned 1-D as well

    @property
    def dim(self) -> int:
        """D, the size of the train kernel matrix."""
        return self.n_train * self.n_outputs if self.full else self.n_train

    @property
    def cols(self) -> int:
        """C, the number of columns the kernel matrix is applied to."""
        return 1 if self.full else self.n_outputs

    def to_matrix(self, f: torch.Tensor) -> torch.Tensor:
        """Outputs (n, O) or (n,) -> (n·O, 1) for a full kernel, (n, O) for a per-output one."""
        f = f.reshape(f.shape[0], self.n_outputs)
        return f.reshape(-1, 1) if self.full else f

    def from_matrix(self, m: torch.Tensor) -> torch.Tensor:
        """(..., rows, C) -> outputs (..., n, O), or (..., n) for 1-D targets."""
        lead = m.shape[:-2]
        n = m.shape[-2] // self.n_outputs if self.full else m.shape[-2]
        out = m.reshape(*lead, n, self.n_outputs)
        return out.squeeze(-1) if self.vector_targets else out

    def kernel_matrix(self, k: torch.Tensor, name: str, n_rows: int | None = None) -> torch.Tensor:
        """A kernel (n_rows, N[, O, O]) in this layout as a matrix (rows, D); ``n_rows=None`` means any."""
        expected = "(M, N)" if not self.full else "(M, N, O, O)"
        ok = k.ndim == (4 if self.full else 2) and k.shape[1] == self.n_train
        ok = ok and (not self.full or tuple(k.shape[2:]) == (self.n_outputs, self.n_outputs))
        ok = ok and (n_rows is None or k.shape[0] == n_rows)
        if not ok:
            kind = "a full (N, N, O, O)" if self.full else "a per-output (N, N)"
            raise ShapeError(
                f"{name} has shape {format_shape(k.shape)}; with {kind} train kernel it must be {expected} with "
                f"N = {self.n_train}, O = {self.n_outputs}" + (f", M = {n_rows}" if n_rows is not None else "") + "."
            )
        if not self.full:
            return k
        m = k.shape[0]
        return k.permute(0, 2, 1, 3).reshape(m * self.n_outputs, self.dim)


def check_device(value: torch.Tensor, name: str, device: torch.device) -> None:
    if value.device != device:
        raise UnsupportedError(
            f"{name} is on {value.device} but the train kernel is on {device}; move the tensors to one device."
        )


def check_targets(y_train: object, device: torch.device | None = None) -> tuple[torch.Tensor, Layout]:
    """Float targets (N, O) or (N,), and their per-output layout."""
    y = check_tensor(y_train, "y_train", min_ndim=1)
    if y.ndim > 2:
        raise ShapeError(f"y_train must be (N, O) or (N,), got shape {format_shape(y.shape)}.")
    if device is not None:
        check_device(y, "y_train", device)
    return y, Layout(y.shape[0], y.shape[1] if y.ndim == 2 else 1, False, y.ndim == 1)


def layout_of(k_train: torch.Tensor, n_train: int, n_outputs: int, vector_targets: bool, name: str) -> Layout:
    """The layout of a train kernel, checked against N training examples with O outputs."""
    if k_train.ndim == 2 and tuple(k_train.shape) == (n_train, n_train):
        return Layout(n_train, n_outputs, False, vector_targets)
    if k_train.ndim == 4 and tuple(k_train.shape) == (n_train, n_train, n_outputs, n_outputs):
        return Layout(n_train, n_outputs, True, vector_targets)
    if k_train.ndim in (2, 4) and k_train.shape[0] == k_train.shape[1] != n_train:
        raise ShapeError(
            f"y_train has {n_train} rows (training examples) but {name} {format_shape(k_train.shape)} is the kernel "
            f"of {k_train.shape[0]} examples; pass the targets of the same training examples as the kernel."
        )
    raise ShapeError(
        f"{name} has shape {format_shape(k_train.shape)}; for {n_train} training examples with {n_outputs} "
        f"outputs it must be per-output ({n_train}, {n_train}) or full ({n_train}, {n_train}, {n_outputs}, "
        f"{n_outputs})."
    )


def kernel_part(k: object, part: str, name: str) -> torch.Tensor:
    """``k.nngp`` / ``k.ntk`` of an ``nk.Kernel``-like object, or ``k["nngp"]`` of a mapping, checked."""
    if isinstance(k, torch.Tensor):
        raise UnsupportedError(
            f"{name} is a plain tensor, but the {part!r} kernel is needed; pass an nk.Kernel (with .nngp and .ntk) "
            f"or a dict {{'nngp': ..., 'ntk': ...}}."
        )
    value = k.get(part) if isinstance(k, Mapping) else getattr(k, part, None)
    if value is None:
        raise UnsupportedError(
            f"{name} has no {part!r} kernel ({type(k).__name__}); this prediction needs it. Pass an nk.Kernel or "
            f"a dict with a {part!r} entry."
        )
    return check_tensor(value, f"{name}.{part}", min_ndim=2)


def promote_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The floating dtype results are returned in: the promotion of the floating inputs' dtypes."""
    dtype = None
    for t in tensors:
        if t is not None and t.is_floating_point():
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    return dtype if dtype is not None else torch.get_default_dtype()
