"""``Conv1d``, ``Conv2d``, ``Conv3d``: convolutions (channels first) in the NTK or standard parameterization, and
their kernel maps."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .._validation import check_positive_int
from ..errors import InvalidArgumentError
from ..infinite import spatial, transforms
from ..infinite.kernel_type import Kernel
from ._layer import WeightLayer, as_tuple

__all__ = ["Conv1d", "Conv2d", "Conv3d"]

_CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


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
        dilation=1,
        padding_mode: str = "zeros",
        W_std=1.0,
        b_std=0.0,
        parameterization: str = "ntk",
    ) -> None:
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        self.kernel_size = as_tuple(kernel_size, self.n_dims, "kernel_size")
        self.stride = as_tuple(stride, self.n_dims, "stride")
        self.dilation = as_tuple(dilation, self.n_dims, "dilation")
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
        pads = spatial.conv_paddings(tuple(x.shape[2:]), self.kernel_size, self.stride, self.padding, self.dilation)
        flat = [p for pair in reversed(pads) for p in pair]  # F.pad lists the last axis first
        if any(flat):
            x = F.pad(x, flat, mode="circular" if self.padding_mode == "circular" else "constant")
        return self._finish(_CONVS[self.n_dims](x, self.weight, stride=self.stride, dilation=self.dilation))

    def kernel_transform(self, k: Kernel) -> Kernel:
        circular = self.padding_mode == "circular"
        geometry = transforms.conv_geometry(
            k, self.kernel_size, self.stride, self.padding, circular=circular, dilation=self.dilation
        )
        return self._weight_kernel(k, self.in_channels, self.out_channels, geometry)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding!r}, dilation={self.dilation}, padding_mode={self.padding_mode!r}, "
            + super().extra_repr()
        )


class Conv1d(_ConvNd):
    """1-d convolution, (N, C_in, L) -> (N, C_out, L'). See :class:`Conv2d`."""

    n_dims = 1


class Conv2d(_ConvNd):
    """2-d convolution, (N, C_in, H, W) -> (N, C_out, H', W'), fan_in = C_in · kh · kw.

    ``padding``: "same" (default; with stride > 1 as TensorFlow/JAX: ceil(n/stride) outputs, the odd extra
    row/column padded at the end), "valid", or an int on both sides; ``padding_mode`` "zeros" or "circular";
    ``dilation``: filter taps ``dilation`` positions apart (torch's and neural-tangents' rhs_dilation).
    Kernel: K'(s, s') = W_std² · mean_d K(s·stride + dilation·d, s'·stride + dilation·d) + b_std² (filter
    offsets d share no weights, so only equal offsets correlate), and Θ as for :class:`Linear`.
    """

    n_dims = 2


class Conv3d(_ConvNd):
    """3-d convolution, (N, C_in, D, H, W) -> (N, C_out, D', H', W'). See :class:`Conv2d`."""

    n_dims = 3
