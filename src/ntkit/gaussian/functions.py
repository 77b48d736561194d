"""ψ(u): an elementwise function of the last Gaussian layer u, built from activations, sums and products.

Infinite-width recursions need, for the layer after a nonlinearity, Gaussian expectations of the function
that maps the last Gaussian pre-activation u to the current activations. Usually ψ is one activation. Two
activations in a row (φ2∘φ1, through :func:`ntkit.nn.compose`), a residual branch that adds an activation of u
to u itself (u + φ(u)), or branches multiplied together, give other functions of the same Gaussian, so their
kernels are the same expectations.

ψ is kept as a sum of terms, each an activation or the identity (None), so that for (u, v) ~ N(0, Λ)

    E[ψ(u) ψ(v)] = Σ_ij E[φ_i(u) φ_j(v)],   E[ψ'(u) ψ'(v)] = Σ_ij E[φ_i'(u) φ_j'(v)],   E[ψ(u)] = Σ_i E[φ_i(u)],

with the cross terms from :func:`ntkit.gaussian.quadrature.cross_nngp` / ``cross_ntk_factor`` (closed forms for pairs
of one family and Stein's lemma against the identity, else polar Gaussian quadrature, checked). A product, or
an activation applied after a sum, becomes one :class:`ntkit.nn.Elementwise` term (quadrature).
"""

from __future__ import annotations

import math

import torch

from .activations import Activation, Elementwise, compose
from .quadrature import cross_nngp, cross_ntk_factor

__all__ = ["GaussianFunction"]


class GaussianFunction:
    """ψ = Σ_i φ_i, each φ_i an :class:`~ntkit.nn.Activation` or None (the identity)."""

    def __init__(self, terms: tuple[Activation | None, ...]) -> None:
        self.terms = tuple(terms)

    @classmethod
    def identity(cls) -> GaussianFunction:
        return cls((None,))

    @classmethod
    def sum(cls, functions: tuple[GaussianFunction, ...]) -> GaussianFunction:
        return cls(tuple(t for f in functions for t in f.terms))

    @classmethod
    def product(cls, functions: tuple[GaussianFunction, ...]) -> GaussianFunction:
        def value(x: torch.Tensor) -> torch.Tensor:
            return math.prod((f.value(x) for f in functions), start=torch.ones_like(x))

        def derivative(x: torch.Tensor) -> torch.Tensor:  # the product rule
            values = [f.value(x) for f in functions]
            return sum(
                f.derivative(x) * math.prod((v for j, v in enumerate(values) if j != i), start=torch.ones_like(x))
                for i, f in enumerate(functions)
            )

        return cls((Elementwise(value, derivative=derivative),))

    def __repr__(self) -> str:
        return " + ".join("identity" if t is None else repr(t) for t in self.terms)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return sum(x if t is None else t.fn(x) for t in self.terms)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return sum(torch.ones_like(x) if t is None else t.derivative(x) for t in self.terms)

    def then(self, activation: Activation) -> GaussianFunction:
        """φ∘ψ, one term: the composition (closed-form folds, else quadrature) of ψ's single term and φ."""
        inner = self.terms[0] if len(self.terms) == 1 else Elementwise(self.value, derivative=self.derivative)
        return GaussianFunction((compose(inner, activation),))

    @property
    def uses_quadrature(self) -> bool:
        """Whether expectations may need quadrature (larger temporaries; for the memory plan)."""
        return len(self.terms) > 1 or not all(t is None or t.closed_form for t in self.terms)

    def nngp(self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
        """E[ψ(u) ψ(v)], broadcast shape."""
        return sum(cross_nngp(a, b, var1, cov, var2) for a in self.terms for b in self.terms)

    def ntk_factor(self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
        """E[ψ'(u) ψ'(v)], broadcast shape."""
        return sum(cross_ntk_factor(a, b, var1, cov, var2) for a in self.terms for b in self.terms)

    def nngp_and_ntk(
        self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor, ntk: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[ψ(u) ψ(v)], Θ·E[ψ'(u) ψ'(v)]) for the NTK Θ of u; one activation computes both together."""
        if len(self.terms) == 1 and self.terms[0] is not None:
            return self.terms[0].nngp_and_ntk(var1, cov, var2, ntk)
        return self.nngp(var1, cov, var2), ntk * self.ntk_factor(var1, cov, var2)

    def mean(self, var: torch.Tensor) -> torch.Tensor:
        """E[ψ(u)], u ~ N(0, var), shape of ``var``."""
        return sum(torch.zeros_like(var) if t is None else t.mean(var) for t in self.terms)
