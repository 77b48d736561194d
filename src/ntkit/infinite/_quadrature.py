"""Gaussian expectations of elementwise functions by quadrature (private; see ``nn/_gaussian.py`` for the shared one).

``pair_expectation(f, g, var1, cov, var2)`` = E[f(u) g(v)], (u, v) ~ N(0, [[var1, cov], [cov, var2]]), and
``expectation(f, var)`` = E[f(u)], u ~ N(0, var), computed in polar coordinates. With u = √var1 r cos θ and
v = √var2 r cos(θ − φ), φ = arccos ρ, the angles where u = 0 or v = 0 do not depend on r, so the half-circle is
split there and each piece integrated by Gauss-Legendre in θ, after pairing θ with θ + π:

    E[f(u) g(v)] = (1/2π) ∫_0^π dθ ∫_0^∞ r e^{-r²/2} [f(u) g(v) + f(−u) g(−v)] dr,

and r by the Gauss rule of the weight r e^{-r²/2} on [0, ∞) (built once by the discretised Stieltjes procedure),
exact for polynomials in r, so for positively homogeneous functions of any degree.

Accuracy (tests/infinite/test_quadrature.py):

- functions that are piecewise linear (or positively homogeneous) with kinks or jumps at 0 (ReLU, LeakyReLU,
  Abs, Sign, their derivatives, sums and compositions): exact up to round-off, where a tensor-product
  Gauss-Hermite rule has errors of order 1/degree (0.3% at degree 64 for ReLU);
- smooth functions: relative error below 1e-7 while they change on scales no smaller than about a third of
  the standard deviation (erf(b x): b² var <= 8), 5e-7 at b² var = 18, 2e-5 at b² var = 50.

So every result is checked against rules coarser in angle and in radius, and
:class:`~ntkit.errors.UnsupportedError` is raised where either differs by more than ``TOLERANCE`` of the value
(plus ``FLOOR`` of the Cauchy-Schwarz bound √(E f(u)² E g(v)²), for values near zero): results are accurate or
refused, never silently wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import numpy as np
import torch

from ..errors import UnsupportedError

__all__ = ["expectation", "pair_expectation"]

ElementwiseFn = Callable[[torch.Tensor], torch.Tensor]

#: Rule sizes (nodes per angular segment, radial nodes) of the result and of the coarser rules that estimate its
#: error; results are accepted where both differ by at most TOLERANCE·|value| + FLOOR·√(E f² E g²).
ANGLE_NODES, RADIUS_NODES = 16, 32
CHECK_ANGLE_NODES, CHECK_RADIUS_NODES = 12, 20
TOLERANCE, FLOOR = 1e-4, 1e-10


@cache
def _legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1) / 2, w / 2  # on [0, 1]


@cache
def _radial(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss rule for ∫_0^∞ h(r) r e^{-r²/2} dr: the recurrence of the orthonormal polynomials of this weight by
    the Stieltjes procedure on a fine discretisation of [0, 20] (Gauss-Legendre on 100 panels; the weight's tail
    beyond 20 is e^{-200}), then the Golub-Welsch eigenvalue problem. Moments of degree < 2n come out exact to
    1e-9 at n = 32 (1e-13 for low degrees)."""
    x, w = _legendre(20)
    edges = np.linspace(0.0, 20.0, 101)
    r = (edges[:-1, None] + 0.2 * x).ravel()
    weight = (0.2 * w * np.ones((100, 1))).ravel() * r * np.exp(-r * r / 2)
    mu0 = weight.sum()
    alpha, beta = np.zeros(n), np.zeros(n)
    q_prev, q = np.zeros_like(r), np.full_like(r, 1 / math.sqrt(mu0))
    for k in range(n):
        alpha[k] = np.sum(weight * r * q * q)
        v = (r - alpha[k]) * q - beta[k] * q_prev
        if k + 1 < n:
            beta[k + 1] = math.sqrt(np.sum(weight * v * v))
            q_prev, q = q, v / beta[k + 1]
    nodes, vectors = np.linalg.eigh(np.diag(alpha) + np.diag(beta[1:], 1) + np.diag(beta[1:], -1))
    return nodes, mu0 * vectors[0] ** 2


def _nodes(arrays: tuple[np.ndarray, ...], like: torch.Tensor) -> list[torch.Tensor]:
    return [torch.as_tensor(a, dtype=like.dtype, device=like.device) for a in arrays]


