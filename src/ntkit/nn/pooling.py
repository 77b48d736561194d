"""Average and sum pooling (1-d, 2-d, 3-d, windowed and global) and their kernel maps (they need the full
spatial covariance)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch.nn import functional as F

from .._validation import as_tuple
from ..errors import InvalidArgumentError
from ..infinite import spatial, transforms
from ..infinite.kernel_type import Kernel
from .layer import KernelLayer

__all__ = [
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "GlobalAvgPool",
    "GlobalSumPool",
    "SumPool1d",
    "SumPool2d",
    "SumPool3d",
]

_AVG_POOLS = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def window_sum(
    x: torch.Tensor,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    pads: tuple[tuple[int, int], ...],
    *,
    circular: bool,
) -> torch.Tensor:
    """Σ over each window of x (N, C, *S) padded by ``pads`` (zeros, or wrapping around if ``circular``)."""
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad lists the last axis first
    if any(flat):
        x = F.pad(x, flat, mode="circular" if circular else "constant")
    return _AVG_POOLS[len(kernel_size)](x, kernel_size, stride) * math.prod(kernel_size)


class _PoolNd(KernelLayer):
    """y(p) = Σ_{a ∈ window(p)} x(a) / c(p) over windows of ``kernel_size`` every ``stride`` positions."""

    n_dims: ClassVar[int]
    mixes_positions = True
    mask_rule = "pooling"  # the mask at each window's centre, as neural-tangents (not with circular padding)

    def __init__(
        self,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] | None = None,
        padding: int | tuple[int, ...] | str = 0,
        *,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        self.kernel_size = as_tuple(kernel_size, self.n_dims, "kernel_size")
        self.stride = self.kernel_size if stride is None else as_tuple(stride, self.n_dims, "stride")
        if padding in ("same", "valid"):
            self.padding: str | tuple[int, ...] = padding
        else:
            self.padding = as_tuple(padding, self.n_dims, "padding", minimum=0)
        if padding_mode not in ("zeros", "circular"):
            raise InvalidArgumentError(f"padding_mode must be 'zeros' or 'circular', got {padding_mode!r}.")
        self.padding_mode = padding_mode

    def _divisor(self) -> str | float:
        """c(p): "window" (the window size), "valid" (the input positions in the window) or a constant."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = spatial.conv_paddings(tuple(x.shape[2:]), self.kernel_size, self.stride, self.padding)
        circular = self.padding_mode == "circular"
        total = window_sum(x, self.kernel_size, self.stride, pads, circular=circular)
        divisor = self._divisor()
        if divisor == "window":
            return total / math.prod(self.kernel_size)
        if divisor == "valid":
            ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
            return total / window_sum(ones, self.kernel_size, self.stride, pads, circular=circular)
        return total / float(divisor)

    def kernel_transform(self, k: Kernel) -> Kernel:
        geometry = transforms.conv_geometry(
            k, self.kernel_size, self.stride, self.padding, circular=self.padding_mode == "circular", layer="pooling"
        )
        return transforms.pool(k, geometry, self._divisor())

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}, "
            f"padding_mode={self.padding_mode!r}"
        )


class _AvgPoolNd(_PoolNd):
    """Average pooling; see :class:`AvgPool2d`."""

    def __init__(
        self,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] | None = None,
        padding: int | tuple[int, ...] | str = 0,
        count_include_pad: bool = True,
        *,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__(kernel_size, stride, padding, padding_mode=padding_mode)
        self.count_include_pad = bool(count_include_pad)

    def _divisor(self) -> str | float:
        return "window" if self.count_include_pad else "valid"

    def extra_repr(self) -> str:
        return super().extra_repr() + f", count_include_pad={self.count_include_pad}"


class AvgPool1d(_AvgPoolNd):
    """Average pooling over windows of a (N, C, L) input. See :class:`AvgPool2d`."""

    n_dims = 1


class AvgPool2d(_AvgPoolNd):
    """Average pooling over windows of a (N, C, H, W) input.

    ``padding``: an int or one per axis (both sides, as torch.nn.AvgPool2d), "valid", or "same" (TensorFlow's
    and neural-tangents': ceil(n/stride) outputs, an odd extra row/column padded at the end); ``padding_mode``
    "zeros" or "circular" (wrapping around: neural-tangents' Padding.CIRCULAR is padding="same",
    padding_mode="circular"). ``count_include_pad``: divide by the window size (True, torch's default and
    neural-tangents' normalize_edges=False) or by the number of input positions in the window (False:
    neural-tangents' normalize_edges=True).

    Kernel (``transforms.pool``): K'(p, p') = Σ_{a, a'} K(a, a') / (c(p) c(p')) over the two windows.
    """

    n_dims = 2


class AvgPool3d(_AvgPoolNd):
    """Average pooling over windows of a (N, C, D, H, W) input. See :class:`AvgPool2d`."""

    n_dims = 3


class _SumPoolNd(_PoolNd):
    def _divisor(self) -> str | float:
        return 1.0


class SumPool1d(_SumPoolNd):
    """Sum over windows of a (N, C, L) input. See :class:`SumPool2d`."""

    n_dims = 1


class SumPool2d(_SumPoolNd):
    """Sum over windows of a (N, C, H, W) input (neural-tangents' SumPool): arguments as :class:`AvgPool2d`
    without ``count_include_pad``. Kernel: K'(p, p') = Σ_{a ∈ window(p), a' ∈ window(p')} K(a, a')."""

    n_dims = 2


class SumPool3d(_SumPoolNd):
    """Sum over windows of a (N, C, D, H, W) input. See :class:`SumPool2d`."""

    n_dims = 3


class _GlobalPool(KernelLayer):
    average: ClassVar[bool]
    mixes_positions = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.ndim))
        return x.mean(dim=dims) if self.average else x.sum(dim=dims)

    def kernel_transform(self, k: Kernel) -> Kernel:
        return transforms.global_pool(k, average=self.average)


class GlobalAvgPool(_GlobalPool):
    """The mean over all positions: (N, C, *S) -> (N, C). Kernel: the mean of K(s, s') over all (s, s')
    (with masked inputs, over the unmasked positions)."""

    mask_rule = "global_avg"

    average = True


class GlobalSumPool(_GlobalPool):
    """The sum over all positions: (N, C, *S) -> (N, C). Kernel: the sum of K(s, s') over all (s, s')."""

    mask_rule = "global_sum"

    average = False
