"""``Dropout`` and its train-mode kernel."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..errors import InvalidArgumentError
from ..infinite import transforms
from ..infinite.kernel_type import Kernel
from .layer import KernelLayer

__all__ = ["Dropout"]


class Dropout(KernelLayer):
    """Zeroes each unit with probability ``p`` and scales the rest by 1/(1 − p), in training mode.

    Kernel in training mode (the module's default): an example's own variances scale by 1/(1 − p) (one mask),
    covariances between different examples are unchanged (independent masks). In eval mode both the module
    and its kernel are the identity.
    """

    mask_rule = "elementwise"

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise InvalidArgumentError(f"dropout probability must be in [0, 1), got {p}.")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, self.training)

    def kernel_transform(self, k: Kernel) -> Kernel:
        return transforms.dropout(k, self.p) if self.training and self.p > 0 else k

    def extra_repr(self) -> str:
        return f"p={self.p}"
