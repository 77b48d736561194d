"""Hermite coefficients of an activation at a given input variance: the dual expansion behind the sketch method.

For u = √v·z with z ~ N(0, 1) and the normalised probabilists' Hermite polynomials h_j = He_j/√(j!), Mehler's
formula gives, for (u, u') with variances (v, v') and correlation ρ (Han et al. 2022, eq. 5; O'Donnell 2014 ch. 11):

    E[φ(u) φ(u')] = Σ_j c_j(v) c_j(v') ρ^j,    c_j(v) = E[φ(√v z) h_j(z)],

and the same for φ' (the NTK's Ṫ). ``coefficients`` returns c_0..c_q and the second moment E[φ(√v z)²] = Σ_j
c_j(v)², whose difference with the truncated sum is the tail mass the sketch method puts into one extra degree.

For the ReLU family φ(x) = a·min(x, 0) + b·max(x, 0) the coefficients are closed forms: φ is homogeneous, so
c_j(v) = √v·c_j(1), and with N_k = ∫₀^∞ He_k ϕ (N_0 = 1/2, N_k = He_{k-1}(0)·ϕ(0) since He_k ϕ = −(He_{k-1} ϕ)'),
z·He_j = He_{j+1} + j·He_{j-1} and the parity of He_j,

    c_j(1) = (b + (−1)^{j+1} a)(N_{j+1} + j N_{j-1}) / √(j!),     E[φ'(z) h_j(z)] = (b + (−1)^j a) N_j / √(j!).

Other activations use Gauss-Hermite quadrature in z with ``QUADRATURE_NODES`` nodes per example (accurate for
smooth φ; kinks other than at 0 converge slowly).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..gaussian.activations import ABReLU, Activation

__all__ = ["QUADRATURE_NODES", "coefficients"]

QUADRATURE_NODES = 96


def coefficients(
    act: Activation, var: torch.Tensor, degree: int, *, derivative: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c, m): c (B, degree + 1) = E[ψ(√v z) h_j(z)] for j = 0..degree and m (B,) = E[ψ(√v z)²], with ψ = φ
    (or φ' if ``derivative``) and v = ``var`` (B,), in var's dtype and device."""
    if isinstance(act, ABReLU):
        return _piecewise_linear(act, var, degree, derivative=derivative)
    nodes, weights = _gauss_hermite()
    z = torch.as_tensor(nodes, dtype=var.dtype, device=var.device)
    w = torch.as_tensor(weights, dtype=var.dtype, device=var.device)
    u = var.clamp_min(0).sqrt()[:, None] * z
    values = act.derivative(u) if derivative else act.fn(u)  # (B, nodes)
    basis = _normalized_hermite(z, degree) * w[:, None]  # (nodes, degree + 1)
    return values @ basis, (values * values) @ w


@functools.cache
def _gauss_hermite() -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of E[f(z)], z ~ N(0, 1), with ``QUADRATURE_NODES`` points."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(QUADRATURE_NODES)
    return nodes, weights / math.sqrt(2 * math.pi)


def _normalized_hermite(z: torch.Tensor, degree: int) -> torch.Tensor:
    """h_j(z) = He_j(z)/√(j!) for j = 0..degree, (len(z), degree + 1), by h_{j+1} = (z h_j − √j h_{j-1})/√(j+1)."""
    h = [torch.ones_like(z), z]
    for j in range(1, degree):
        h.append((z * h[j] - math.sqrt(j) * h[j - 1]) / math.sqrt(j + 1))
    return torch.stack(h[: degree + 1], dim=1)


def _half_line_integrals(n: int) -> list[float]:
    """N_k = ∫₀^∞ He_k(z) ϕ(z) dz for k = 0..n."""
    phi0 = 1 / math.sqrt(2 * math.pi)
    out = [0.5]
    for k in range(1, n + 1):
        m = k - 1  # He_m(0) = (−1)^{m/2} (m − 1)!! for even m, 0 for odd m
        he0 = 0.0 if m % 2 else (-1) ** (m // 2) * math.prod(range(m - 1, 0, -2))
        out.append(he0 * phi0)
    return out


def _piecewise_linear(
    act: ABReLU, var: torch.Tensor, degree: int, *, derivative: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = act.a, act.b
    n = _half_line_integrals(degree + 2)
    norm = [math.sqrt(math.factorial(j)) for j in range(degree + 1)]
    second_moment = (a * a + b * b) / 2  # E[φ(z)²] and E[φ'(z)²] alike
    if derivative:
        unit = [(b + (-1) ** j * a) * n[j] / norm[j] for j in range(degree + 1)]
        c = torch.tensor(unit, dtype=var.dtype, device=var.device).expand(var.shape[0], -1)
        return c, torch.full_like(var, second_moment)
    unit = [(b + (-1) ** (j + 1) * a) * (n[j + 1] + (j * n[j - 1] if j else 0.0)) / norm[j] for j in range(degree + 1)]
    scale = var.clamp_min(0)
    return scale.sqrt()[:, None] * torch.tensor(unit, dtype=var.dtype, device=var.device), second_moment * scale