def _one(x: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(x)


def expectation(f: ElementwiseFn, var: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """E[f(u)] for u ~ N(0, var), elementwise over ``var`` (any shape)."""
    return pair_expectation(f, _one, var, torch.zeros_like(var), var, check=check)


def pair_expectation(
    f: ElementwiseFn,
    g: ElementwiseFn,
    var1: torch.Tensor,
    cov: torch.Tensor,
    var2: torch.Tensor,
    n_angle: int = ANGLE_NODES,
    n_radius: int = RADIUS_NODES,
    *,
    check: bool = True,
) -> torch.Tensor:
    """E[f(u) g(v)] for (u, v) ~ N(0, [[var1, cov], [cov, var2]]), elementwise over broadcastable tensors.

    ``f`` and ``g`` are evaluated on tensors with one extra trailing axis (the radial nodes). With ``check``,
    raises :class:`~ntkit.errors.UnsupportedError` where the coarser rules disagree (module docstring).
    """
    value = _polar(f, g, var1, cov, var2, n_angle, n_radius)
    if check and value.device.type != "meta" and value.numel():
        with torch.no_grad():
            zero1, zero2 = torch.zeros_like(var1), torch.zeros_like(var2)
            # Cauchy-Schwarz: |E f g| <= √(E f² E g²), each a function of one variance (cheap on its own shape).
            bound = torch.sqrt(
                _polar(lambda x: f(x) ** 2, _one, var1, zero1, var1, n_angle, n_radius).abs()
                * _polar(lambda x: g(x) ** 2, _one, var2, zero2, var2, n_angle, n_radius).abs()
            )
            allowed = TOLERANCE * value.abs() + FLOOR * bound
            # Coarser in each direction separately, so that one coincidence cannot hide an error.
            worst = max(
                float(((value - _polar(f, g, var1, cov, var2, *rule)).abs() / allowed.clamp_min(1e-300)).max())
                for rule in ((CHECK_ANGLE_NODES, n_radius), (n_angle, CHECK_RADIUS_NODES))
            )
        if worst > 1:
            raise UnsupportedError(
                "Gaussian quadrature for an elementwise function did not converge at pre-activation variances up "
                f"to {float(torch.maximum(var1.max(), var2.max())):.3g}: the function is too steep at this scale. "
                "Reduce W_std, or estimate the kernel with nk.monte_carlo_kernel."
            )
    return value


def _polar(f, g, var1, cov, var2, n_angle: int, n_radius: int) -> torch.Tensor:
    """The polar rule (module docstring) with ``n_angle`` nodes per angular segment and ``n_radius`` radial ones."""
    var1, cov, var2 = torch.broadcast_tensors(var1, cov, var2)
    s1, s2 = _safe_sqrt(var1), _safe_sqrt(var2)
    denom = s1 * s2
    positive = denom > 0
    rho = torch.where(positive, cov / torch.where(positive, denom, torch.ones_like(denom)), torch.zeros_like(cov))
    rho = rho.clamp(-1.0, 1.0)
    phi = torch.atan2(_safe_sqrt(1 - rho * rho), rho)  # in [0, π]
    # The zero lines: u = 0 at θ = π/2, v = 0 at θ = φ ± π/2; both taken in [0, π).
    theta_v = torch.where(phi < math.pi / 2, phi + math.pi / 2, phi - math.pi / 2)
    lo = torch.minimum(theta_v, torch.full_like(theta_v, math.pi / 2))
    hi = torch.maximum(theta_v, torch.full_like(theta_v, math.pi / 2))
    r, r_weights = _nodes(_radial(n_radius), var1)
    a_nodes, a_weights = _nodes(_legendre(n_angle), var1)
    s1, s2, phi = s1.unsqueeze(-1), s2.unsqueeze(-1), phi.unsqueeze(-1)
    total = torch.zeros_like(var1)
    for start, stop in ((torch.zeros_like(lo), lo), (lo, hi), (hi, torch.full_like(hi, math.pi))):
        width = stop - start
        for a, wa in zip(a_nodes, a_weights, strict=True):
            theta = (start + a * width).unsqueeze(-1)
            u = s1 * r * torch.cos(theta)
            v = s2 * r * torch.cos(theta - phi)
            radial = ((f(u) * g(v) + f(-u) * g(-v)) * r_weights).sum(-1)
            total = total + wa * width * radial
    return total / (2 * math.pi)


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))
