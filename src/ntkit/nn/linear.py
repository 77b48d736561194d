"""``Linear``: a dense layer in the NTK or standard parameterization, and its kernel map."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .._validation import Std, check_positive_int
from ..infinite.kernel_type import Kernel
from .layer import WeightLayer

__all__ = ["Linear"]


class Linear(WeightLayer):
    """y = x Wᵀ scaled by the parameterization, plus bias: (N, in_features) -> (N, out_features).

    Kernel (theory.md §4.1, §4.4): K' = W_std² K + b_std²; NTK parameterization Θ' = K' + W_std² Θ; standard
    parameterization Θ' = in_features·K + [bias] + W_std² Θ, normalised by the width in ``nk.kernel`` (4.4).
    ``s = (s_in, s_out)``: the standard parameterization's width multiplier (weight (s_out·out_features,
    s_in·in_features), y = x Wᵀ/√s_in + b; the kernels are those of the base widths, as neural-tangents').
    """

    mask_rule = "elementwise"  # a masked example (all features masked) stays masked

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        W_std: Std = 1.0,
        b_std: Std | None = 0.0,
        parameterization: str = "ntk",
        s: tuple[int, int] = (1, 1),
    ) -> None:
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        super().__init__((out_features, in_features), W_std=W_std, b_std=b_std, parameterization=parameterization, s=s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(F.linear(x, self.weight))

    def kernel_transform(self, k: Kernel) -> Kernel:
        return self._weight_kernel(k, self.in_features, self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, " + super().extra_repr()
