"""Average pooling layers and their kernel maps (they need the full spatial covariance)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .._validation import as_tuple
from ..infinite import transforms
from ..infinite.kernel_type import Kernel
from ._layer import KernelLayer

__all__ = ["AvgPool1d", "AvgPool2d", "GlobalAvgPool"]


class _AvgPoolNd(KernelLayer):
    n_dims: int
    mixes_positions = True

    def __init__(self, kernel_size, stride=None, padding=0) -> None:
        super().__init__()
        self.kernel_size = as_tuple(kernel_size, self.n_dims, "kernel_size")
        self.stride = self.kernel_size if stride is None else as_tuple(stride, self.n_dims, "stride")
        self.padding = as_tuple(padding, self.n_dims, "padding", minimum=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.avg_pool1d if self.n_dims == 1 else F.avg_pool2d
        return pool(x, self.kernel_size, self.stride, self.padding)

    def kernel_transform(self, k: Kernel) -> Kernel:
        return transforms.avg_pool(k, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool1d(_AvgPoolNd):
    """Average pooling over windows of a (N, C, L) input, zero padding counted (as torch.nn.AvgPool1d)."""

    n_dims = 1


class AvgPool2d(_AvgPoolNd):
    """Average pooling over windows of a (N, C, H, W) input, zero padding counted (as torch.nn.AvgPool2d).

    Kernel: Cov[mean_a x(a), mean_a' y(a')] = mean_a mean_a' K(a, a'), over the two windows.
    """

    n_dims = 2


class GlobalAvgPool(KernelLayer):
    """The mean over all positions: (N, C, *S) -> (N, C). Kernel: the mean of K(s, s') over all (s, s')."""

    mixes_positions = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=tuple(range(2, x.ndim)))

    def kernel_transform(self, k: Kernel) -> Kernel:
        return transforms.global_avg_pool(k)
