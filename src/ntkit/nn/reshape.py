"""``Flatten`` and ``Identity``."""

from __future__ import annotations

import torch

from ..infinite import transforms
from ..infinite.kernel_type import Kernel
from .layer import KernelLayer

__all__ = ["Flatten", "Identity"]


class Flatten(KernelLayer):
    """(N, C, *S) -> (N, C·|S|). Kernel: the mean over positions of K(s, s) (only the diagonal is needed)."""

    mask_rule = "flatten"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def kernel_transform(self, k: Kernel) -> Kernel:
        return transforms.flatten(k)


class Identity(KernelLayer):
    """y = x; the kernel is unchanged."""

    mask_rule = "elementwise"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def kernel_transform(self, k: Kernel) -> Kernel:
        return k
