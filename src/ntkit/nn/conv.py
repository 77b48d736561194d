"""``Conv1d``, ``Conv2d``, ``Conv3d``: convolutions (channels first) in the NTK or standard parameterization, and
their kernel maps."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from .._validation import Std, as_tuple, check_positive_int
from ..errors import InvalidArgumentError, ShapeError
from ..infinite import spatial, transforms
from ..infinite.kernel_type import Kernel
from .layer import WeightLayer

__all__ = [
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvLocal1d",
    "ConvLocal2d",
    "ConvLocal3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
]

_CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class _ConvNd(WeightLayer):
    n_dims: int
    mask_rule: str | None = "convolution"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        *,
        stride: int | tuple[int, ...] = 1,
        padding: int | str = "same",
        dilation: int | tuple[int, ...] = 1,
        padding_mode: str = "zeros",
        W_std: Std = 1.0,
        b_std: Std | None = 0.0,
        parameterization: str = "ntk",
        s: tuple[int, int] = (1, 1),
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
        weight_shape, bias_shape = self._parameter_shapes()
        super().__init__(
            weight_shape,
            W_std=W_std,
            b_std=b_std,
            parameterization=parameterization,
            bias_shape=bias_shape,
            fan_in=in_channels * math.prod(self.kernel_size),
            s=s,
        )

    def _parameter_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The shapes of the weight and the bias."""
        return (self.out_channels, self.in_channels, *self.kernel_size), (self.out_channels,)

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """x padded as ``padding`` and ``padding_mode`` say."""
        pads = spatial.conv_paddings(tuple(x.shape[2:]), self.kernel_size, self.stride, self.padding, self.dilation)
        flat = [p for pair in reversed(pads) for p in pair]  # F.pad lists the last axis first
        if any(flat):
            x = F.pad(x, flat, mode="circular" if self.padding_mode == "circular" else "constant")
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._padded(x)
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


