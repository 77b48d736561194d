"""Symmetric PSD kernel matrices: symmetry and PSD checks, ``diag_reg``, and the eigendecomposition.

Thresholds (``dim`` = matrix size, ``eps`` = machine epsilon of the coarser of the kernel's dtype and the
compute dtype; λ are eigenvalues after ``diag_reg``):

- symmetry: ``max|K − Kᵀ| <= sqrt(eps) · max|K|``, else :class:`NotPSDError` (a test-train kernel passed
  as a train kernel, say); the symmetric part is used.
- round-off: every eigenvalue with ``|λ| <= eps·tr(K)`` (= c·dim·eps·λ_max with c = tr(K)/(dim·λ_max) <= 1) is
  set to exactly 0, positive ones as well as negative ones: it is the null space at every t
  (:mod:`ntkit.predict.modes`: φ = 1, g = 0). Why eps·tr(K): round-off in an entry of a computed kernel is at most
  about eps·sqrt(K_ii·K_jj) (the size of the inner product's terms), so the error matrix E has
  ``‖E‖₂ <= ‖E‖_F <= eps·sqrt(Σ_ij K_ii·K_jj) = eps·tr(K)``, and by Weyl's inequality no eigenvalue moves by more:
  one below that cannot be told from 0. Inverting one (g ~ 1/λ at large t) multiplies round-off without bound (a
  float32 NTK of rank 81 on 600 points, its 519 round-off eigenvalues near 0.04·eps·λ_max, gave test outputs of
  26 instead of 1 at t = 1e12). Measured ‖E‖₂ of float32 empirical NTKs (300-2000 points) is 0.1-0.3·eps·λ_max,
  10-40 times below eps·tr(K) there, so the bound keeps a margin without dropping the many genuine eigenvalues
  that the cruder dim·eps·λ_max (up to dim times larger) would;
- clipped with a :class:`NumericalWarning` that gives λ_min: ``λ_min >= −max(1e-6, 10·dim·eps)·λ_max``;
- below that the kernel is not PSD: :class:`NotPSDError`. In float64 (dim·eps ~ 1e-13) the error threshold
  is 1e-6 relative.

A float32 kernel thus resolves eigenvalues down to about eps·tr(K) ~ 1e-7·tr(K): modes slower than that are not
learned at any t (compute the kernel in float64 to keep them).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .._memory import check_fits, resolve_budget
from ..errors import NotPSDError, NumericalWarning

__all__ = [
    "Eigensystem",
    "check_factorization_fits",
    "check_spectrum",
    "eigh_psd",
    "input_eps",
    "regularize",
    "stacked_matmul",
    "symmetric_part",
]

#: Relative size of the most negative eigenvalue that is clipped (with a warning) rather than rejected.
NEGATIVE_EIGENVALUE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Eigensystem:
    """K = V diag(λ) Vᵀ with λ (D,) ascending and clipped to >= 0, V (D, D) orthonormal columns."""

    values: torch.Tensor
    vectors: torch.Tensor

    def combine(self, factors: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """V diag(factors_t) Vᵀ b for every t, (T, D, C), from factors (T, D) and b (D, C), in one product."""
        coords = self.vectors.T @ b
        scaled = (factors.T[:, :, None] * coords[:, None, :]).reshape(coords.shape[0], -1)  # (D, T·C)
        return unstack(self.vectors @ scaled, factors.shape[0])


def stacked_matmul(k: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """k @ x_t for every t, (T, M, C), from k (M, D) and x (T, D, C), as one matrix product."""
    n_times, dim, cols = x.shape
    return unstack(k @ x.transpose(0, 1).reshape(dim, n_times * cols), n_times)


def unstack(m: torch.Tensor, n_times: int) -> torch.Tensor:
    """(R, T·C) -> (T, R, C)."""
    return m.reshape(m.shape[0], n_times, -1).transpose(0, 1)


def input_eps(*dtypes: torch.dtype) -> float:
    """Machine epsilon of the coarsest of ``dtypes``."""
    return max(torch.finfo(d).eps for d in dtypes)


def symmetric_part(k: torch.Tensor, name: str, eps: float) -> torch.Tensor:
    """(K + Kᵀ)/2, a new tensor, after checking that K is symmetric to round-off (see module docs).

    The check runs over blocks of rows so that it needs no second (D, D) temporary.
    """
    scale = float(k.abs().max())
    rows = max(1, 2**22 // k.shape[0])
    asym = max(float((k[i : i + rows] - k[:, i : i + rows].T).abs().max()) for i in range(0, k.shape[0], rows))
    if asym > eps**0.5 * scale:
        raise NotPSDError(
            f"{name} is not symmetric: max |K - K^T| = {asym:.3g} (relative {asym / scale:.2g}). A train-train "
            "kernel must be symmetric; did you pass a test-train kernel?"
        )
    return (k + k.T) / 2


def regularize(k: torch.Tensor, diag_reg: float, absolute: bool) -> float:
    """K + δ I, in place, with δ = ``diag_reg`` (absolute) or ``diag_reg`` × mean diagonal of K (relative);
    returns δ."""
    if diag_reg == 0:
        return 0.0
    diagonal = torch.diagonal(k)
    added = diag_reg if absolute else diag_reg * float(diagonal.mean())
    diagonal.add_(added)
    return added


def check_spectrum(values: torch.Tensor, name: str, eps: float) -> torch.Tensor:
    """Ascending eigenvalues ``values`` of a kernel, clipped to >= 0 (warning or error, see module docs), and those
    at round-off level (``|λ| <= eps·tr(K)``) set to exactly 0."""
    dim = values.numel()
    lam_max = float(values[-1])
    lam_min = float(values[0])
    if lam_max <= 0:
        raise NotPSDError(
            f"{name} has no positive eigenvalue (largest {lam_max:.3g}); a kernel of a model that depends on its "
            "parameters is positive semi-definite with a positive trace. Check what was passed."
        )
    roundoff = eps * float(values.sum())  # eps·tr(K)
    if lam_min < -roundoff:
        limit = max(NEGATIVE_EIGENVALUE_TOLERANCE, 10 * dim * eps) * lam_max
        n_neg = int((values < -roundoff).sum())
        what = (
            f"{name} has {n_neg} negative eigenvalue(s), the most negative {lam_min:.3g} "
            f"({lam_min / lam_max:.2g} of the largest, {lam_max:.3g})"
        )
        if lam_min < -limit:
            raise NotPSDError(
                f"{what}: it is not positive semi-definite (clipping is allowed down to -{limit / lam_max:.1g} of "
                "the largest eigenvalue). Compute the kernel in float64, check that it is a kernel of one model "
                f"at one set of parameters, or add diag_reg >= {-lam_min:.3g} with diag_reg_absolute_scale=True."
            )
        warnings.warn(
            f"{what}; clipped them to 0. Compute the kernel in float64 or pass diag_reg to avoid this.",
            NumericalWarning,
            stacklevel=3,
        )
    return torch.where(values > roundoff, values, torch.zeros_like(values))


def check_factorization_fits(dim: int, dtype: torch.dtype, device: torch.device, name: str) -> None:
    """Raise :class:`MemoryBudgetError` before a train kernel of size (dim, dim) is prepared and factored in
    ``dtype`` if that does not fit the memory budget (``NTKIT_MEMORY_BUDGET``, default a quarter of free memory).

    Every predictor checks this one rule (eigendecomposition, Cholesky, extreme eigenvalues): about 3·dim² numbers,
    the symmetrized kernel, its factor or eigenvectors, and the factorization's workspace.
    """
    check_fits(
        3 * dim * dim * (torch.finfo(dtype).bits // 8),
        resolve_budget(None, device),
        f"the eigendecomposition or Cholesky factorization of {name} ({dim}x{dim}, {dtype})",
        "Use a per-output kernel (trace_outputs=True) instead of a full (N, N, O, O) one, fewer training points, "
        "or raise the budget with NTKIT_MEMORY_BUDGET.",
    )


def eigh_psd(k: torch.Tensor, name: str, eps: float) -> Eigensystem:
    """Eigendecomposition of a symmetric PSD matrix (already symmetrized and regularized), eigenvalues clipped."""
    values, vectors = torch.linalg.eigh(k)
    return Eigensystem(check_spectrum(values, name, eps), vectors)
