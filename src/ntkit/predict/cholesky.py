"""Solves with a PSD kernel matrix by Cholesky, with escalating jitter for singular kernels.

The factorization K = L Lᵀ is accepted when it succeeds and its smallest pivot is not at round-off
level: ``min(L_ii)² >= dim·eps·max(L_ii)²`` (``eps`` of the compute dtype). Otherwise jitter
``j × mean(diag K)`` is added, for j in :data:`JITTERS` in turn, with a :class:`NumericalWarning` that
says how much. If even the largest fails, :class:`IllConditionedError` (or :class:`NotPSDError` for a
clearly indefinite kernel) gives the spectrum, the condition number and the fix.

Why these levels: for a singular K the null-space eigenvalues are round-off, ~eps·λ_max, and a jitter j
turns them into ~j; the solve then amplifies that round-off by ~eps/j while biasing the rest by ~j/λ. The
first level, 1e-8 ≈ sqrt(eps) of float64, balances the two (relative error ~1e-8 on a rank-deficient
empirical NTK); the next ones handle kernels that are slightly indefinite (computed in float32, say).
"""

from __future__ import annotations

import warnings

import torch

from ..errors import IllConditionedError, NumericalWarning
from .eigen import check_spectrum

__all__ = ["JITTERS", "CholeskySolver"]

#: Jitter levels, relative to the mean diagonal, tried in turn after a failed factorization.
JITTERS = (1e-8, 1e-7, 1e-6)


def _factor(k: torch.Tensor) -> torch.Tensor | None:
    """L with K = L Lᵀ, or None if the factorization fails or its smallest pivot is at round-off level."""
    chol: torch.Tensor
    chol, info = torch.linalg.cholesky_ex(k)
    if int(info) != 0:
        return None
    pivots = torch.diagonal(chol) ** 2
    if not bool(torch.isfinite(pivots).all()):
        return None
    if float(pivots.min()) < k.shape[0] * torch.finfo(k.dtype).eps * float(pivots.max()):
        return None
    return chol


class CholeskySolver:
    """``solve(B) = K⁻¹ B`` for a symmetric PSD matrix K (D, D) (already symmetrized and regularized).

    ``jitter`` is the absolute jitter that was added (0.0 when none was needed).
    """

    def __init__(self, k: torch.Tensor, name: str, eps: float):
        self.jitter = 0.0
        chol = _factor(k)
        if chol is None:
            scale = float(torch.diagonal(k).mean())
            eye = torch.eye(k.shape[0], dtype=k.dtype, device=k.device)
            for rel in JITTERS:
                chol = _factor(k + rel * scale * eye)
                if chol is not None:
                    self.jitter = rel * scale
                    warnings.warn(
                        f"{name} is singular or too ill-conditioned to factor; added jitter {rel:g} x mean diagonal "
                        f"(= {self.jitter:.3g}) to its diagonal. Pass diag_reg (e.g. 1e-6 or more) to choose the "
                        "regularization yourself.",
                        NumericalWarning,
                        stacklevel=3,
                    )
                    break
            else:
                raise self._failure(k, name, eps)
        self._chol = chol

    @staticmethod
    def _failure(k: torch.Tensor, name: str, eps: float) -> Exception:
        values = torch.linalg.eigvalsh(k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NumericalWarning)
            check_spectrum(values, name, eps)  # raises NotPSDError when clearly indefinite
        lam_min, lam_max = float(values[0]), float(values[-1])
        cond = lam_max / lam_min if lam_min > 0 else float("inf")
        return IllConditionedError(
            f"{name} cannot be factored even with jitter {JITTERS[-1]:g} x mean diagonal: its eigenvalues range "
            f"from {lam_min:.3g} to {lam_max:.3g} (condition number {cond:.3g}). Pass diag_reg=1e-4 (relative to "
            "the mean diagonal) or larger, compute the kernel in float64, or remove duplicate training inputs."
        )

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        """K⁻¹ b for b of shape (D, C)."""
        return torch.cholesky_solve(b, self._chol)

    def whiten(self, b: torch.Tensor) -> torch.Tensor:
        """L⁻¹ b (K = L Lᵀ), so that bᵀ K⁻¹ b = (L⁻¹ b)ᵀ (L⁻¹ b) is symmetric PSD by construction."""
        out: torch.Tensor = torch.linalg.solve_triangular(self._chol, b, upper=False)
        return out
