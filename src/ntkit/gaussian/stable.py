"""Numerically stable building blocks for Gaussian expectations of a pair (u, v) ~ N(0, [[var1, cov], [cov, var2]]).

Closed forms written with these stay finite, with finite gradients, at zero variance, at |ρ| = 1 (duplicate
inputs) and at large variances, in float32 and float64 (theory.md §4.2). All work elementwise on
broadcastable tensors.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._derivatives import tracks_derivatives

__all__ = [
    "angle",
    "broadcast_shape",
    "clamp_cov",
    "clamp_cov_det",
    "cov_over_sd",
    "is_identity",
    "safe_sqrt",
    "scaled_cov",
]


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """√max(x, 0) with gradient 0 (not ∞ or NaN) where x ≤ 0."""
    if not tracks_derivatives(x):  # no autograd: the two-pass form is enough
        return torch.sqrt(torch.clamp_min(x, 0))
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


#: A correlation within this many machine epsilons of ±1 is ±1 (see :func:`_clamped`).
CORRELATION_ROUNDOFF = 8


def _clamped(var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cov clamped to |cov| ≤ b, b = √(var1 var2), and set to ±b where |ρ| ≥ 1 − 8ε), and b.

    Round-off can push |ρ| past 1, or leave the correlation of equal inputs a few ulp short of 1: the variances
    and the pair covariance are computed by different operations (a vector and a matrix, transcendental
    functions whose vectorised loop and scalar tail round differently). A correlation of exactly 1 must stay 1:
    in the chaotic phase the map of ρ has an unstable fixed point at 1, and an ulp off it grows by a factor χ > 1
    per layer until duplicates look independent (deep Erf, W_std = 3: K(x, x) 6.9 on the diagonal, 2.7 between
    two copies of x). So |ρ| within ``CORRELATION_ROUNDOFF``·ε of 1, indistinct from ±1 in this dtype, is ±1:
    the cross formula then computes what the diagonal does (and the ReLU fast paths use the same 8ε).

    b is √var1·√var2 (no overflow or underflow of the product), except that equal variances give b = var
    exactly (fl(√v)² is not v: a duplicate input would get √det ≈ 1e-8·v instead of 0).
    """
    bound = torch.where(var1 == var2, 0.5 * var1 + 0.5 * var2, safe_sqrt(var1) * safe_sqrt(var2))
    near = bound * (1.0 - CORRELATION_ROUNDOFF * torch.finfo(cov.dtype).eps)
    if not tracks_derivatives(var1, cov, var2):
        return torch.where(cov >= near, bound, torch.where(cov <= -near, -bound, cov)), bound
    # the value ±b where snapped, the gradient to cov as at a tie (cov + (±b − cov) is ±b exactly: Sterbenz)
    up = cov + (bound - cov).detach()
    down = cov + (-bound - cov).detach()
    return torch.where(cov >= near, up, torch.where(cov <= -near, down, cov)), bound


def clamp_cov(var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (cov clamped to |cov| ≤ √var1 √var2, √(var1 var2 − cov²)).

    √det as √(b − cov)·√(b + cov): no overflow before the variances themselves overflow, gradient 0 (not ∞)
    at |ρ| = 1.
    """
    cov, bound = _clamped(var1, cov, var2)
    return cov, safe_sqrt(bound - cov) * safe_sqrt(bound + cov)


def clamp_cov_det(var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (cov clamped to |cov| ≤ b = √var1 √var2, var1 var2 − cov² = (b − cov)(b + cov) ≥ 0).

    Use the determinant itself (not the square of √det) where a formula is polynomial in it: its gradient in
    cov stays −2·cov at |ρ| = 1 instead of 0. It overflows once var1·var2 does (1e38 in float32): see
    :func:`scaled_cov` for formulas that must not.
    """
    cov, bound = _clamped(var1, cov, var2)
    return cov, (bound - cov) * (bound + cov)


def scaled_cov(
    var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (λ, ĉ, d̂) with λ = max(1, √var1 √var2), ĉ = clamped cov / λ and d̂ = (var1 var2 − cov²) / λ²:
    the covariance and determinant in units of λ, all O(1), so closed forms written with them stay finite
    (no inf/inf) at any variance the dtype holds. d̂ is polynomial in ĉ (exact gradient at |ρ| = 1)."""
    cov, bound = _clamped(var1, cov, var2)
    lam = torch.clamp_min(bound, 1.0)
    b_hat, c_hat = bound / lam, cov / lam
    return lam, c_hat, (b_hat - c_hat) * (b_hat + c_hat)


def angle(s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """atan2(s, c) ∈ [0, π] for s ≥ 0 (the angle ϑ between two inputs, s = √det, c = cov), atan2(0, 0) = 0.

    Built from one atan of a ratio bounded by 1, not torch.atan2: on CPU the vectorised atan2 and its scalar
    tail differ in the last bit, so equal inputs at different positions of a tensor would get different
    angles; deep networks in the chaotic phase amplify that until duplicate inputs decorrelate. Finite
    gradients everywhere (the divisors are ≥ the numerators in size, or replaced by 1 where unused).
    """
    if not tracks_derivatives(s, c):  # π/2 − atan(c/s): ±inf ratios give 0 and π; 0/0 (zero variance) gives NaN → 0
        return torch.nan_to_num(math.pi / 2 - torch.atan(c / s), nan=0.0)
    flat = c.abs() >= s  # includes s = c = 0
    num = torch.where(flat, s, c)
    den = torch.where(flat, c, s)
    a = torch.atan(num / torch.where(den == 0, torch.ones_like(den), den))
    return torch.where(flat, torch.where(c < 0, a + math.pi, a), math.pi / 2 - a)


def broadcast_shape(*shapes: tuple[int, ...]) -> torch.Size:
    """``torch.broadcast_shapes``, typed."""
    return torch.Size(torch.broadcast_shapes(*shapes))  # type: ignore[no-untyped-call]  # torch leaves it unannotated


def is_identity(act: object) -> bool:
    """True for the identity map in cross terms: ``None`` or a ``torch.nn.Identity`` (or subclass)."""
    return act is None or isinstance(act, nn.Identity)


def cov_over_sd(cov: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """cov / √var, and 0 where var = 0 (then cov = 0 too): the regression slope of u on v/√var, as in
    E[u φ(v)] = cov/√var · E[z φ(√var z)]. Finite gradients at var = 0."""
    sd = safe_sqrt(var)
    nonzero = sd > 0
    return torch.where(nonzero, cov / torch.where(nonzero, sd, torch.ones_like(sd)), 0 * cov)
