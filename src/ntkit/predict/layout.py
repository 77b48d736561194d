"""Kernel layouts: which output axes a train kernel carries, and the matrices the linear algebra uses.

All linear algebra in :mod:`ntkit.predict` works on a train kernel matrix of shape (D, D) acting on
outputs stored as a matrix of shape (D, C). Outputs are (N, *F) (F = (O,) for (N, O) targets, (C, *S) for a
network whose outputs keep spatial axes, as NCHW). The kernel carries some axes of F (``kept``) and is
Θ ⊗ I over the others (the *traced* axes, neural-tangents' ``trace_axes``): its shape is
(N1, N2, F_a, F_a', F_b, F_b', ...) for the kept axes a < b, ... (pairs side by side, as ``nk.kernel``'s full
spatial layout), and with P the product of the kept sizes and C that of the traced ones it is the matrix
(N·P, N·P) with row index (n, kept entries), applied to C columns (the traced entries):

- a per-output kernel (N, N) (the infinite-width case, Θ ⊗ I over outputs): every axis traced, D = N, C = O;
- a full kernel (N, N, O, O) (a finite network, ``trace_outputs=False``): nothing traced, D = N·O, C = 1,
  row index n·O + o, matching ``f.reshape(-1)`` of outputs (N, O);
- spatial outputs (N, C, H, W) with channels traced (``trace_axes=(1,)``): the kernel (N, N, H, H', W, W')
  of ``nk.kernel(..., diagonal_spatial=False)``, D = N·H·W, C the channels.

Also here: reading the ``.nngp`` / ``.ntk`` parts of kernel arguments (an ``nk.Kernel``-like object or
a mapping).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .._validation import check_tensor, format_shape
from ..errors import InvalidArgumentError, ShapeError, UnsupportedError

__all__ = [
    "Layout",
    "check_device",
    "check_targets",
    "kernel_part",
    "layout_of",
    "parse_trace_axes",
    "promote_dtype",
]


@dataclass(frozen=True)
class Layout:
    """How outputs of shape (n, *out_shape) map to the (rows, C) matrices the linear algebra uses.

    ``out_shape``: the outputs of one example ((1,) for 1-D targets, ``vector_targets``); ``kept``: the axes of
    ``out_shape`` (0-based, ascending) that the kernel carries, the others are traced (module docstring).
    """

    n_train: int
    out_shape: tuple[int, ...]
    kept: tuple[int, ...]
    vector_targets: bool  # y_train was 1-D (N,): results are returned 1-D as well

    @classmethod
    def flat(cls, n_train: int, n_outputs: int, full: bool, vector_targets: bool = False) -> Layout:
        """Outputs (n, O): a per-output (N, N) kernel, or a full (N, N, O, O) one."""
        return cls(n_train, (n_outputs,), (0,) if full else (), vector_targets)

    @property
    def n_outputs(self) -> int:
        """Output entries per example (the product of ``out_shape``)."""
        return math.prod(self.out_shape)

    @property
    def traced(self) -> tuple[int, ...]:
        return tuple(a for a in range(len(self.out_shape)) if a not in self.kept)

    @property
    def kept_size(self) -> int:
        """P, the kernel's entries per example (the product of the kept axes' sizes)."""
        return math.prod(self.out_shape[a] for a in self.kept)

    @property
    def dim(self) -> int:
        """D, the size of the train kernel matrix."""
        return self.n_train * self.kept_size

    @property
    def cols(self) -> int:
        """C, the number of columns the kernel matrix is applied to."""
        return self.n_outputs // self.kept_size

    def outputs_shape(self, n: int) -> tuple[int, ...]:
        """The shape of the outputs of n examples, as the caller passes them: (n,) or (n, *out_shape)."""
        return (n,) if self.vector_targets else (n, *self.out_shape)

    def to_matrix(self, f: torch.Tensor) -> torch.Tensor:
        """Outputs (n, *out_shape) (or (n,)) -> (n·P, C): the kept axes into the rows, the traced into columns."""
        f = f.reshape(f.shape[0], *self.out_shape)
        order = [0, *(1 + a for a in self.kept), *(1 + a for a in self.traced)]
        return f.permute(order).reshape(-1, self.cols)

    def from_matrix(self, m: torch.Tensor) -> torch.Tensor:
        """(..., rows, C) -> outputs (..., n, *out_shape), or (..., n) for 1-D targets."""
        lead = m.shape[:-2]
        n = m.shape[-2] // self.kept_size
        sizes = [self.out_shape[a] for a in (*self.kept, *self.traced)]
        out = m.reshape(*lead, n, *sizes)
        axes = (*self.kept, *self.traced)
        back = [axes.index(a) for a in range(len(self.out_shape))]
        out = out.permute(*range(len(lead) + 1), *(len(lead) + 1 + i for i in back))
        return out.reshape(*lead, n) if self.vector_targets else out

    def kernel_shape(self, n_rows: int, n_cols: int) -> tuple[int, ...]:
        """The shape of a kernel between n_rows and n_cols examples: (n_rows, n_cols, F_a, F_a, ...)."""
        return (n_rows, n_cols, *(self.out_shape[a] for a in self.kept for _ in range(2)))

    def kernel_matrix(self, k: torch.Tensor, name: str, n_rows: int | None = None) -> torch.Tensor:
        """A kernel (n_rows, N, *kept pairs) in this layout as a matrix (rows·P, D); ``n_rows=None`` means any."""
        expected = self.kernel_shape(k.shape[0] if n_rows is None else n_rows, self.n_train)
        if tuple(k.shape) != expected:
            shown = ("M" if n_rows is None else str(n_rows), *map(str, expected[1:]))
            raise ShapeError(
                f"{name} has shape {format_shape(k.shape)}; with {self.describe()} train kernel it must be "
                f"({', '.join(shown)})" + (" (M: any number of rows)" if n_rows is None else "") + "."
            )
        if not self.kept:
            return k
        m = k.shape[0]
        order = [0, *range(2, k.ndim, 2), 1, *range(3, k.ndim, 2)]
        return k.permute(order).reshape(m * self.kept_size, self.dim)

    def describe(self) -> str:
        """What kind of train kernel this is, for messages."""
        if not self.kept:
            return f"a per-output ({self.n_train}, {self.n_train})"
        shape = ", ".join(map(str, self.kernel_shape(self.n_train, self.n_train)))
        if len(self.kept) == len(self.out_shape):
            return f"a full ({shape})"
        return f"a ({shape}) (traced output axes {tuple(a + 1 for a in self.traced)})"


def check_device(value: torch.Tensor, name: str, device: torch.device) -> None:
    if value.device != device:
        raise UnsupportedError(
            f"{name} is on {value.device} but the train kernel is on {device}; move the tensors to one device."
        )


def check_targets(
    y_train: object, device: torch.device | None = None, *, output_axes: bool = False
) -> tuple[torch.Tensor, Layout]:
    """Float targets (N, O) or (N,) (with ``output_axes`` also (N, *F), e.g. (N, C, H, W)), and their layout with
    every output axis traced."""
    y = check_tensor(y_train, "y_train", min_ndim=1)
    if y.ndim > 2 and not output_axes:
        raise ShapeError(
            f"y_train must be (N, O) or (N,) here, got shape {format_shape(y.shape)}. Outputs with more axes "
            "(N, C, H, W) are taken by gradient_descent_mse and gradient_descent (with trace_axes=)."
        )
    if device is not None:
        check_device(y, "y_train", device)
    return y, Layout(y.shape[0], tuple(y.shape[1:]) or (1,), (), y.ndim == 1)


def parse_trace_axes(trace_axes: object, n_dims: int) -> tuple[int, ...] | None:
    """``trace_axes``: axes of the outputs (N, *F) with ``n_dims`` dimensions (ints, negative from the end; not
    0, the examples) -> the traced axes of F, 0-based and ascending; None stays None (inferred from the kernel)."""
    if trace_axes is None:
        return None
    axes = (trace_axes,) if isinstance(trace_axes, int) else trace_axes
    if not isinstance(axes, tuple | list) or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
        raise InvalidArgumentError(f"trace_axes must be an int or a tuple of ints (output axes), got {trace_axes!r}.")
    traced = set()
    for a in axes:
        axis = a + n_dims if a < 0 else a
        if not 1 <= axis < n_dims:
            raise InvalidArgumentError(
                f"trace_axes={tuple(axes)}: {a} is not an output axis of outputs with {n_dims} dimensions (N, ...); "
                f"the axes are 1..{n_dims - 1} (or -{n_dims - 1}..-1); axis 0, the examples, cannot be traced."
            )
        traced.add(axis - 1)
    return tuple(sorted(traced))


def layout_of(
    k_train: torch.Tensor,
    n_train: int,
    out_shape: tuple[int, ...],
    vector_targets: bool,
    name: str,
    trace_axes: object = None,
) -> Layout:
    """The layout of a train kernel, checked against N training examples with outputs (N, *out_shape).

    ``trace_axes`` (axes of the outputs, as neural-tangents'): the output axes the kernel is Θ ⊗ I over; the others
    appear in the kernel as pairs (N, N, F_a, F_a', ...). None: inferred, (N, N) (every axis traced) or the full
    kernel (N, N, F_1, F_1', ...) (none traced).
    """
    if k_train.ndim >= 2 and k_train.shape[0] == k_train.shape[1] != n_train:
        raise ShapeError(
            f"y_train has {n_train} rows (training examples) but {name} {format_shape(k_train.shape)} is the kernel "
            f"of {k_train.shape[0]} examples; pass the targets of the same training examples as the kernel."
        )
    every = tuple(range(len(out_shape)))
    traced = parse_trace_axes(trace_axes, 1 if vector_targets else 1 + len(out_shape))
    if traced is not None:
        kept = () if vector_targets else tuple(a for a in every if a not in traced)
        layout = Layout(n_train, out_shape, kept, vector_targets)
        expected = layout.kernel_shape(n_train, n_train)
        if tuple(k_train.shape) != expected:
            diagonal = len(kept) > 0 and tuple(k_train.shape) == (n_train, n_train, *expected[2::2])
            raise ShapeError(
                f"{name} has shape {format_shape(k_train.shape)}; with trace_axes={trace_axes!r} and outputs "
                f"{format_shape((n_train, *out_shape))} it must be {format_shape(expected)} (a pair of axes per "
                "output axis that is not traced)."
                + (
                    " It looks like a diagonal spatial layout, which lacks the covariances between positions that "
                    "training couples: compute it with nk.kernel(..., diagonal_spatial=False)."
                    if diagonal
                    else ""
                )
            )
        return layout
    for kept in ((), every):
        layout = Layout(n_train, out_shape, kept, vector_targets)
        if tuple(k_train.shape) == layout.kernel_shape(n_train, n_train):
            return layout
    outputs = format_shape((n_train, *out_shape)) if not vector_targets else f"({n_train},)"
    full = ", ".join(map(str, Layout(n_train, out_shape, every, vector_targets).kernel_shape(n_train, n_train)))
    raise ShapeError(
        f"{name} has shape {format_shape(k_train.shape)}; for outputs {outputs} it must be per-output "
        f"({n_train}, {n_train}) or full ({full})"
        + (
            ", or pass trace_axes= (the output axes the kernel is Θ ⊗ I over; e.g. trace_axes=(1,) for channels "
            "with a kernel (N, N, H, H', W, W'))."
            if len(out_shape) > 1
            else "."
        )
    )


def kernel_part(k: object, part: str, name: str) -> torch.Tensor:
    """``k.nngp`` / ``k.ntk`` of an ``nk.Kernel``-like object, or ``k["nngp"]`` of a mapping, checked."""
    if isinstance(k, tuple):
        raise UnsupportedError(
            f"{name} is a tuple of {len(k)} (the kernels of a network with several outputs, nk.kernels); "
            "predictions take the kernels of one output: e.g. kernel_fn = lambda a, b: nk.kernels(net, a, b)[i]."
        )
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
