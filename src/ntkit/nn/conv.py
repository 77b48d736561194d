"""``Conv1d``, ``Conv2d``: convolutions (NCHW) in the NTK or standard parameterization, and their kernel maps."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .._validation import as_tuple, check_positive_int
from ..errors import InvalidArgumentError
from ..infinite import spatial, transforms
from ..infinite.kernel_type import Kernel
from ._layer import WeightLayer

__all__ = ["Conv1d", "Conv2d"]


class _ConvNd(WeightLayer):
    n_dims: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        *,
        stride=1,
        padding="same",
        padding_mode: str = "zeros",
        W_std=1.0,
        b_std=0.0,
        parameterization: str = "ntk",
    ) -> None:
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.kernel_size = as_tuple(kernel_size, self.n_dims, "kernel_size")
        self.stride = as_tuple(stride, self.n_dims, "stride")
        if padding not in ("same", "valid") and not (isinstance(padding, int) and padding >= 0):
            raise InvalidArgumentError(f"padding must be 'same', 'valid' or a non-negative int, got {padding!r}.")
        if padding_mode not in ("zeros", "circular"):
            raise InvalidArgumentError(f"padding_mode must be 'zeros' or 'circular', got {padding_mode!r}.")
        self.padding, self.padding_mode = padding, padding_mode
        super().__init__(
            (out_channels, in_channels, *self.kernel_size),
            W_std=W_std,
            b_std=b_std,
            parameterization=parameterization,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = spatial.conv_paddings(tuple(x.shape[2:]), self.kernel_size, self.stride, self.padding)
        flat = [p for pair in reversed(pads) for p in pair]  # F.pad lists the last axis first
        if any(flat):
            x = F.pad(x, flat, mode="circular" if self.padding_mode == "circular" else "constant")
        conv = F.conv1d if self.n_dims == 1 else F.conv2d
        return self._finish(conv(x, self.weight, stride=self.stride))

    def kernel_transform(self, k: Kernel) -> Kernel:
        circular = self.padding_mode == "circular"
        geometry = transforms.conv_geometry(k, self.kernel_size, self.stride, self.padding, circular=circular)
        return self._weight_kernel(k, self.in_channels, self.out_channels, geometry)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding!r}, padding_mode={self.padding_mode!r}, " + super().extra_repr()
        )


class Conv1d(_ConvNd):
    """1-d convolution, (N, C_in, L) -> (N, C_out, L'). See :class:`Conv2d`."""

    n_dims = 1


class Conv2d(_ConvNd):
    """2-d convolution, (N, C_in, H, W) -> (N, C_out, H', W'), fan_in = C_in · kh · kw.

    ``padding``: "same" (default; with stride > 1 as TensorFlow/JAX: ceil(n/stride) outputs, the odd extra
    row/column padded at the end), "valid", or an int on both sides; ``padding_mode`` "zeros" or "circular".
    Kernel: K'(s, s') = W_std² · mean_d K(s·stride + d, s'·stride + d) + b_std² (filter offsets d share no
    weights, so only equal offsets correlate), and Θ as for :class:`Linear`.
    """

    n_dims = 2
