"""Elementwise activations that are torch modules and know their Gaussian expectations.

An activation φ enters the infinite-width recursions (theory.md §4.1-4.2) through, for
(u, v) ~ N(0, [[var1, cov], [cov, var2]]):

- ``nngp(var1, cov, var2)``       T(Σ) = E[φ(u) φ(v)]          (the NNGP map)
- ``ntk_factor(var1, cov, var2)``  Ṫ(Σ) = E[φ'(u) φ'(v)]        (multiplies the NTK)
- ``mean(var)``                   E[φ(u)], u ~ N(0, var)        (for normalisation after φ)
- ``nngp_and_ntk_factor``, ``nngp_and_ntk(var1, cov, var2, ntk)``: (T, Ṫ) and (T, Θ·Ṫ) together, which the
  ReLU family computes from one arc-cosine (in place when no gradient is recorded)

and, for sums of branches and residual connections (:func:`ntkit.gaussian.functions.cross_nngp`):

- ``mean_derivative(var)``        E[φ'(u)]
- ``identity_cross(cov, var)``    E[u φ(v)] with Cov(u, v) = cov, Var(v) = var
- ``joint_expectation(other, var1, cov, var2, derivative=False)``  E[φ(u) ψ(v)] (or E[φ'(u) ψ'(v)]) in
  closed form for another activation ψ of the same family, or None.

All take broadcastable tensors and work elementwise, so one call covers every pair of inputs and every
spatial position. They are differentiable, and finite with finite gradients at zero variance, at |ρ| = 1
(duplicate inputs) and at large variances, in float32 and float64, where naive formulas give NaN.
Closed forms are written in terms of s² = var1·var2 − cov² ≥ 0 and ϑ = atan2(s, cov) ∈ [0, π].

Functions without a closed form go through :class:`Elementwise` (Gaussian quadrature), and chains of
activations through :func:`compose`. Derivations: docs/infinite_activations.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from .._derivatives import forward_mode_active, tracks_derivatives
from .._validation import check_number
from ..errors import InvalidArgumentError, UnsupportedError
from .quadrature import (
    DEFAULT_DEGREE,
    DEFAULT_TOLERANCE,
    Budget,
    check_degree,
    gaussian_cross,
    gaussian_first_moment,
    gaussian_mean,
)
from .stable import angle, broadcast_shape, clamp_cov, cov_over_sd, is_identity, safe_sqrt, scaled_cov

__all__ = [
    "GELU",
    "RBF",
    "ABReLU",
    "Abs",
    "Activation",
    "Composed",
    "Cos",
    "Elementwise",
    "Erf",
    "Exp",
    "Gabor",
    "Gaussian",
    "LeakyReLU",
    "Monomial",
    "Polynomial",
    "ReLU",
    "SigmoidLike",
    "Sign",
    "Sin",
    "compose",
]

_TWO_PI = 2 * math.pi

K = TypeVar("K", bound="SupportsActivation")


class SupportsActivation(Protocol):
    """What an activation's kernel rule needs of the kernel of its inputs (:class:`ntkit.Kernel`, whose
    ``activation`` method is the engine's map for elementwise nonlinearities)."""

    def activation(self: K, act: Activation) -> K: ...