class _ConvLocalNd(_ConvNd):
    """Locally connected: a convolution whose filters are not shared, one per output position."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        input_size: int | tuple[int, ...],
        *,
        stride: int | tuple[int, ...] = 1,
        padding: int | str = "same",
        padding_mode: str = "zeros",
        W_std: Std = 1.0,
        b_std: Std | None = 0.0,
        parameterization: str = "ntk",
        s: tuple[int, int] = (1, 1),
    ) -> None:
        self.input_size = as_tuple(input_size, self.n_dims, "input_size")
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            padding_mode=padding_mode,
            W_std=W_std,
            b_std=b_std,
            parameterization=parameterization,
            s=s,
        )

    def _output_size(self) -> tuple[int, ...]:
        pads = spatial.conv_paddings(self.input_size, self.kernel_size, self.stride, self.padding)
        return tuple(
            (n + before + after - k) // s + 1
            for n, (before, after), k, s in zip(self.input_size, pads, self.kernel_size, self.stride, strict=True)
        )

    def _parameter_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        out = self._output_size()
        if min(out) < 1:
            raise InvalidArgumentError(f"input_size {self.input_size} is smaller than the filter {self.kernel_size}.")
        return (self.out_channels, self.in_channels, *self.kernel_size, *out), (self.out_channels, *out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.input_size:
            raise ShapeError(
                f"{type(self).__name__} was built for inputs of spatial size {self.input_size}, got {tuple(x.shape)}."
            )
        patches = self._padded(x)
        for i in range(self.n_dims):  # (N, C, *S_out, *filter)
            patches = patches.unfold(2 + i, self.kernel_size[i], self.stride[i])
        n = self.n_dims
        positions, offsets = "".join("pqr"[:n]), "".join("uvw"[:n])
        y = torch.einsum(f"nc{positions}{offsets},oc{offsets}{positions}->no{positions}", patches, self.weight)
        return self._finish(y)

    def kernel_transform(self, k: Kernel) -> Kernel:
        if k.spatial_shape != self.input_size:
            raise ShapeError(
                f"{type(self).__name__} was built for inputs of spatial size {self.input_size}, "
                f"got a layer with spatial shape {k.spatial_shape}."
            )
        return transforms.unshared(super().kernel_transform(k))

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, " + super().extra_repr()


class ConvLocal1d(_ConvLocalNd):
    """Locally connected 1-d layer, (N, C_in, L) -> (N, C_out, L'). See :class:`ConvLocal2d`."""

    n_dims = 1


class ConvLocal2d(_ConvLocalNd):
    """Locally connected 2-d layer (neural-tangents' ConvLocal): a :class:`Conv2d` whose filter and bias differ at
    every output position, so it is built for one ``input_size`` (H, W). Weight (out, in, kh, kw, H', W'),
    bias (out, H', W'); fan_in = in · kh · kw.

    Kernel: at equal positions that of :class:`Conv2d`; outputs at different positions have independent
    weights, so their covariances (and NTK) vanish: K'(p, p') = 0 for p ≠ p'.
    """

    n_dims = 2


class ConvLocal3d(_ConvLocalNd):
    """Locally connected 3-d layer, (N, C_in, D, H, W) -> (N, C_out, D', H', W'). See :class:`ConvLocal2d`."""

    n_dims = 3


class _ConvTransposeNd(_ConvNd):
    """Transposed convolution: the convolution (stride 1) of the input dilated by ``stride`` and padded."""

    mask_rule = "transposed_convolution"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        *,
        stride: int | tuple[int, ...] = 1,
        padding: int | str = "valid",
        padding_mode: str = "zeros",
        W_std: Std = 1.0,
        b_std: Std | None = 0.0,
        parameterization: str = "ntk",
        s: tuple[int, int] = (1, 1),
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            padding_mode=padding_mode,
            W_std=W_std,
            b_std=b_std,
            parameterization=parameterization,
            s=s,
        )
        if isinstance(padding, int) and any(padding > k - 1 for k in self.kernel_size):
            raise InvalidArgumentError(
                f"padding of a transposed convolution must be at most kernel_size - 1, got {padding} for "
                f"kernel_size {self.kernel_size}."
            )
        if padding_mode == "circular" and (
            padding != "same" or any(k < s for k, s in zip(self.kernel_size, self.stride, strict=True))
        ):
            raise InvalidArgumentError(
                "a circular transposed convolution (neural-tangents' CIRCULAR) has padding='same' and "
                f"kernel_size >= stride on every axis; got padding={padding!r}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}."
            )

    @property
    def circular(self) -> bool:
        return self.padding_mode == "circular"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = [n * s for n, s in zip(x.shape[2:], self.stride, strict=True)]
        x = spatial.dilate_trailing(x, list(self.stride))
        padding = "valid" if self.circular else self.padding
        pads = [spatial.transpose_padding(k, s, padding) for k, s in zip(self.kernel_size, self.stride, strict=True)]
        y = _CONVS[self.n_dims](F.pad(x, [p for pair in reversed(pads) for p in pair]), self.weight)
        if self.circular:
            for i, size in enumerate(sizes):
                y = spatial.wrap_around(y, 2 + i, size)
        return self._finish(y)

    def kernel_transform(self, k: Kernel) -> Kernel:
        geometry = transforms.transposed_conv_geometry(
            k, self.kernel_size, self.stride, self.padding, circular=self.circular
        )
        return self._weight_kernel(k, self.in_channels, self.out_channels, geometry)


class ConvTranspose1d(_ConvTransposeNd):
    """Transposed 1-d convolution, (N, C_in, L) -> (N, C_out, L'). See :class:`ConvTranspose2d`."""

    n_dims = 1


class ConvTranspose2d(_ConvTransposeNd):
    """Transposed 2-d convolution (neural-tangents' ConvTranspose, JAX's lax.conv_transpose): the input dilated
    by ``stride`` (stride − 1 zeros between positions), padded and convolved with stride 1; weight
    (out, in, kh, kw), fan_in = in · kh · kw (as neural-tangents). ``padding``: "valid" (default; JAX's),
    "same" (n·stride outputs), or an int p as torch.nn.ConvTranspose2d ((n − 1)·stride − 2p + k outputs).

    Kernel: the :class:`Conv2d` map applied to the dilated, padded input kernel (whose inserted positions have
    zero covariance): K'(s, s') = W_std² · mean_d K̃(s + d, s' + d) + b_std².
    """

    n_dims = 2


class ConvTranspose3d(_ConvTransposeNd):
    """Transposed 3-d convolution, (N, C_in, D, H, W) -> (N, C_out, D', H', W'). See :class:`ConvTranspose2d`."""

    n_dims = 3
