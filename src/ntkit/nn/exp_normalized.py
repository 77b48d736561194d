"""``ExpNormalized``: neural-tangents' "Gaussian normalised" kernel map as a torch module, and its kernel map."""

from __future__ import annotations

import math

import torch

from .._validation import check_number
from ..infinite import transforms
from ..infinite.kernel_type import Kernel
from .layer import KernelLayer

__all__ = ["ExpNormalized"]


class ExpNormalized(KernelLayer):
    """y_c = σ · exp(√γ · x_c / σ + γ (shift − 1) / 2), σ = √(mean_c x_c²) per example and position
    (neural-tangents' ExpNormalized, the "Gaussian normalised" kernel of Shankar et al. 2020, made a finite layer).

    Kernel (theory.md §4.2): for a Gaussian layer u with K(x, x) = v, ρ = K(x, x')/√(v v'),

        K' = √(v v') · exp(γ (ρ + shift)),    Θ' = γ · Θ · exp(γ (ρ + shift)),

    exactly neural-tangents' map (its ``do_clip``: ρ is always clipped to [−1, 1], a round-off guard). In the
    limit σ = √v, so y_c = √v φ(u_c/√v) with φ(z) = exp(√γ z + γ(shift − 1)/2), and E[φ(z)φ(z')] =
    exp(γ(1 + ρ) + γ(shift − 1)) for unit normals of correlation ρ. ``gamma`` > 0. Masked positions stay masked
    (σ is per position), as neural-tangents.
    """

    mask_rule = "elementwise"

    def __init__(self, gamma: float = 1.0, shift: float = -1.0) -> None:
        super().__init__()
        self.gamma = check_number(gamma, "gamma", minimum=0.0, inclusive=False)
        self.shift = check_number(shift, "shift")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = x.square().mean(1, keepdim=True).sqrt()
        positive = sigma > 0
        safe = torch.where(positive, sigma, torch.ones_like(sigma))
        y = safe * torch.exp(math.sqrt(self.gamma) * x / safe + self.gamma * (self.shift - 1) / 2)
        return torch.where(positive, y, torch.zeros_like(y))

    def kernel_transform(self, k: Kernel) -> Kernel:
        return transforms.exp_normalized(k, gamma=self.gamma, shift=self.shift)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, shift={self.shift}"