class Activation(nn.Module):
    """Base class: an elementwise φ (``fn``), its derivative and its Gaussian expectations.

    A subclass defines ``fn``, ``derivative``, ``mean`` and either ``nngp``/``ntk_factor`` or
    ``joint_expectation`` (from which ``nngp``/``ntk_factor`` follow with ψ = φ).
    """

    #: True when nngp/ntk_factor/mean are closed forms (False: numerical quadrature).
    closed_form: bool = True
    #: False for functions with jumps (Sign): Stein's lemma E[u φ(v)] = cov·E[φ'(v)] needs continuity.
    continuous: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def kernel_transform(self, k: K) -> K:
        """The :class:`~ntkit.Kernel` of φ's outputs given the kernel ``k`` of its inputs (theory.md §4.1):
        K' = E[φ(u) φ(v)], Θ' = Θ·E[φ'(u) φ'(v)]. The rule is the engine's (``k.activation(self)``,
        :func:`ntkit.infinite.transforms.activation`); this package stays below the engine."""
        return k.activation(self)

    @property
    def arc_cosine_slopes(self) -> tuple[float, float] | None:
        """(a, b) when φ(x) = a·min(x, 0) + b·max(x, 0) with :class:`ABReLU`'s own arc-cosine kernel maps, which
        lets ``nk.kernel`` run dense networks of such layers on its fast path
        (:mod:`ntkit.infinite.dense_chain`); None otherwise."""
        return None

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """φ'(x), elementwise (almost everywhere)."""
        raise NotImplementedError

    def nngp(self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
        """T = E[φ(u) φ(v)], broadcast shape of the inputs."""
        return self._with_itself(var1, cov, var2, derivative=False)

    def ntk_factor(self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
        """Ṫ = E[φ'(u) φ'(v)], broadcast shape of the inputs."""
        return self._with_itself(var1, cov, var2, derivative=True)

    def nngp_and_ntk_factor(
        self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, Ṫ) together (a layer with an NTK needs both; closed forms share their intermediate results)."""
        return self.nngp(var1, cov, var2), self.ntk_factor(var1, cov, var2)

    def nngp_and_ntk(
        self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor, ntk: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, Θ·Ṫ) for the layer's NTK Θ (broadcastable against the result): what a nonlinearity outputs."""
        nngp, factor = self.nngp_and_ntk_factor(var1, cov, var2)
        return nngp, ntk * factor

    def mean(self, var: torch.Tensor) -> torch.Tensor:
        """E[φ(u)], u ~ N(0, var), shape of ``var``."""
        raise NotImplementedError

    def mean_derivative(self, var: torch.Tensor) -> torch.Tensor:
        """E[φ'(u)], u ~ N(0, var) (a.e. derivative), shape of ``var``. Default: quadrature."""
        return gaussian_mean(self.derivative, var, tolerance=DEFAULT_TOLERANCE)

    def identity_cross(self, cov: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """E[u φ(v)] for Cov(u, v) = ``cov``, Var(v) = ``var``: cov·E[φ'(v)] by Stein's lemma (φ continuous)."""
        return cov * self.mean_derivative(var)

    def joint_expectation(
        self, other: Activation, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor, *, derivative: bool
    ) -> torch.Tensor | None:
        """E[φ(u) ψ(v)] (``derivative``: E[φ'(u) ψ'(v)]) with ψ = ``other``, or None without a closed form."""
        return None

    def _with_itself(
        self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor, *, derivative: bool
    ) -> torch.Tensor:
        out = self.joint_expectation(self, var1, cov, var2, derivative=derivative)
        if out is None:
            raise NotImplementedError(f"{type(self).__name__} defines neither nngp/ntk_factor nor joint_expectation")
        return out


# --------------------------------------------------------------------------------- piecewise linear


class ABReLU(Activation):
    """φ(x) = a·min(x, 0) + b·max(x, 0) = b·relu(x) − a·relu(−x).

    With ReLU's arc-cosine kernel 2π·T₀(cov) = s + (π − ϑ)·cov (Cho & Saul; theory.md §4.2) and
    2π·T₀(−cov) = s − ϑ·cov, for φ1 = (a1, b1), φ2 = (a2, b2), p = a1a2 + b1b2, q = a1b2 + b1a2:

    E[φ1(u) φ2(v)] = p·T₀(cov) − q·T₀(−cov) = ((p − q)·s + (p(π − ϑ) + qϑ)·cov) / 2π,
    E[φ1'(u) φ2'(v)] = (p(π − ϑ) + qϑ) / 2π,    E φ(u) = (b − a)·√(var / 2π),    E φ'(u) = (a + b) / 2.

    At zero variance ϑ = atan2(0, 0) = 0: the ρ → 1 limit (Ṫ = (a² + b²)/2).
    """

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a, self.b = check_number(a, "the negative-side slope a"), check_number(b, "the positive-side slope b")

    def extra_repr(self) -> str:
        return f"a={self.a}, b={self.b}"

    @property
    def arc_cosine_slopes(self) -> tuple[float, float] | None:
        # a subclass that overrides the kernel maps does not get the fast path, which computes ABReLU's
        return (self.a, self.b) if type(self).nngp_and_ntk is ABReLU.nngp_and_ntk else None

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, self.b * x, self.a * x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self.a + (self.b - self.a) * (x > 0).to(x.dtype)

    def joint_expectation(
        self, other: Activation, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor, *, derivative: bool
    ) -> torch.Tensor | None:
        if not isinstance(other, ABReLU):
            return None
        return self._arc_cosine(other, var1, cov, var2)[1 if derivative else 0]

    def nngp_and_ntk_factor(
        self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._arc_cosine(self, var1, cov, var2)

    def nngp_and_ntk(
        self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor, ntk: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        nngp, factor = self._arc_cosine(self, var1, cov, var2)
        if tracks_derivatives(factor, ntk) or broadcast_shape(factor.shape, ntk.shape) != factor.shape:
            return nngp, ntk * factor
        return nngp, factor.mul_(ntk)  # in place: _arc_cosine's tensors are its own

    def _arc_cosine(
        self, other: ABReLU, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[φ1(u) φ2(v)], E[φ1'(u) φ2'(v)]) from one angle ϑ."""
        p = self.a * other.a + self.b * other.b
        q = self.a * other.b + self.b * other.a
        if not tracks_derivatives(var1, cov, var2):
            return _arc_cosine_fast(p, q, var1, cov, var2)
        cov, s = clamp_cov(var1, cov, var2)
        angle_term = p * math.pi + (q - p) * angle(s, cov)  # p(π − ϑ) + qϑ
        return ((p - q) * s + angle_term * cov) / _TWO_PI, angle_term / _TWO_PI

    def mean(self, var: torch.Tensor) -> torch.Tensor:
        return (self.b - self.a) * safe_sqrt(var / _TWO_PI)

    def mean_derivative(self, var: torch.Tensor) -> torch.Tensor:
        return torch.full_like(var, (self.a + self.b) / 2)


def _arc_cosine_fast(
    p: float, q: float, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`ABReLU._arc_cosine` without autograd, in few passes over the kernel, most of them in place,
    and two new kernel-sized tensors (each fresh tensor costs page faults on first touch, often more than a pass):

        ρ = clamp(cov · (1/√var1) · (1/√var2) / (1 − 8ε), ±1),
        Ṫ = (pπ + (q − p) arccos ρ) / 2π,   T = (p − q) √var1 √var2 √(1 − ρ²) / 2π + Ṫ cov.

    The factor 1/(1 − 8ε) (ε the dtype's machine epsilon) outweighs the rounding of the square roots,
    reciprocals and products, so duplicate inputs (cov = var1 = var2) get ρ = 1 exactly, hence T = Ṫ·var as
    on the diagonal (correlations within 8ε of ±1 are indistinct from ±1 in this dtype anyway); elsewhere it
    changes T by O(ε). Zero variance gives ρ = 1 (ϑ = 0, the ρ → 1 limit, as :func:`angle` does) and T = 0.
    ``cov`` is a covariance up to round-off (|cov| ≤ √(var1 var2)(1 + O(ε)), as the recursions produce): the
    clamp guards ρ, while Ṫ·cov keeps cov itself. ``arccos`` is position-independent on CPU (its vectorised
    loop and scalar tail agree).
    """
    if var1 is cov and var2 is cov:  # an example's own variance: ρ = 1 exactly
        return cov * (p / 2), torch.full_like(cov, p / 2)
    sd1, sd2 = torch.sqrt(var1), torch.sqrt(var2)
    grow = 1.0 / (1.0 - 8.0 * torch.finfo(cov.dtype).eps)
    rho, factor2 = torch.mul(cov, sd1.reciprocal()), sd2.reciprocal().mul_(grow)
    rho = rho.mul_(factor2) if broadcast_shape(rho.shape, factor2.shape) == rho.shape else rho * factor2
    rho.nan_to_num_(nan=1.0).clamp_(-1.0, 1.0)
    ntk_factor = torch.acos(rho).mul_((q - p) / _TWO_PI).add_(p / 2)
    # In place, rho -> D = 1 − |ρ| (exact near |ρ| = 1) -> D − D²/2 = (1 − ρ²)/2 -> T.
    nngp = rho.abs_().neg_().add_(1.0).addcmul_(rho, rho, value=-0.5).sqrt_()
    nngp.mul_(sd1).mul_(sd2).mul_(math.sqrt(2) * (p - q) / _TWO_PI)
    return nngp.addcmul_(ntk_factor, cov), ntk_factor


class ReLU(ABReLU):
    """φ(x) = max(x, 0). Arc-cosine kernel of degree 1 (Cho & Saul; theory.md §4.2):

    T = (√(v1 v2 − c²) + (π − ϑ) c) / 2π,  Ṫ = (π − ϑ) / 2π,  ϑ = atan2(√(v1 v2 − c²), c),  E φ(u) = √(v / 2π).
    """

    def __init__(self) -> None:
        super().__init__(0.0, 1.0)

    def extra_repr(self) -> str:
        return ""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


class LeakyReLU(ABReLU):
    """φ(x) = max(x, 0) + negative_slope·min(x, 0): :class:`ABReLU` with a = negative_slope, b = 1."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__(check_number(negative_slope, "negative_slope"), 1.0)

    def extra_repr(self) -> str:
        return f"negative_slope={self.a}"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.leaky_relu(x, self.a)


class Abs(ABReLU):
    """φ(x) = |x|: :class:`ABReLU` with a = −1, b = 1; T = (2s + (π − 2ϑ)c)/π, Ṫ = 1 − 2ϑ/π."""

    def __init__(self) -> None:
        super().__init__(-1.0, 1.0)

    def extra_repr(self) -> str:
        return ""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)


def _abrelu(a: float, b: float) -> ABReLU:
    """The canonical class for slopes (a, b): ReLU, Abs, LeakyReLU or ABReLU."""
    if (a, b) == (0.0, 1.0):
        return ReLU()
    if (a, b) == (-1.0, 1.0):
        return Abs()
    return LeakyReLU(a) if b == 1.0 else ABReLU(a, b)


class Sign(Activation):
    """φ(x) = sign(x): T = (2/π)·arcsin ρ = 1 − 2ϑ/π, Ṫ = 0 (the a.e. derivative; the jump is not a
    trainable direction), E φ = 0. Zero variance gives T = 0 (sign(0) = 0). E[u sign(v)] = cov·√(2/(π var)).
    """

    continuous = False

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def joint_expectation(
        self, other: Activation, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor, *, derivative: bool
    ) -> torch.Tensor | None:
        if not isinstance(other, Sign):
            return None
        cov, s = clamp_cov(var1, cov, var2)
        if derivative:
            return torch.zeros_like(s * cov)
        t = 1 - angle(s, cov) * (2 / math.pi)
        return torch.where((var1 > 0) & (var2 > 0), t, torch.zeros_like(t))

    def mean(self, var: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(var)

    def mean_derivative(self, var: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(var)

    def identity_cross(self, cov: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        return cov_over_sd(cov, var) * math.sqrt(2 / math.pi)


# --------------------------------------------------------------------------------- erf family, GELU


class Erf(Activation):
    """φ(x) = a·erf(b x) + c (Williams 1997; theory.md §4.2). For φ1 = (a1, b1, c1), φ2 = (a2, b2, c2):

    D = det(I + 2 diag(b1², b2²) Σ) = 1 + 2b1² v1 + 2b2² v2 + 4b1²b2²(v1 v2 − cov²) ≥ 1,
    E[φ1 φ2] = a1a2 (2/π) arcsin(2b1b2 cov / √((1 + 2b1²v1)(1 + 2b2²v2))) + c1c2
             = a1a2 (2/π) atan2(2b1b2 cov, √D) + c1c2   (the same angle, with no 0/0 or ∞ gradient),
    E[φ1' φ2'] = a1b1a2b2 (4/π) / √D,   E φ = c,   E φ' = ab (2/√π) / √(1 + 2b²v).
    """

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0) -> None:
        super().__init__()
        self.a, self.b, self.c = (check_number(v, name) for v, name in ((a, "a"), (b, "b"), (c, "c")))

    def extra_repr(self) -> str:
        return f"a={self.a}, b={self.b}, c={self.c}"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.erf(self.b * x) + self.c

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * self.b * 2 / math.sqrt(math.pi) * torch.exp(-((self.b * x) ** 2))

    def joint_expectation(
        self, other: Activation, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor, *, derivative: bool
    ) -> torch.Tensor | None:
        if not isinstance(other, Erf):
            return None
        b1, b2 = self.b**2, other.b**2
        lam, c_hat, d_hat = scaled_cov(var1, cov, var2)  # √D = λ·root: finite at any variance
        root = torch.sqrt((1 + 2 * b1 * var1 + 2 * b2 * var2) / lam / lam + 4 * b1 * b2 * d_hat)
        if derivative:
            return (self.a * self.b * other.a * other.b * 4 / math.pi) / (lam * root)
        # atan2(y, x) for x = root > 0 is atan(y/x); torch.atan2 is not position-independent (see angle)
        arc = torch.atan(2 * self.b * other.b * c_hat / root)
        return (self.a * other.a * 2 / math.pi) * arc + self.c * other.c

    def mean(self, var: torch.Tensor) -> torch.Tensor:
        return torch.full_like(var, self.c)

    def mean_derivative(self, var: torch.Tensor) -> torch.Tensor:
        return (self.a * self.b * 2 / math.sqrt(math.pi)) / torch.sqrt(1 + 2 * self.b**2 * var)


#: Width of the erf that best fits the logistic sigmoid: s minimising ∫_{-5}^{5} (σ(x) − ½ − ½ erf(x/s))² dx,
#: computed with scipy (quad + minimize_scalar, residual 5.0197e-4). Close to, not the same as, the
#: 2.40205635 that neural-tangents uses (relative difference 3e-6, residual larger by 3e-12).
SIGMOID_ERF_WIDTH = 2.402048072111871


class SigmoidLike(Erf):
    """φ(x) = ½ + ½ erf(x / s) with s = 2.40205 (:data:`SIGMOID_ERF_WIDTH`): the erf closest to the logistic
    sigmoid in L² on [−5, 5] (max deviation 0.018), with the closed forms of :class:`Erf`."""

    def __init__(self) -> None:
        super().__init__(0.5, 1 / SIGMOID_ERF_WIDTH, 0.5)

    def extra_repr(self) -> str:
        return ""


class GELU(Activation):
    """φ(x) = x Φ(x) (exact, erf-based GELU; Φ the standard normal CDF), φ'(x) = Φ(x) + x ϕ(x).

    With p_i = 1 + v_i, s² = v1 v2 − c², D = p1 p2 − c² = 1 + v1 + v2 + s² ≥ 1, α = atan2(c, √D)
    (= arcsin(c / √(p1 p2))) — derived in docs/infinite_activations.md by writing Φ(u) = P(z ≤ u):

    T = c/4 + c α / 2π + (s² + c² (1/p1 + 1/p2)) / (2π √D),
    Ṫ = ∂T/∂c = 1/4 + α / 2π + c (1 + D (1/p1 + 1/p2)) / (2π D^{3/2}),
    E φ = v / √(2π (1 + v)),   E φ' = 1/2.
    """

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-0.5 * x * x) / math.sqrt(_TWO_PI)

    def joint_expectation(
        self, other: Activation, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor, *, derivative: bool
    ) -> torch.Tensor | None:
        if not isinstance(other, GELU):
            return None
        # In units of λ = max(1, √(v1 v2)) (ĉ = c/λ, ŝ² = s²/λ², D̂ = D/λ²), nothing overflows; and
        # 1/4 + α/2π = γ/2π with γ = atan2(√D̂, −ĉ) ∈ [0, π], which does not cancel as ρ → −1:
        # T = λ(ĉ γ/2π + (ŝ² + ĉ² Σ1/p) / (2π √D̂)),   Ṫ = γ/2π + ĉ (1/D + Σ1/p) / (2π √D̂).
        lam, c_hat, s2_hat = scaled_cov(var1, cov, var2)
        big_d = (1 + var1 + var2) / lam / lam + s2_hat
        root = torch.sqrt(big_d)
        inv_sum = 1 / (1 + var1) + 1 / (1 + var2)
        gamma = (math.pi / 2 + torch.atan(c_hat / root)) / _TWO_PI  # atan2(√D̂, −ĉ), as one atan (root > 0)
        if derivative:
            return gamma + c_hat * (1 / (lam * (lam * big_d)) + inv_sum) / (_TWO_PI * root)
        return lam * (c_hat * gamma + (s2_hat + c_hat * c_hat * inv_sum) / (_TWO_PI * root))

    def mean(self, var: torch.Tensor) -> torch.Tensor:
        return var / torch.sqrt(_TWO_PI * (1 + var))

    def mean_derivative(self, var: torch.Tensor) -> torch.Tensor:
        return torch.full_like(var, 0.5)


# --------------------------------------------------------------------------------- trigonometric


class Sin(Activation):
    """φ(x) = a·sin(b x + c). With E cos(X + k) = cos k·exp(−Var X / 2), for φ1 = (a1, b1, c1), φ2 = (a2, b2, c2)
    and V∓ = Var(b1 u ∓ b2 v) = b1² v1 + b2² v2 ∓ 2 b1 b2 cov:

    E[φ1 φ2] = a1a2/2 · (cos(c1 − c2) e^{−V−/2} − cos(c1 + c2) e^{−V+/2}),
    E[φ1' φ2'] = a1b1a2b2/2 · (cos(c1 − c2) e^{−V−/2} + cos(c1 + c2) e^{−V+/2}),
    E φ = a sin(c) e^{−b² v/2},   E φ' = a b cos(c) e^{−b² v/2}.
    """

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0) -> None:
        super().__init__()
        self.a, self.b, self.c = (check_number(v, name) for v, name in ((a, "a"), (b, "b"), (c, "c")))

    @property
    def phase(self) -> float:
        """The phase c' of the same function written as a·sin(b x + c')."""
        return self.c

    def extra_repr(self) -> str:
        return f"a={self.a}, b={self.b}, c={self.c}"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.sin(self.b * x + self.c)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * self.b * torch.cos(self.b * x + self.phase)

    def joint_expectation(
        self, other: Activation, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor, *, derivative: bool
    ) -> torch.Tensor | None:
        if not isinstance(other, Sin):
            return None
        # No clamping of cov: only V∓ ≥ 0 matters, and √v1·√v2 rounds (1e-7 of 1e30 is far from 0).
        b1, b2 = self.b, other.b
        common = b1 * b1 * var1 + b2 * b2 * var2
        e_minus = torch.exp(-0.5 * torch.clamp_min(common - 2 * b1 * b2 * cov, 0))
        e_plus = torch.exp(-0.5 * torch.clamp_min(common + 2 * b1 * b2 * cov, 0))
        k_minus, k_plus = math.cos(self.phase - other.phase), math.cos(self.phase + other.phase)
        if derivative:
            return (self.a * b1 * other.a * b2 / 2) * (k_minus * e_minus + k_plus * e_plus)
        return (self.a * other.a / 2) * (k_minus * e_minus - k_plus * e_plus)

    def mean(self, var: torch.Tensor) -> torch.Tensor:
        return self.a * math.sin(self.phase) * torch.exp(-0.5 * self.b**2 * var)

    def mean_derivative(self, var: torch.Tensor) -> torch.Tensor:
        return self.a * self.b * math.cos(self.phase) * torch.exp(-0.5 * self.b**2 * var)


class Cos(Sin):
    """φ(x) = a·cos(b x + c) = a·sin(b x + c + π/2): the closed forms of :class:`Sin`."""

    @property
    def phase(self) -> float:
        return self.c + math.pi / 2

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.cos(self.b * x + self.c)


class RBF(Sin):
    """φ(x) = √2·sin(√(2γ) x + π/4), whose NNGP map is the squared-exponential kernel:

    T = exp(−γ (v1 + v2 − 2 cov)) = exp(−γ E(u − v)²),   Ṫ = 2γ T,   E φ = exp(−γ v).

    After a bias-free ``Linear(n0, n, W_std=σ)`` on inputs x, x' (cov = σ² x·x'/n0), the NNGP is
    exp(−γ σ² ‖x − x'‖² / n0): the RBF kernel with length scale ℓ = √(n0 / (2γ σ²)).
    """

    def __init__(self, gamma: float = 1.0) -> None:
        gamma = check_number(gamma, "gamma", minimum=0.0, inclusive=False)
        super().__init__(math.sqrt(2), math.sqrt(2 * gamma), math.pi / 4)
        self.gamma = gamma

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


class Gabor(Activation):
    """φ(x) = exp(−x²)·sin(x) (neural-tangents' Gabor). With S = v1 + v2, D = 4(v1 v2 − cov²) ≥ 0,
    Δ = det(I + 2Σ) = 1 + 2S + D ≥ 1 and E = exp(−(S + D)/(2Δ)) (docs/infinite_activations.md; computed in
    units of λ = max(1, √(v1 v2)), finite at any variance):

    E[φ(u) φ(v)] = E·sinh(cov/Δ)/√Δ,
    E[φ'(u) φ'(v)] = E·((Δ + 8 cov²) cosh(cov/Δ) + 4 cov (2 + 3S + D) sinh(cov/Δ)) / Δ^{5/2},
    E φ = 0,   E φ' = exp(−v/(2(1 + 2v))) / (1 + 2v)^{3/2}.
    """

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-x * x) * torch.sin(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-x * x) * (torch.cos(x) - 2 * x * torch.sin(x))

    def joint_expectation(
        self, other: Activation, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor, *, derivative: bool
    ) -> torch.Tensor | None:
        if not isinstance(other, Gabor):
            return None
        # With λ = max(1, √(v1 v2)), ĉ = cov/λ, d̂ = s²/λ² (O(1)) and a = Δ/λ = 1/λ + 2S/λ + 4λd̂: x = cov/Δ = ĉ/a,
        # T = E sinh(x)/√(λa), Ṫ = E·ĝ/(√λ a^{5/2}) with ĝ = the bracket / λ², every factor finite at any
        # variance the dtype holds (divided one at a time so that nothing overflows before it shrinks).
        lam, c_hat, d_hat = scaled_cov(var1, cov, var2)
        s_lam = (var1 + var2) / lam
        a = 1 / lam + 2 * s_lam + 4 * lam * d_hat
        common = torch.exp(-(s_lam + 4 * lam * d_hat) / (2 * a))
        x = c_hat / a
        up, down = torch.expm1(x), torch.expm1(-x)  # not torch.sinh/cosh: their vectorised CPU loops round
        sinh, cosh = (up - down) / 2, 1 + (up + down) / 2  # differently from the scalar tail (position-dependent)
        if derivative:
            bracket = (a / lam + 8 * c_hat * c_hat) * cosh + 4 * c_hat * (2 / lam + 3 * s_lam + 4 * lam * d_hat) * sinh
            return common * bracket / torch.sqrt(lam) / a / a / torch.sqrt(a)
        return common * sinh / torch.sqrt(lam) / torch.sqrt(a)

    def mean(self, var: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(var)

    def mean_derivative(self, var: torch.Tensor) -> torch.Tensor:
        base = 1 + 2 * var
        return torch.exp(-var / (2 * base)) / (base * torch.sqrt(base))


# --------------------------------------------------------------------------------- exponentials


class Exp(Activation):
    """φ(x) = a·exp(b x): E[φ1 φ2] = a1a2 exp((b1² v1 + b2² v2 + 2 b1 b2 cov) / 2), E[φ1' φ2'] = b1b2 × that,
    E φ = a exp(b² v / 2). Grows like exp(2b² v): it overflows (inf, not NaN) past v ≈ 44/b² in float32
    (355/b² in float64).
    """

    def __init__(self, a: float = 1.0, b: float = 1.0) -> None:
        super().__init__()
        self.a, self.b = (check_number(v, name) for v, name in ((a, "a"), (b, "b")))

    def extra_repr(self) -> str:
        return f"a={self.a}, b={self.b}"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.exp(self.b * x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * self.b * torch.exp(self.b * x)

    def joint_expectation(
        self, other: Activation, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor, *, derivative: bool
    ) -> torch.Tensor | None:
        if not isinstance(other, Exp):
            return None
        b1, b2 = self.b, other.b
        scale = self.a * other.a * (b1 * b2 if derivative else 1.0)
        return scale * torch.exp(0.5 * (b1 * b1 * var1 + b2 * b2 * var2) + b1 * b2 * cov)

    def mean(self, var: torch.Tensor) -> torch.Tensor:
        return self.a * torch.exp(0.5 * self.b**2 * var)

    def mean_derivative(self, var: torch.Tensor) -> torch.Tensor:
        return self.b * self.mean(var)


class Gaussian(Activation):
    """φ(x) = a·exp(b x²). With D = det(I − 2 diag(b1, b2) Σ) = 1 − 2b1 v1 − 2b2 v2 + 4 b1 b2 (v1 v2 − cov²):

    E[φ1 φ2] = a1a2 / √D,   E[φ1' φ2'] = 4 a1a2 b1b2 · cov / D^{3/2},   E φ = a / √(1 − 2 b v),   E φ' = 0.

    For b > 0 these are finite only while both eigenvalues of 2·diag(b1, b2)·Σ stay below 1 (b v < 1/4 on the
    diagonal of the NNGP, b v < 1/2 for the mean); outside, :class:`~ntkit.errors.InvalidArgumentError`.
    """

    def __init__(self, a: float = 1.0, b: float = -1.0) -> None:
        super().__init__()
        self.a, self.b = (check_number(v, name) for v, name in ((a, "a"), (b, "b")))

    def extra_repr(self) -> str:
        return f"a={self.a}, b={self.b}"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.exp(self.b * x * x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.a * self.b * x * torch.exp(self.b * x * x)

    def joint_expectation(
        self, other: Activation, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor, *, derivative: bool
    ) -> torch.Tensor | None:
        if not isinstance(other, Gaussian):
            return None
        b1, b2 = self.b, other.b
        lam, c_hat, d_hat = scaled_cov(var1, cov, var2)  # D = λ² D̂: finite at any variance
        big_d = (1 - 2 * b1 * var1 - 2 * b2 * var2) / lam / lam + 4 * b1 * b2 * d_hat
        if b1 > 0 or b2 > 0:
            bad = (big_d <= 0) | (b1 * var1 + b2 * var2 >= 1)
            if bool(bad.any()):
                self._domain_error(torch.maximum(torch.as_tensor(var1), torch.as_tensor(var2))[bad].max(), 4)
        if derivative:
            return (4 * self.a * other.a * b1 * b2) * c_hat / ((lam * torch.sqrt(big_d)) * (lam * big_d))
        return (self.a * other.a) / (lam * torch.sqrt(big_d))

    def mean(self, var: torch.Tensor) -> torch.Tensor:
        base = 1 - 2 * self.b * var
        if self.b > 0 and bool((base <= 0).any()):
            self._domain_error(var.max(), 2)
        return self.a / torch.sqrt(base)

    def mean_derivative(self, var: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(var)

    def _domain_error(self, var: torch.Tensor, k: int) -> None:
        raise InvalidArgumentError(
            f"Gaussian(a={self.a}, b={self.b}): E[exp(b u²)...] diverges at the variance {float(var):.4g}; "
            f"b > 0 needs b·var < 1/{k}. Lower b, or the input scale / W_std of the layers before it."
        )


# --------------------------------------------------------------------------------- polynomials


def _hermite_table(coefficients: Sequence[float]) -> list[list[float]]:
    """β_j for j = 0..K: φ(√v z) = Σ_j v^{j/2} β_j(v) He_j(z) for φ(x) = Σ_k c_k x^k, with
    β_j(v) = Σ_m c_{j+2m} (j+2m)! / (j! m! 2^m) v^m (from x^k = Σ_m k!/(m!(k−2m)! 2^m) He_{k−2m}(x)).
    Returned as polynomial coefficients in v, lowest first."""
    top = len(coefficients)
    table = []
    for j in range(top):
        table.append(
            [
                coefficients[j + 2 * m] * (math.factorial(j + 2 * m) // (math.factorial(j) * math.factorial(m) * 2**m))
                for m in range((top - 1 - j) // 2 + 1)
            ]
        )
    return table


def _horner(coefficients: Sequence[float], x: torch.Tensor) -> torch.Tensor:
    out = torch.full_like(x, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        out = out * x + c
    return out


class Polynomial(Activation):
    """φ(x) = Σ_k c_k x^k (``coefficients`` c_0, c_1, ..., lowest degree first).

    Hermite expansion (Isserlis' theorem): with β_j from :func:`_hermite_table` (polynomials in the variance),
    E[φ(u) ψ(v)] = Σ_j j! β^φ_j(v1) β^ψ_j(v2) cov^j — a polynomial in (v1, v2, cov), so exact, smooth and
    finite everywhere, including zero variance and |ρ| = 1. Ṫ uses the same formula for φ'; E φ = β^φ_0(v).
    """

    def __init__(self, coefficients: Sequence[float]) -> None:
        super().__init__()
        coefs = [check_number(c, f"coefficient c_{i}") for i, c in enumerate(coefficients)]
        if not coefs:
            raise InvalidArgumentError("Polynomial needs at least one coefficient (c_0, c_1, ...).")
        while len(coefs) > 1 and coefs[-1] == 0.0:
            coefs.pop()
        self.coefficients = tuple(coefs)
        self._d_coefficients = tuple(k * c for k, c in enumerate(coefs))[1:] or (0.0,)
        self._beta = _hermite_table(self.coefficients)
        self._d_beta = _hermite_table(self._d_coefficients)

    def extra_repr(self) -> str:
        return f"coefficients={self.coefficients}"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return _horner(self.coefficients, x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return _horner(self._d_coefficients, x)

    def joint_expectation(
        self, other: Activation, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor, *, derivative: bool
    ) -> torch.Tensor | None:
        if not isinstance(other, Polynomial):
            return None
        beta1, beta2 = (self._d_beta, other._d_beta) if derivative else (self._beta, other._beta)
        cov, _ = clamp_cov(var1, cov, var2)
        out = torch.zeros_like(cov)
        for j in reversed(range(min(len(beta1), len(beta2)))):  # Horner in cov
            out = out * cov + math.factorial(j) * _horner(beta1[j], var1) * _horner(beta2[j], var2)
        return out

    def mean(self, var: torch.Tensor) -> torch.Tensor:
        return _horner(self._beta[0], var)

    def mean_derivative(self, var: torch.Tensor) -> torch.Tensor:
        return _horner(self._d_beta[0], var)


class Monomial(Polynomial):
    """φ(x) = x^degree (degree ≥ 0): E[u^k v^k] = Σ_{j ≡ k (2)} (k! / ((k−j)/2)! 2^{(k−j)/2})² / j! ·
    cov^j (v1 v2)^{(k−j)/2}; Ṫ = k² E[u^{k−1} v^{k−1}]; E u^k = (k−1)!! v^{k/2} for even k, 0 for odd."""

    def __init__(self, degree: int) -> None:
        if not isinstance(degree, int) or degree < 0:
            raise InvalidArgumentError(f"Monomial degree must be an integer ≥ 0, got {degree!r}.")
        super().__init__([0.0] * degree + [1.0])
        self.degree = degree

    def extra_repr(self) -> str:
        return f"degree={self.degree}"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return x**self.degree


def _polynomial(coefficients: Sequence[float]) -> Polynomial:
    """Polynomial(coefficients), or the Monomial it is."""
    p = Polynomial(coefficients)
    *lower, top = p.coefficients
    return Monomial(len(lower)) if top == 1.0 and not any(lower) else p


# --------------------------------------------------------------------------------- quadrature


def _refuse_forward_mode(what: str) -> None:
    """Reverse-mode autograd inside a kernel map cannot carry forward-mode tangents (it restarts from detached
    tensors, and torch.func transforms forbid it): refuse rather than return a wrong tangent."""
    if forward_mode_active():
        raise UnsupportedError(
            f"forward-mode derivatives (torch.func.jvp/jacfwd/hessian, torch.autograd.forward_ad) of a kernel "
            f"through an Elementwise activation whose {what} comes from reverse-mode autograd are not supported. "
            "Give Elementwise its derivative= (and ntk_fn= with nngp_fn=), or use reverse mode (torch.func.jacrev, "
            "torch.autograd.grad)."
        )


def _autograd_derivative(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """φ'(x) of an elementwise ``fn`` by reverse-mode autograd, itself differentiable in x."""
    keep_graph = torch.is_grad_enabled() and x.requires_grad
    if not keep_graph:
        _refuse_forward_mode("its derivative φ' (no derivative= given)")
    with torch.enable_grad():
        xg = x if x.requires_grad else x.detach().requires_grad_()
        y = fn(xg)
        if not y.requires_grad:  # fn is constant
            return torch.zeros_like(x)
        (d,) = torch.autograd.grad(y.sum(), xg, create_graph=keep_graph, allow_unused=True)
    return torch.zeros_like(x) if d is None else d


class _Quadrature(Activation):
    """Expectations of ``fn`` and ``derivative`` by Gaussian quadrature (:mod:`ntkit.gaussian.quadrature`)."""

    closed_form = False

    def __init__(self, *, degree: int, quadrature_budget: Budget, tolerance: float | None) -> None:
        super().__init__()
        check_degree(degree)
        self.degree, self.quadrature_budget, self.tolerance = degree, quadrature_budget, tolerance

    def _options(self) -> dict[str, Any]:
        return {"degree": self.degree, "quadrature_budget": self.quadrature_budget, "tolerance": self.tolerance}

    def nngp(self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
        return gaussian_cross(self.fn, None, var1, cov, var2, **self._options())

    def ntk_factor(self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
        return gaussian_cross(self.derivative, None, var1, cov, var2, **self._options())

    def mean(self, var: torch.Tensor) -> torch.Tensor:
        return gaussian_mean(self.fn, var, **self._options())

    def mean_derivative(self, var: torch.Tensor) -> torch.Tensor:
        return gaussian_mean(self.derivative, var, **self._options())

    def identity_cross(self, cov: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        # E[u φ(v)] = cov/√var · E[z φ(√var z)]: right for discontinuous φ too, unlike Stein's lemma.
        return cov_over_sd(cov, var) * gaussian_first_moment(self.fn, var, **self._options())


class Elementwise(_Quadrature):
    """Any elementwise function (tanh, SiLU, softplus, a user lambda) with expectations by quadrature.

    - ``fn``: a callable or module mapping a tensor to a tensor of the same shape, elementwise.
    - ``derivative``: φ' (default: autograd of ``fn``, exact where ``fn`` is differentiable).
    - ``nngp_fn(var1, cov, var2)``: a closed form of T, if known; then ``closed_form`` is True and, unless
      ``ntk_fn`` is given, Ṫ = ∂T/∂cov by autograd (Price's theorem: ∂/∂cov E[φ(u)φ(v)] = E[φ'(u)φ'(v)]).
    - ``degree``: quadrature nodes per dimension: degree² evaluations of fn (or φ') per 2-D expectation,
      degree per 1-D one (:func:`~ntkit.gaussian.quadrature.gaussian_cross`: a polar Gauss rule split where the
      inputs change sign). Measured accuracy at degree 32 (docs/infinite_activations.md): functions with
      kinks or jumps at 0 (ReLU-like, ELU, |erf|) to round-off; smooth ones (tanh, SiLU, softplus) 1e-9 to
      1e-11 at unit variance and ρ < 1, 1e-8 at ρ = 1, 2e-5 for tanh's Ṫ at variance 10. Saturating functions at
      variances ≫ 10 converge slowly: the check below then refuses rather than return a wrong number.
    - ``tolerance``: every expectation is recomputed with coarser rules and
      :class:`~ntkit.errors.UnsupportedError` raised where they differ by more than tolerance·|value|
      (1.5x the cost; ``None`` skips the check).
    - ``quadrature_budget``: bytes for the node arrays of one call (default: ntkit's budget); chunked beyond.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        *,
        derivative: Callable[[torch.Tensor], torch.Tensor] | None = None,
        nngp_fn: Callable[..., torch.Tensor] | None = None,
        ntk_fn: Callable[..., torch.Tensor] | None = None,
        degree: int = DEFAULT_DEGREE,
        quadrature_budget: int | str | None = None,
        tolerance: float | None = DEFAULT_TOLERANCE,
    ) -> None:
        super().__init__(degree=degree, quadrature_budget=quadrature_budget, tolerance=tolerance)
        if not callable(fn):
            raise InvalidArgumentError(f"Elementwise needs a callable fn, got {type(fn).__name__}.")
        self.function = fn
        self._derivative, self._nngp_fn, self._ntk_fn = derivative, nngp_fn, ntk_fn
        self.closed_form = nngp_fn is not None

    def extra_repr(self) -> str:
        name = getattr(self.function, "__name__", type(self.function).__name__)
        return f"{name}, degree={self.degree}" + (", closed-form nngp" if self.closed_form else "")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self._derivative(x) if self._derivative is not None else _autograd_derivative(self.function, x)

    def nngp(self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
        return super().nngp(var1, cov, var2) if self._nngp_fn is None else self._nngp_fn(var1, cov, var2)

    def ntk_factor(self, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
        if self._ntk_fn is not None:
            return self._ntk_fn(var1, cov, var2)
        if self._nngp_fn is None:
            return super().ntk_factor(var1, cov, var2)
        return _price_derivative(self._nngp_fn, var1, cov, var2)


def _price_derivative(
    nngp_fn: Callable[..., torch.Tensor], var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor
) -> torch.Tensor:
    """∂T/∂cov elementwise by autograd (Price's theorem: this is E[φ'(u) φ'(v)]), differentiable itself."""
    shape = broadcast_shape(var1.shape, cov.shape, var2.shape)
    keep_graph = torch.is_grad_enabled() and any(t.requires_grad for t in (var1, cov, var2))
    if not keep_graph:
        _refuse_forward_mode("∂T/∂cov of its nngp_fn (no ntk_fn= given)")
    with torch.enable_grad():
        c = cov.expand(shape) if cov.requires_grad else cov.detach().expand(shape).clone().requires_grad_()
        (d,) = torch.autograd.grad(nngp_fn(var1, c, var2).sum(), c, create_graph=keep_graph, allow_unused=True)
    return torch.zeros(shape, dtype=cov.dtype, device=cov.device) if d is None else d


class Composed(_Quadrature):
    """x ↦ φ_k(...φ_1(x)): a chain of activations, itself an elementwise function of a Gaussian.

    Build with :func:`compose` (which folds chains with closed forms). fn and the chain-rule derivative
    φ'(x) = Π_i φ_i'(x_{i−1}) use each activation's own ``fn``/``derivative``; expectations by quadrature.
    """

    def __init__(
        self,
        acts: Sequence[Activation],
        *,
        degree: int = DEFAULT_DEGREE,
        quadrature_budget: Budget = None,
        tolerance: float | None = DEFAULT_TOLERANCE,
    ) -> None:
        super().__init__(degree=degree, quadrature_budget=quadrature_budget, tolerance=tolerance)
        acts = list(acts)
        wrong = [a for a in acts if not isinstance(a, Activation)]
        if wrong:
            raise InvalidArgumentError(f"Composed takes ntkit.nn activations, got {type(wrong[0]).__name__}.")
        self.chain = tuple(acts)  # typed; ``acts`` registers them as submodules
        self.acts = nn.ModuleList(acts)

    def extra_repr(self) -> str:
        return f"degree={self.degree}"

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        for act in self.chain:
            x = act.fn(x)
        return x

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.ones_like(x)
        for act in self.chain:
            out = out * act.derivative(x)
            x = act.fn(x)
        return out


def _fold(inner: Activation, outer: Activation) -> Activation | None:
    """outer ∘ inner as one closed-form activation, or None. Piecewise-linear maps compose to piecewise-linear
    ones (positive homogeneity: ABReLU(a2, b2) ∘ ABReLU(a1, b1) = ABReLU(a1·s(a1), b1·s(b1)), where s picks
    the outer slope on the side the inner one sends x to); polynomials compose to polynomials."""
    if isinstance(inner, ABReLU) and isinstance(outer, ABReLU):
        a = inner.a * (outer.a if inner.a > 0 else outer.b)  # x < 0 goes to a·x: negative iff a > 0
        b = inner.b * (outer.b if inner.b >= 0 else outer.a)  # x > 0 goes to b·x: positive iff b ≥ 0
        return _abrelu(a, b)
    if isinstance(inner, Polynomial) and isinstance(outer, Polynomial):
        composite = np.polynomial.Polynomial(outer.coefficients)(np.polynomial.Polynomial(inner.coefficients))
        return _polynomial(composite.coef.tolist())
    return None


def _is_identity_activation(act: Activation) -> bool:
    return (isinstance(act, ABReLU) and act.a == act.b == 1.0) or (
        isinstance(act, Polynomial) and act.coefficients == (0.0, 1.0)
    )


def compose(
    *acts: Activation | nn.Identity | None,
    degree: int = DEFAULT_DEGREE,
    quadrature_budget: Budget = None,
    tolerance: float | None = DEFAULT_TOLERANCE,
) -> Activation:
    """The activation x ↦ φ_k(...φ_1(x)) for ``acts`` = (φ_1, ..., φ_k), in the order they are applied.

    Two activations in a row (or a residual branch that starts with an activation after an activation) are
    one elementwise function of the Gaussian pre-activation, so the kernel recursion still closes.
    Identities (``None``, ``nn.Identity``) are dropped, nested compositions flattened, and adjacent pairs
    with a closed form folded: ABReLU family (ReLU∘ReLU = ReLU, Abs∘Abs = Abs, ReLU∘LeakyReLU = ReLU,
    LeakyReLU∘Abs = Abs, ...) and polynomials (Monomial(2)∘Monomial(3) = Monomial(6)). What remains, if more
    than one, is a :class:`Composed` computed by quadrature with ``degree`` nodes per dimension, checked to
    ``tolerance`` (see :class:`Elementwise`).
    """
    chain: list[Activation] = []
    for act in acts:
        if is_identity(act):
            continue
        if isinstance(act, Composed):
            parts = list(act.chain)
        elif isinstance(act, Activation):
            parts = [act]
        else:
            raise InvalidArgumentError(
                f"compose takes ntkit.nn activations, got {type(act).__name__}; wrap other elementwise "
                "functions in ntkit.nn.Elementwise(fn)."
            )
        for part in parts:
            folded = _fold(chain[-1], part) if chain else None
            if folded is None:
                chain.append(part)
            else:
                chain[-1] = folded
            if _is_identity_activation(chain[-1]):
                chain.pop()
    if not chain:
        return Monomial(1)
    if len(chain) == 1:
        return chain[0]
    return Composed(chain, degree=degree, quadrature_budget=quadrature_budget, tolerance=tolerance)
