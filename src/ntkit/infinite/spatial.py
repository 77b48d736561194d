"""Spatial layouts of kernel tensors, and the per-axis linear maps that convolution and pooling induce.

A kernel tensor has leading batch axes (two for a pair kernel ``(N1, N2, ...)``, one for the per-example
covariance ``(N, ...)``) followed by its spatial layout R for k spatial axes S = (S_1, ..., S_k):

- diagonal: R = (S_1, ..., S_k): only Cov[x1(s), x2(s)], one position at a time;
- full:     R = (S_1, S_1', ..., S_k, S_k'): Cov[x1(s), x2(s')] for every pair of positions, the two positions
  of each spatial axis side by side (neural-tangents' layout).

Every function here works on the trailing axes only, so one implementation serves pair kernels and
per-example covariances. A 0-dim tensor stands for a kernel that is identically zero (the NTK of the
input) and passes through the linear maps unchanged.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..errors import ShapeError

__all__ = [
    "block_diagonal",
    "conv_padding",
    "conv_paddings",
    "dilate_trailing",
    "interpolation_matrices",
    "layout_shape",
    "pad_trailing",
    "pair_broadcast",
    "self_broadcast",
    "shifted_sum",
    "spatial_axes",
    "spatial_diagonal",
    "transpose_padding",
    "wrap_around",
]


def layout_shape(spatial_shape: tuple[int, ...], full: bool) -> tuple[int, ...]:
    """R for spatial shape S: S itself (diagonal) or (S_1, S_1, ..., S_k, S_k) (full)."""
    return tuple(s for s in spatial_shape for _ in range(2)) if full else tuple(spatial_shape)


def spatial_axes(n_spatial: int, i: int, full: bool) -> tuple[int, ...]:
    """The (negative) tensor axes holding spatial axis ``i``: one (diagonal) or the pair (s_i, s_i') (full)."""
    if full:
        return (-2 * n_spatial + 2 * i, -2 * n_spatial + 2 * i + 1)
    return (-n_spatial + i,)


def spatial_diagonal(t: torch.Tensor, n_spatial: int, full: bool) -> torch.Tensor:
    """(..., *R) -> (..., *S): the entries with s = s' (the variances at each position)."""
    if not full:
        return t
    for j in range(n_spatial):
        # The leading pair (s_j, s_j') of the remaining full axes becomes a trailing axis s_j; after j steps
        # there are n - j pairs followed by j diagonal axes.
        first = -(2 * n_spatial - j)
        t = torch.diagonal(t, dim1=first, dim2=first + 1)
    return t


def pair_broadcast(d1: torch.Tensor, d2: torch.Tensor, full: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example, per-position values (N1, *S), (N2, *S) -> broadcastable against a pair kernel (N1, N2, *R).

    Diagonal: (N1, 1, *S) and (1, N2, *S). Full: (N1, 1, S_1, 1, ..., S_k, 1) and (1, N2, 1, S_1, ..., 1, S_k).
    """
    if not full:
        return d1.unsqueeze(1), d2.unsqueeze(0)
    return _interleave(d1, first=True).unsqueeze(1), _interleave(d2, first=False).unsqueeze(0)


def self_broadcast(d: torch.Tensor, full: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example values (N, *S) -> the two factors broadcastable against the per-example covariance (N, *R)."""
    if not full:
        return d, d
    return _interleave(d, first=True), _interleave(d, first=False)


def _interleave(d: torch.Tensor, first: bool) -> torch.Tensor:
    """(N, S_1, ..., S_k) -> (N, S_1, 1, ..., S_k, 1) if ``first`` else (N, 1, S_1, ..., 1, S_k)."""
    shape = [d.shape[0]]
    for s in d.shape[1:]:
        shape += [s, 1] if first else [1, s]
    return d.reshape(shape)


def pad_trailing(t: torch.Tensor, pads: list[tuple[int, int]], circular: bool) -> torch.Tensor:
    """Pad the last ``len(pads)`` axes by (before, after) each, with zeros (one ``F.pad``) or circularly."""
    if not any(before or after for before, after in pads):
        return t
    if not circular:
        return F.pad(t, [p for pair in reversed(pads) for p in pair])
    for i, (before, after) in enumerate(pads):
        axis = i - len(pads)
        n = t.shape[axis]
        if before > n or after > n:
            raise ShapeError(
                f"circular padding of {before}/{after} is larger than the spatial axis ({n}); lower the padding."
            )
        t = torch.cat([t.narrow(axis, n - before, before), t, t.narrow(axis, 0, after)], dim=axis)
    return t


def block_diagonal(blocks: list[torch.Tensor], first: int, sizes: list[int]) -> torch.Tensor:
    """Blocks sharing all axes but the pair (first, first + 1), of sizes n_a along both, placed on the diagonal
    of a tensor of size Σ n_a along both axes (zeros elsewhere). Out of place."""
    total, offsets = sum(sizes), [sum(sizes[:i]) for i in range(len(sizes))]

    def placed(i: int) -> torch.Tensor:
        moved = blocks[i].movedim((first, first + 1), (-2, -1))
        after = total - offsets[i] - sizes[i]
        return F.pad(moved, [offsets[i], after, offsets[i], after])

    out = placed(0)
    for i in range(1, len(blocks)):
        out = out + placed(i)
    return out.movedim((-2, -1), (first, first + 1))


def wrap_around(t: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """Fold ``axis`` (length L >= ``size``) onto ``size`` positions, out[j] = Σ_{i ≡ j + o (mod size)} t[i] with
    o = (L − size) // 2: a transposed convolution's "valid" output wrapped around a torus (neural-tangents'
    CIRCULAR transposed convolution, whose output is "same"-sized and centred the same way). Out of place."""
    length = t.shape[axis]
    index = (torch.arange(length, device=t.device) - (length - size) // 2) % size
    shape = list(t.shape)
    shape[axis] = size
    return t.new_zeros(shape).index_add(axis, index, t)


def dilate_trailing(t: torch.Tensor, factors: list[int]) -> torch.Tensor:
    """Insert f − 1 zeros between neighbouring entries along each of the last ``len(factors)`` axes (n entries
    become (n − 1)·f + 1): the input dilation of a transposed convolution. Out of place (differentiable in both
    modes)."""
    for i, f in enumerate(factors):
        if f == 1:
            continue
        axis = t.ndim - len(factors) + i
        n = t.shape[axis]
        spread = torch.cat(
            [t.unsqueeze(axis + 1), t.new_zeros((*t.shape[: axis + 1], f - 1, *t.shape[axis + 1 :]))], axis + 1
        )
        t = spread.flatten(axis, axis + 1).narrow(axis, 0, (n - 1) * f + 1)
    return t


def transpose_padding(kernel_size: int, stride: int, padding: str | int) -> tuple[int, int]:
    """(before, after) padding of the dilated input of a transposed convolution (JAX's lax.conv_transpose and
    neural-tangents' ConvTranspose for "same" / "valid": n·stride outputs for "same"; torch's ConvTranspose for
    an int p: (n − 1)·stride − 2p + kernel_size outputs)."""
    k, s = kernel_size, stride
    if padding == "same":
        total = k + s - 2
        before = k - 1 if s > k - 1 else -(-total // 2)
    elif padding == "valid":
        total = k + s - 2 + max(k - s, 0)
        before = k - 1
    else:
        before = k - 1 - int(padding)
        total = 2 * before
    return before, total - before


def _strided(t: torch.Tensor, axis: int, start: int, n_out: int, stride: int) -> torch.Tensor:
    """t[..., start : start + stride * (n_out - 1) + 1 : stride, ...] along ``axis``."""
    index = [slice(None)] * t.ndim
    index[axis] = slice(start, start + stride * (n_out - 1) + 1, stride)
    return t[tuple(index)]


def shifted_sum(t: torch.Tensor, axes: tuple[int, ...], size: int, stride: int, dilation: int = 1) -> torch.Tensor:
    """Σ_{d < size} t[..., stride·p + dilation·d, ...], the same shift d applied jointly to every axis in ``axes``.

    Along one axis this is a window sum (pooling); applied jointly to the two position axes (s, s') of a full
    kernel, or to the one axis of a diagonal kernel, it is the kernel map of a convolution: weights at
    different filter offsets are independent, so only equal offsets on the two sides correlate.
    """
    n_out = (t.shape[axes[0]] - dilation * (size - 1) - 1) // stride + 1

    def shifted(d: int) -> torch.Tensor:
        out = t
        for axis in axes:
            out = _strided(out, axis, dilation * d, n_out, stride)
        return out

    total = shifted(0)
    for d in range(1, size):
        total = total + shifted(d)
    return total


def conv_padding(size: int, kernel_size: int, stride: int, padding: str | int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of one axis for ``padding`` = "same" | "valid" | an int (both sides).

    "same" pads as TensorFlow and JAX do: the output has ceil(size / stride) positions and an odd total
    padding puts the extra row at the end (the filter spans dilation·(kernel_size − 1) + 1 positions).
    """
    if padding == "valid":
        return 0, 0
    if padding == "same":
        n_out = -(-size // stride)
        total = max((n_out - 1) * stride + dilation * (kernel_size - 1) + 1 - size, 0)
        return total // 2, total - total // 2
    return int(padding), int(padding)


def conv_paddings(
    spatial_shape: tuple[int, ...],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: str | int | tuple[int, ...],
    dilation: tuple[int, ...] | None = None,
) -> tuple[tuple[int, int], ...]:
    """:func:`conv_padding` for every spatial axis (``padding`` may also be one int per axis)."""
    n = len(spatial_shape)
    per_axis = tuple(padding) if isinstance(padding, tuple) else (padding,) * n
    dilation = dilation or (1,) * n
    return tuple(
        conv_padding(*args) for args in zip(spatial_shape, kernel_size, stride, per_axis, dilation, strict=True)
    )


def interpolation_matrices(
    spatial_shape: tuple[int, ...],
    size: tuple[int, ...] | None,
    scale_factor: tuple[float, ...] | None,
    mode: str,
    align_corners: bool | None,
) -> tuple[torch.Tensor, ...]:
    """The (S_i', S_i) matrix of ``F.interpolate`` along each spatial axis (its modes here are separable: the
    n-d interpolation is the product of these 1-d ones), in float64: row p holds the weights of output p."""
    matrices = []
    for i, n in enumerate(spatial_shape):
        basis = torch.eye(n, dtype=torch.float64).unsqueeze(1)  # n one-hot signals of length n
        one_d = {"size": size[i]} if size is not None else {"scale_factor": scale_factor[i]}  # type: ignore[index]
        out = F.interpolate(basis, mode="linear" if mode == "linear" else mode, align_corners=align_corners, **one_d)
        matrices.append(out[:, 0, :].T)
    return tuple(matrices)
