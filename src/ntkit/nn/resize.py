"""``Resize``: nearest or linear interpolation of the spatial axes (as ``torch.nn.Upsample``), and its kernel map."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..errors import InvalidArgumentError
from ..infinite import spatial, transforms
from ..infinite.kernel_type import Kernel
from .layer import KernelLayer

__all__ = ["Resize"]

_MODES = ("nearest", "nearest-exact", "linear")
_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


class Resize(KernelLayer):
    """Interpolation of (N, C, *S) inputs to ``size`` (or by ``scale_factor``) along every spatial axis, as
    ``torch.nn.Upsample``/``F.interpolate``: ``mode`` "nearest", "nearest-exact" or "linear" (linear,
    bilinear or trilinear by the number of spatial axes), ``align_corners`` for "linear".

    Kernel (``transforms.separable_linear``): a fixed linear map A of the positions, K' = A K Aᵀ along each
    position axis (it mixes positions, so the full spatial covariance is needed). With masked inputs an output
    is masked where every input it interpolates (with a non-zero weight) is masked, as neural-tangents.
    """

    mixes_positions = True
    mask_rule = "resize"

    def __init__(
        self,
        size: int | tuple[int, ...] | None = None,
        scale_factor: float | tuple[float, ...] | None = None,
        mode: str = "nearest",
        align_corners: bool | None = None,
    ) -> None:
        super().__init__()
        if (size is None) == (scale_factor is None):
            raise InvalidArgumentError("give exactly one of size and scale_factor.")
        if mode not in _MODES:
            raise InvalidArgumentError(f"mode must be one of {_MODES}, got {mode!r}.")
        if align_corners is not None and mode != "linear":
            raise InvalidArgumentError("align_corners applies to mode='linear' only.")
        self.size, self.scale_factor, self.mode, self.align_corners = size, scale_factor, mode, align_corners

    def _per_axis(self, n: int) -> tuple[tuple[int, ...] | None, tuple[float, ...] | None]:
        size = None if self.size is None else (self.size,) * n if isinstance(self.size, int) else tuple(self.size)
        scale = self.scale_factor
        scale = None if scale is None else (float(scale),) * n if isinstance(scale, int | float) else tuple(scale)
        given = size if size is not None else scale
        if given is None or len(given) != n:
            raise InvalidArgumentError(f"Resize has sizes or factors {given} for {n} spatial axes.")
        return size, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size, scale = self._per_axis(x.ndim - 2)
        mode = _LINEAR[x.ndim - 2] if self.mode == "linear" else self.mode
        return F.interpolate(x, size=size, scale_factor=scale, mode=mode, align_corners=self.align_corners)

    def kernel_transform(self, k: Kernel) -> Kernel:
        size, scale = self._per_axis(k.n_spatial)
        matrices = spatial.interpolation_matrices(k.spatial_shape, size, scale, self.mode, self.align_corners)
        return transforms.separable_linear(k, matrices)

    def extra_repr(self) -> str:
        what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        return f"{what}, mode={self.mode!r}, align_corners={self.align_corners}"
