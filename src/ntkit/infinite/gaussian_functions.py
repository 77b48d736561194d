"""ψ(u): an elementwise function of the last Gaussian layer u, built from activations, sums and products.

Infinite-width recursions need, for the layer after a nonlinearity, Gaussian expectations of the function
that maps the last Gaussian pre-activation u to the current activations. Usually ψ is one activation, with
closed forms. Two activations in a row, or a residual branch that adds an activation of u to u itself, give
a longer ψ (φ2∘φ1, u + φ(u), ...): it is still a function of one Gaussian, so its kernels are the same
expectations, computed here by quadrature (``_quadrature``; accuracy measured in the tests).

For (u, v) ~ N(0, [[var1, cov], [cov, var2]]) every ψ provides, elementwise on broadcastable tensors,
``nngp`` = E[ψ(u) ψ(v)], ``ntk_factor`` = E[ψ'(u) ψ'(v)] and ``mean`` = E[ψ(u)].
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # only for annotations: ntkit.nn builds on this package, not the reverse
    from ..nn.activations import Activation

from . import _quadrature

__all__ = ["Activations", "GaussianFunction", "Product", "Sum"]


class GaussianFunction:
    """Base class: ψ with ``value`` and ``derivative``; expectations by quadrature unless overridden."""

    def value(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def nngp(self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
        return _quadrature.pair_expectation(self.value, self.value, var1, cov, var2)

    def ntk_factor(self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
        return _quadrature.pair_expectation(self.derivative, self.derivative, var1, cov, var2)

    def mean(self, var: torch.Tensor) -> torch.Tensor:
        return _quadrature.expectation(self.value, var)

    def then(self, activation: Activation) -> Activations:
        """φ∘ψ."""
        return Activations((activation,), inner=self)

    @property
    def uses_quadrature(self) -> bool:
        return True


class Activations(GaussianFunction):
    """ψ = φ_k ∘ ... ∘ φ_1 ∘ inner (``inner=None``: the identity; no activations: ψ = inner or the identity).

    The identity and a single activation of u use closed forms (or the activation's own rule).
    """

    def __init__(self, activations: tuple[Activation, ...] = (), inner: GaussianFunction | None = None) -> None:
        self.activations = tuple(activations)
        self.inner = inner

    def __repr__(self) -> str:
        names = [type(a).__name__ for a in self.activations]
        return "∘".join(reversed(names or ["identity"])) + (f"∘({self.inner!r})" if self.inner is not None else "")

    def then(self, activation: Activation) -> Activations:
        return Activations((*self.activations, activation), inner=self.inner)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        if self.inner is not None:
            x = self.inner.value(x)
        for act in self.activations:
            x = act.fn(x)
        return x

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        d = self.inner.derivative(x) if self.inner is not None else torch.ones_like(x)
        if self.inner is not None:
            x = self.inner.value(x)
        for act in self.activations:
            d = d * act.derivative(x)
            x = act.fn(x)
        return d

    @property
    def is_identity(self) -> bool:
        return self.inner is None and not self.activations

    @property
    def _single(self) -> Activation | None:
        return self.activations[0] if self.inner is None and len(self.activations) == 1 else None

    @property
    def uses_quadrature(self) -> bool:
        return not (self.is_identity or self._single is not None)

    def nngp(self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
        if self.is_identity:
            return cov
        if self._single is not None:
            return self._single.nngp(var1, cov, var2)
        return super().nngp(var1, cov, var2)

    def ntk_factor(self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
        if self.is_identity:
            return torch.ones_like(cov)
        if self._single is not None:
            return self._single.ntk_factor(var1, cov, var2)
        return super().ntk_factor(var1, cov, var2)

    def mean(self, var: torch.Tensor) -> torch.Tensor:
        if self.is_identity:
            return torch.zeros_like(var)
        if self._single is not None:
            return self._single.mean(var)
        return super().mean(var)


class Sum(GaussianFunction):
    """ψ = Σ_i ψ_i (parallel branches of the same Gaussian added: a residual x + φ(x))."""

    def __init__(self, terms: tuple[GaussianFunction, ...]) -> None:
        self.terms = tuple(terms)

    def __repr__(self) -> str:
        return " + ".join(repr(t) for t in self.terms)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return sum(t.value(x) for t in self.terms)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return sum(t.derivative(x) for t in self.terms)

    def mean(self, var: torch.Tensor) -> torch.Tensor:
        return sum(t.mean(var) for t in self.terms)


class Product(GaussianFunction):
    """ψ = Π_i ψ_i (parallel branches of the same Gaussian multiplied elementwise)."""

    def __init__(self, factors: tuple[GaussianFunction, ...]) -> None:
        self.factors = tuple(factors)

    def __repr__(self) -> str:
        return " · ".join(f"({f!r})" for f in self.factors)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return math.prod((f.value(x) for f in self.factors), start=torch.ones_like(x))

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        values = [f.value(x) for f in self.factors]
        total = torch.zeros_like(x)
        for i, f in enumerate(self.factors):
            others = math.prod((v for j, v in enumerate(values) if j != i), start=torch.ones_like(x))
            total = total + f.derivative(x) * others
        return total
