"""``LayerNorm`` over channels, and its kernel map (also after nonlinearities, unlike neural-tangents)."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_number, check_positive_int
from ..errors import ShapeError, UnsupportedError
from ..infinite import transforms
from ..infinite.kernel_type import Kernel
from ._layer import KernelLayer

__all__ = ["LayerNorm"]


class LayerNorm(KernelLayer):
    """Normalisation over the channel axis (dim 1; the features of (N, C) inputs) at each position:

        y = (x − mean_c x) / √(var_c x + eps)   [· γ + β with ``elementwise_affine``, γ = 1, β = 0 at init]

    Kernel (see ``transforms.layer_norm``): K' = (K − m1 m2)/√(s1 s2) with the channel means m and variances
    s = K(x, x) − m² + eps of each example, so inputs after a nonlinearity are handled exactly. The affine
    parameters are trained directly (no width scaling) and add K' + 1 to Θ.
    """

    def __init__(self, normalized_shape, elementwise_affine: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if len(shape) != 1:
            raise UnsupportedError(
                f"ntkit's LayerNorm normalises over channels: normalized_shape is the channel count, got {shape}."
            )
        self.channels = check_positive_int(shape[0], "normalized_shape")
        self.eps = check_number(eps, "eps", minimum=0.0)
        self.elementwise_affine = elementwise_affine
        self.weight = nn.Parameter(torch.ones(self.channels)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(self.channels)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ShapeError(f"LayerNorm({self.channels}) got {x.shape[1]} channels (input shape {tuple(x.shape)}).")
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        y = (x - mean) / torch.sqrt(var + self.eps)
        if self.weight is None:
            return y
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return y * self.weight.reshape(shape) + self.bias.reshape(shape)

    def kernel_transform(self, k: Kernel) -> Kernel:
        if k.channels != self.channels:
            raise ShapeError(f"LayerNorm({self.channels}) follows a layer with {k.channels} channels.")
        return transforms.layer_norm(k, eps=self.eps, affine=self.elementwise_affine)

    def extra_repr(self) -> str:
        return f"{self.channels}, elementwise_affine={self.elementwise_affine}, eps={self.eps}"
