"""Independent reference for Gaussian expectations: plain Monte Carlo over draws of (u, v) ~ N(0, Σ).

Nothing here uses ntkit. ``draw_pairs`` builds the pairs from two standard normal rows by the Cholesky
factor written out by hand (ρ = ±1 and zero variances included), so an expectation E[f(u) g(v)] can be
checked against its estimate with a standard error.
"""

from __future__ import annotations

import math

import torch


def draw_pairs(var1: float, cov: float, var2: float, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v) from z of shape (2, n): u = √var1 z0, v = cov/√var1 z0 + √(var2 − cov²/var1) z1 (float64)."""
    if var1 == 0:
        return torch.zeros_like(z[0]), math.sqrt(var2) * z[1]
    a = cov / math.sqrt(var1)
    return math.sqrt(var1) * z[0], a * z[0] + math.sqrt(max(var2 - a * a, 0.0)) * z[1]


def pairs_at(point: tuple[float, float, float], z: torch.Tensor):
    """For point = (var1, ρ, var2): draws (u, v) and the 0-d float64 tensors (var1, cov, var2)."""
    var1, rho, var2 = point
    cov = rho * math.sqrt(var1 * var2)
    u, v = draw_pairs(var1, cov, var2, z)
    return u, v, *(torch.tensor(float(a), dtype=torch.float64) for a in (var1, cov, var2))


def mc_mean(values: torch.Tensor) -> tuple[float, float]:
    """Sample mean and its standard error."""
    return float(values.mean()), float(values.std()) / math.sqrt(values.numel())


def assert_matches_mc(exact, values: torch.Tensor, what: str, n_se: float = 5.0) -> None:
    """|exact − mean(values)| ≤ n_se standard errors (+1e-12 for estimates with zero spread)."""
    mean, se = mc_mean(values)
    exact = float(exact)
    assert abs(exact - mean) <= n_se * se + 1e-12 * (1 + abs(exact)), (
        f"{what}: exact {exact:.6g}, Monte Carlo {mean:.6g} ± {se:.2g} ({(exact - mean) / max(se, 1e-300):.1f} SE)"
    )
