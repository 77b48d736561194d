"""``LayerNorm`` over channels (and trailing spatial axes), and its kernel map (also after nonlinearities, unlike
neural-tangents)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._validation import check_number, check_positive_int
from ..errors import InvalidArgumentError, ShapeError
from ..infinite import transforms
from ..infinite.kernel_type import Kernel
from .layer import KernelLayer

__all__ = ["LayerNorm"]


class LayerNorm(KernelLayer):
    """Normalisation over the channel axis (dim 1; the features of (N, C) inputs), and with
    ``normalized_shape = (C, *S_A)`` also over the trailing spatial axes A of that shape (as
    ``torch.nn.LayerNorm([C, H, W])`` normalises an (N, C, H, W) input; ``(C, H, W)`` is also what
    ``torch.nn.GroupNorm(1, C)`` normalises):

        y = (x − mean x) / √(var x + eps)   [· γ + β with ``elementwise_affine``, γ = 1, β = 0 at init]

    with mean and variance over the channels (and A) at each remaining position; γ and β have the shape
    ``normalized_shape``.

    Kernel (see ``transforms.layer_norm``): K' = (K − μ m' − m μ' + μ μ')/√(s s') with the channel means m,
    their mean μ over A and the variances s over channels and A of each example (μ = m over channels alone),
    so inputs after a nonlinearity are handled exactly. The affine parameters are trained directly (no width
    scaling) and add K' + 1 to Θ (at equal positions along A when they have a shape along A). With masked inputs
    (``nk.kernel(..., mask_constant=)``) μ and s are over the unmasked positions of A, as neural-tangents.
    """

    def __init__(
        self, normalized_shape: int | Sequence[int], elementwise_affine: bool = False, eps: float = 1e-5
    ) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if not shape or any(not isinstance(n, int) or n < 1 for n in shape):
            raise InvalidArgumentError(
                "normalized_shape must be the channel count C or (C, *trailing spatial sizes), "
                f"got {normalized_shape!r}."
            )
        self.normalized_shape = shape
        self.channels = check_positive_int(shape[0], "normalized_shape")
        self.eps = check_number(eps, "eps", minimum=0.0)
        self.elementwise_affine = elementwise_affine
        self.weight = nn.Parameter(torch.ones(shape)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(shape)) if elementwise_affine else None

    mask_rule = "elementwise"  # the mask is kept; statistics over spatial axes leave masked positions out

    def _check(self, channels: int, spatial_shape: tuple[int, ...]) -> None:
        n_axes = len(self.normalized_shape) - 1
        got = (channels, *spatial_shape[len(spatial_shape) - n_axes :]) if n_axes <= len(spatial_shape) else None
        if got != self.normalized_shape:
            raise ShapeError(
                f"LayerNorm{self.normalized_shape} got inputs with {channels} channels and spatial shape "
                f"{spatial_shape}: normalized_shape is (C, *the last spatial sizes)."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x.shape[1], tuple(x.shape[2:]))
        dims = (1, *range(x.ndim - len(self.normalized_shape) + 1, x.ndim))
        mean = x.mean(dim=dims, keepdim=True)
        var = x.var(dim=dims, keepdim=True, unbiased=False)
        y = (x - mean) / torch.sqrt(var + self.eps)
        if self.weight is None or self.bias is None:
            return y
        shape = (1, self.channels) + (1,) * (x.ndim - 1 - len(self.normalized_shape)) + self.normalized_shape[1:]
        return y * self.weight.reshape(shape) + self.bias.reshape(shape)

    def kernel_transform(self, k: Kernel) -> Kernel:
        self._check(k.channels, k.spatial_shape)
        n_axes = len(self.normalized_shape) - 1
        affine = None if not self.elementwise_affine else "position" if n_axes else "channel"
        return transforms.layer_norm(k, eps=self.eps, affine=affine, n_axes=n_axes)

    def extra_repr(self) -> str:
        shape = self.channels if len(self.normalized_shape) == 1 else self.normalized_shape
        return f"{shape}, elementwise_affine={self.elementwise_affine}, eps={self.eps}"
