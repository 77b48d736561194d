"""Gaussian expectations of elementwise functions by quadrature (private; see ``nn/_gaussian.py`` for the shared one).

- ``expectation(f, var)``: E[f(u)], u ~ N(0, var), by Gauss-Hermite with an even number of nodes. The nodes are
  symmetric with none at 0, so the rule integrates each half-line separately and functions with a kink or a
  jump at 0 (ReLU, its derivative) are integrated as accurately as smooth ones.
- ``pair_expectation(f, g, var1, cov, var2)``: E[f(u) g(v)], (u, v) ~ N(0, [[var1, cov], [cov, var2]]), in
  polar coordinates. With u = √var1 r cos θ and v = √var2 r cos(θ − φ), φ = arccos ρ, the angles where u = 0 or
  v = 0 do not depend on r, so the half-circle is split there and each piece integrated by Gauss-Legendre in θ,
  and r by Gauss-Laguerre in t = r²/2 after pairing θ with θ + π (the integrand becomes even in r):

      E[f(u) g(v)] = (1/2π) ∫_0^π dθ ∫_0^∞ e^{-t} [f(u) g(v) + f(−u) g(−v)] dt,   r = √(2t).

  Piecewise-smooth functions whose kinks sit at 0 (ReLU, LeakyReLU, Abs, Sign, and their compositions and
  sums) are then integrated to near machine precision with a few hundred nodes, where a tensor-product
  Gauss-Hermite rule has errors of order 1/degree (0.3% at degree 64 for ReLU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import numpy as np
import torch

__all__ = ["expectation", "pair_expectation"]

ElementwiseFn = Callable[[torch.Tensor], torch.Tensor]

#: Default rule sizes. The accuracy they give is measured in tests/infinite/test_quadrature.py.
HERMITE_NODES = 48
ANGLE_NODES = 8
RADIUS_NODES = 20


@cache
def _hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, w / math.sqrt(2 * math.pi)


@cache
def _legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1) / 2, w / 2  # on [0, 1]


@cache
def _laguerre(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.laguerre.laggauss(n)


def _nodes(arrays: tuple[np.ndarray, ...], like: torch.Tensor) -> list[torch.Tensor]:
    return [torch.as_tensor(a, dtype=like.dtype, device=like.device) for a in arrays]


def expectation(f: ElementwiseFn, var: torch.Tensor, n_nodes: int = HERMITE_NODES) -> torch.Tensor:
    """E[f(u)] for u ~ N(0, var), elementwise over ``var`` (any shape); ``n_nodes`` must be even."""
    if n_nodes % 2:
        raise ValueError("use an even number of Gauss-Hermite nodes (none at 0)")
    x, w = _nodes(_hermite(n_nodes), var)
    std = _safe_sqrt(var).unsqueeze(-1)
    return (f(std * x) * w).sum(-1)


def pair_expectation(
    f: ElementwiseFn,
    g: ElementwiseFn,
    var1: torch.Tensor,
    cov: torch.Tensor,
    var2: torch.Tensor,
    n_angle: int = ANGLE_NODES,
    n_radius: int = RADIUS_NODES,
) -> torch.Tensor:
    """E[f(u) g(v)] for (u, v) ~ N(0, [[var1, cov], [cov, var2]]), elementwise over broadcastable tensors.

    ``f`` and ``g`` are evaluated on tensors with one extra trailing axis (the radial nodes).
    """
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
    t_nodes, t_weights = _nodes(_laguerre(n_radius), var1)
    r = torch.sqrt(2 * t_nodes)
    a_nodes, a_weights = _nodes(_legendre(n_angle), var1)
    s1, s2, phi = s1.unsqueeze(-1), s2.unsqueeze(-1), phi.unsqueeze(-1)
    total = torch.zeros_like(var1)
    for start, stop in ((torch.zeros_like(lo), lo), (lo, hi), (hi, torch.full_like(hi, math.pi))):
        width = stop - start
        for a, wa in zip(a_nodes, a_weights, strict=True):
            theta = (start + a * width).unsqueeze(-1)
            u = s1 * r * torch.cos(theta)
            v = s2 * r * torch.cos(theta - phi)
            radial = ((f(u) * g(v) + f(-u) * g(-v)) * t_weights).sum(-1)
            total = total + wa * width * radial
    return total / (2 * math.pi)


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))
