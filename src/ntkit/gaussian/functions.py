"""ψ(u): an elementwise function of the last Gaussian layer u, built from activations, sums and products.

Infinite-width recursions need, for the layer after a nonlinearity, Gaussian expectations of the function
that maps the last Gaussian pre-activation u to the current activations. Usually ψ is one activation. Two
activations in a row (φ2∘φ1, through :func:`ntkit.nn.compose`), a residual branch that adds an activation of u
to u itself (u + φ(u)), or branches multiplied together, give other functions of the same Gaussian, so their
kernels are the same expectations.

ψ is kept as a sum of terms, each an activation or the identity (None), so that for (u, v) ~ N(0, Λ)

    E[ψ(u) ψ(v)] = Σ_ij E[φ_i(u) φ_j(v)],   E[ψ'(u) ψ'(v)] = Σ_ij E[φ_i'(u) φ_j'(v)],   E[ψ(u)] = Σ_i E[φ_i(u)],

with the cross terms from :func:`cross_nngp` / :func:`cross_ntk_factor` (below: closed forms for pairs of one
family and Stein's lemma against the identity, else polar Gaussian quadrature, checked). A product, or
an activation applied after a sum, becomes one :class:`ntkit.nn.Elementwise` term (quadrature).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TypeAlias, cast

import torch
from torch import nn

from .activations import Activation, Elementwise, compose
from .quadrature import DEFAULT_DEGREE, DEFAULT_TOLERANCE, gaussian_cross
from .stable import broadcast_shape, is_identity

#: What the cross terms take for each side: an activation, or the identity (None or torch.nn.Identity).
ActivationArg: TypeAlias = Activation | nn.Identity | None

__all__ = ["GaussianFunction", "cross_nngp", "cross_ntk_factor"]


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
            return _total(
                f.derivative(x) * math.prod((v for j, v in enumerate(values) if j != i), start=torch.ones_like(x))
                for i, f in enumerate(functions)
            )

        return cls((Elementwise(value, derivative=derivative),))

    def __repr__(self) -> str:
        return " + ".join("identity" if t is None else repr(t) for t in self.terms)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return _total(x if t is None else t.fn(x) for t in self.terms)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return _total(torch.ones_like(x) if t is None else t.derivative(x) for t in self.terms)

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
        return _total(cross_nngp(a, b, var1, cov, var2) for a in self.terms for b in self.terms)

    def ntk_factor(self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
        """E[ψ'(u) ψ'(v)], broadcast shape."""
        return _total(cross_ntk_factor(a, b, var1, cov, var2) for a in self.terms for b in self.terms)

    def nngp_and_ntk(
        self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor, ntk: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[ψ(u) ψ(v)], Θ·E[ψ'(u) ψ'(v)]) for the NTK Θ of u; one activation computes both together."""
        if len(self.terms) == 1 and self.terms[0] is not None:
            return self.terms[0].nngp_and_ntk(var1, cov, var2, ntk)
        return self.nngp(var1, cov, var2), ntk * self.ntk_factor(var1, cov, var2)

    def mean(self, var: torch.Tensor) -> torch.Tensor:
        """E[ψ(u)], u ~ N(0, var), shape of ``var``."""
        return _total(torch.zeros_like(var) if t is None else t.mean(var) for t in self.terms)


# --------------------------------------------------------------------------------------------- cross terms


def cross_nngp(
    act1: ActivationArg, act2: ActivationArg, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor
) -> torch.Tensor:
    """E[φ1(u) φ2(v)] for (u, v) ~ N(0, [[var1, cov], [cov, var2]]), elementwise on broadcastable tensors.

    ``act1``, ``act2``: :class:`~ntkit.nn.Activation` instances, or ``None`` / ``torch.nn.Identity`` for the
    identity. Used for sums of elementwise branches of one Gaussian (a residual x + φ(x) is the pair
    (identity, φ)): the NNGP of φ1(h) + φ2(h) is Σ_ij cross_nngp(φi, φj).

    Rules, in order: both identity → cov; one identity → E[u φ(v)] = cov·E[φ'(v)] (Stein's lemma, or its
    jump-aware form for Sign, or quadrature); a pair with a joint closed form (ABReLU family, Erf family,
    Sin/Cos/RBF, Exp, Gaussian, polynomials, an activation with itself) → that; else 2-D quadrature at the
    finer of the two activations' degrees and the stricter of their tolerances.
    """
    return _cross(act1, act2, var1, cov, var2, derivative=False)


def cross_ntk_factor(
    act1: ActivationArg, act2: ActivationArg, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor
) -> torch.Tensor:
    """E[φ1'(u) φ2'(v)] (a.e. derivatives; the identity's is 1), same arguments and rules as :func:`cross_nngp`.

    The NTK of φ1(h) + φ2(h) is Θ_h · Σ_ij cross_ntk_factor(φi, φj).
    """
    return _cross(act1, act2, var1, cov, var2, derivative=True)


def _cross(
    arg1: ActivationArg,
    arg2: ActivationArg,
    var1: torch.Tensor,
    cov: torch.Tensor,
    var2: torch.Tensor,
    *,
    derivative: bool,
) -> torch.Tensor:
    var1, cov, var2 = (torch.as_tensor(t) for t in (var1, cov, var2))
    id1, id2 = is_identity(arg1), is_identity(arg2)
    if id1 and id2:
        if derivative:
            return torch.ones(_shape(var1, cov, var2), dtype=cov.dtype, device=cov.device)
        return _broadcast(cov, var1, var2)
    if id1 or id2:
        act, var = (cast(Activation, arg2), var2) if id1 else (cast(Activation, arg1), var1)
        one_sided = act.mean_derivative(var) if derivative else act.identity_cross(cov, var)
        return _broadcast(one_sided, var1, cov, var2)
    act1, act2 = cast(Activation, arg1), cast(Activation, arg2)  # neither is the identity
    if act1 is act2:
        return act1.ntk_factor(var1, cov, var2) if derivative else act1.nngp(var1, cov, var2)
    joint = act1.joint_expectation(act2, var1, cov, var2, derivative=derivative)
    if joint is None:
        joint = act2.joint_expectation(act1, var2, cov, var1, derivative=derivative)
    if joint is not None:
        return joint
    f, g = (act1.derivative, act2.derivative) if derivative else (act1.fn, act2.fn)
    degree = max(getattr(act1, "degree", DEFAULT_DEGREE), getattr(act2, "degree", DEFAULT_DEGREE))
    tolerances = [t for t in (getattr(a, "tolerance", DEFAULT_TOLERANCE) for a in (act1, act2)) if t is not None]
    return gaussian_cross(
        f,
        g,
        var1,
        cov,
        var2,
        degree=degree,
        quadrature_budget=getattr(act1, "quadrature_budget", None),
        tolerance=min(tolerances, default=None),
    )


def _shape(*ts: torch.Tensor | float) -> torch.Size:
    """The broadcast shape of tensors (numbers count as 0-dim)."""
    return broadcast_shape(*(torch.as_tensor(t).shape for t in ts))


def _broadcast(out: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
    shape = _shape(out, *others)
    return out if out.shape == shape else out.expand(shape)


def _total(values: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of one or more tensors (``sum``, typed: its start 0 is never returned alone)."""
    return cast(torch.Tensor, sum(values))
