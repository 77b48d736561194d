"""Features of an activation's dual kernels: from features ψ of a Gaussian layer's kernel K (K(x, y) ≈ ψ(x)·ψ(y)),
features f, f' with f(x)·f(y) ≈ T(K)(x, y) = E[φ(u) φ(u')] and f'(x)·f'(y) ≈ Ṫ(K)(x, y) = E[φ'(u) φ'(u')],
(u, u') ~ N(0, K restricted to x, y) (theory.md §4.1 and §6.1; docs/approx.md).

- :class:`RandomActivationFeatures` (method "random_features"): f(x) = φ(Gᵀψ(x))/√m, f'(x) = φ'(Gᵀψ(x))/√m with
  G (dim ψ, m) standard normal: given ψ, each coordinate pair (gᵀψ(x), gᵀψ(y)) is exactly N(0, K̂), so
  E[f(x)·f(y)] = T(K̂). For the ReLU family these are the arc-cosine random features of Cho & Saul 2009; for
  any other activation the Gaussian-process random features of the same expectation.
- :class:`HermiteSketchFeatures` (method "sketch"): the dual expansion T = Σ_j c_j(v) c_j(v') ρ^j (``hermite``)
  with ρ^j = (ψ̂(x)·ψ̂(y))^j replaced by PolySketch features of the unit vector ψ̂ = ψ/|ψ| and v = |ψ|²
  (Zandieh et al. 2021 for the arc-cosine kernels; Han et al. 2022 for general activations):

      f(x) = [c_0(v), c_1(v) C(ψ̂), c_2(v) S_2(ψ̂), ..., c_q(v) S_q(ψ̂), √r(v) S_{q+1}(ψ̂)],

  where r(v) = E[φ(√v z)²] − Σ_{j≤q} c_j(v)² ≥ 0 is the tail of the series, carried by one extra degree: the
  diagonal f(x)·f(x) then has the exact expectation T(v, v, v), and off the diagonal the remaining bias is at
  most 2√(r(v) r(v'))·|ρ|^{q+1} (Cauchy-Schwarz on the tail). Unbiased for that modified series given ψ.
"""

from __future__ import annotations

import math

import torch

from ..gaussian.activations import Activation
from .hermite import coefficients
from .sketches import CountSketch, PolySketch

__all__ = ["ActivationFeatures", "HermiteSketchFeatures", "RandomActivationFeatures"]


class ActivationFeatures:
    """(B, in_dim) features of K -> (f, f' or None), each (B, out_dim)."""

    out_dim: int

    def __call__(self, psi: torch.Tensor, derivative: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    @property
    def width(self) -> int:
        """Largest intermediate width per example (for batch sizes under the memory budget)."""
        return self.out_dim


class RandomActivationFeatures(ActivationFeatures):
    """φ(Gᵀψ)/√m and φ'(Gᵀψ)/√m (module doc)."""

    def __init__(self, act: Activation, in_dim: int, out_dim: int, generator: torch.Generator) -> None:
        self.act, self.out_dim = act, out_dim
        self.projection = torch.randn((in_dim, out_dim), generator=generator)

    def __call__(self, psi: torch.Tensor, derivative: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        u = psi @ self.projection.to(device=psi.device, dtype=psi.dtype)
        scale = 1 / math.sqrt(self.out_dim)
        return self.act.fn(u) * scale, self.act.derivative(u) * scale if derivative else None


class HermiteSketchFeatures(ActivationFeatures):
    """The truncated dual expansion with PolySketch features (module doc); ``degree`` = q."""

    def __init__(self, act: Activation, in_dim: int, out_dim: int, degree: int, generator: torch.Generator) -> None:
        self.act, self.out_dim, self.degree = act, out_dim, degree
        block = (out_dim - 1) // (degree + 1)  # degrees 2..q+1; degree 1 takes the remainder
        self.linear = CountSketch(in_dim, out_dim - 1 - degree * block, generator)
        self.powers = PolySketch(in_dim, block, degree + 1, generator)

    @property
    def width(self) -> int:
        return 3 * self.out_dim  # the sketched powers, their FFTs and the output

    def __call__(self, psi: torch.Tensor, derivative: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        var = (psi * psi).sum(1)
        unit = psi / var.sqrt().clamp_min(torch.finfo(psi.dtype).tiny)[:, None]
        blocks = [self.linear(unit), *self.powers(unit)[1:]]  # degrees 1..q+1, each (B, dim_j)
        f = self._combine(blocks, var, derivative=False)
        return f, self._combine(blocks, var, derivative=True) if derivative else None

    def _combine(self, blocks: list[torch.Tensor], var: torch.Tensor, *, derivative: bool) -> torch.Tensor:
        c, second_moment = coefficients(self.act, var, self.degree, derivative=derivative)
        tail = (second_moment - (c * c).sum(1)).clamp_min(0).sqrt()
        weights = torch.cat([c[:, 1:], tail[:, None]], dim=1)  # (B, q + 1) for degrees 1..q+1
        return torch.cat([c[:, :1]] + [w[:, None] * s for w, s in zip(weights.unbind(1), blocks, strict=True)], 1)
