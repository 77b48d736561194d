"""Elementwise activations that are torch modules and know their Gaussian expectations.

An activation φ enters the infinite-width recursions (theory.md section 4.1) through, for
(u, v) ~ N(0, [[var1, cov], [cov, var2]]):

- ``nngp(var1, cov, var2)``       T(Σ) = E[φ(u) φ(v)]          (the NNGP map)
- ``ntk_factor(var1, cov, var2)``  Ṫ(Σ) = E[φ'(u) φ'(v)]        (multiplies the NTK)
- ``mean(var)``                   E[φ(u)], u ~ N(0, var)        (for normalisation after φ)

All three take broadcastable tensors and work elementwise, so one call covers every pair of inputs
and every spatial position. They are differentiable, and finite at zero variance and at |ρ| = 1
(duplicate inputs), where naive formulas give NaN gradients.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Activation", "Erf", "ReLU"]


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """√max(x, 0) with gradient 0 (not ∞ or NaN) where x ≤ 0."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def clamp_cov(var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (cov clamped to |cov| ≤ √(var1 var2), √(var1 var2 − cov²)): round-off can push |ρ| past 1."""
    bound = safe_sqrt(var1 * var2)
    # torch.where, not minimum/maximum: at a tie (duplicate inputs) the gradient goes to cov, not half of it.
    cov = torch.where(cov > bound, bound, torch.where(cov < -bound, -bound, cov))
    return cov, safe_sqrt(var1 * var2 - cov * cov)


class Activation(nn.Module):
    """Base class: an elementwise φ (``fn``), its derivative and its Gaussian expectations."""

    #: True when nngp/ntk_factor/mean are closed forms (False: numerical quadrature).
    closed_form: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """φ'(x), elementwise (almost everywhere)."""
        raise NotImplementedError

    def nngp(self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def ntk_factor(self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mean(self, var: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ReLU(Activation):
    """φ(x) = max(x, 0). Arc-cosine kernel of degree 1 (Cho & Saul; theory.md 4.2):

    T = (√(v1 v2 − c²) + (π − ϑ) c) / 2π,  Ṫ = (π − ϑ) / 2π,  ϑ = atan2(√(v1 v2 − c²), c),  E φ(u) = √(v / 2π).
    """

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0).to(x.dtype)

    def nngp(self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
        cov, s = clamp_cov(var1, cov, var2)
        return (s + (math.pi - torch.atan2(s, cov)) * cov) / (2 * math.pi)

    def ntk_factor(self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
        cov, s = clamp_cov(var1, cov, var2)
        return (math.pi - torch.atan2(s, cov)) / (2 * math.pi)

    def mean(self, var: torch.Tensor) -> torch.Tensor:
        return safe_sqrt(var / (2 * math.pi))


class Erf(Activation):
    """φ(x) = a·erf(b x) + c (Williams 1997; theory.md 4.2), with u' = b u:

    T = a² (2/π) arcsin(2c' / √((1 + 2v1')(1 + 2v2'))) + c²,  Ṫ = a² b² (4/π) ((1 + 2v1')(1 + 2v2') − 4c'²)^(-1/2),
    E φ(u) = c.
    """

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0) -> None:
        super().__init__()
        self.a, self.b, self.c = a, b, c

    def extra_repr(self) -> str:
        return f"a={self.a}, b={self.b}, c={self.c}"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.erf(self.b * x) + self.c

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * self.b * 2 / math.sqrt(math.pi) * torch.exp(-((self.b * x) ** 2))

    def _scaled(self, var1, cov, var2):
        b2 = self.b**2
        cov, _ = clamp_cov(var1, cov, var2)
        return (1 + 2 * b2 * var1) * (1 + 2 * b2 * var2), 2 * b2 * cov

    def nngp(self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
        prod, two_c = self._scaled(var1, cov, var2)
        arg = torch.clamp(two_c / torch.sqrt(prod), -1.0, 1.0)
        return self.a**2 * (2 / math.pi) * torch.asin(arg) + self.c**2

    def ntk_factor(self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
        prod, two_c = self._scaled(var1, cov, var2)
        return self.a**2 * self.b**2 * (4 / math.pi) / torch.sqrt(prod - two_c**2)

    def mean(self, var: torch.Tensor) -> torch.Tensor:
        return torch.full_like(var, self.c)
