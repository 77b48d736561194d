"""Preconditioners for conjugate gradients on K + μI (:mod:`ntkit.scale.cg`): randomized Nyström and pivoted
Cholesky, both of rank r; each is P⁻¹ applied to a block of vectors (N, C).

**Randomized Nyström** (Frangella, Tropp & Udell 2023, "Randomized Nyström preconditioning", SIAM J. Matrix
Anal. Appl., Algorithms 2.1 and 5.1): from one product Y = K Ω with a random orthonormal Ω (N, r), K ≈ U Λ̂ Uᵀ,
and

    P⁻¹ = (λ̂_r + μ) U (Λ̂ + μI)⁻¹ Uᵀ + (I − U Uᵀ),

which maps the r largest eigenvalues of K + μI close to λ̂_r + μ, so CG converges in about as many iterations as
the eigenvalues of K + μI beyond the r-th need. Cost: one pass over the kernel with r vectors.

**Pivoted Cholesky** (Harbrecht, Peters & Schneider 2012, "On the low-rank approximation by the pivoted Cholesky
decomposition", Appl. Numer. Math. 62, Algorithm 1; as a CG preconditioner: Gardner et al. 2018, "GPyTorch",
NeurIPS, §4): the greedy partial Cholesky factor L (N, r) of K, whose step m takes the example p with the largest
remaining diagonal d_p of K − L Lᵀ and appends the column

    l = (K[:, p] − L L[p]ᵀ) / √d_p,    d ← d − l²,

so that K − L Lᵀ stays positive semi-definite with trace Σ d (the error bound of the approximation). With
P = L Lᵀ + σI (σ = μ, or the mean remaining diagonal Σ d / N when μ = 0), by the Woodbury identity

    P⁻¹ = (I − L (σI + LᵀL)⁻¹ Lᵀ) / σ.

It needs the diagonal of K and the r pivot columns: these are read from the kernel in blocks of the ``block``
examples with the largest remaining diagonal (one pass over the tiles that hold them per block); the steps
themselves are the exact greedy algorithm, whatever the block size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .cg import Operator, one_thread

__all__ = ["NystromPreconditioner", "PivotedCholeskyPreconditioner"]

Columns = Callable[[torch.Tensor], torch.Tensor]


class NystromPreconditioner:
    """P⁻¹ of the randomized Nyström approximation of rank ``rank`` for K + μI (module docs).

    ``matvec`` computes K V for V (N, r); it is called once. ``seed`` fixes Ω. ``eps``: the unit round-off of
    that product (float32's when the sketch is computed in float32): it sets the stabilising shift ν.
    """

    def __init__(
        self,
        matvec: Operator,
        n: int,
        rank: int,
        shift: float,
        seed: int = 0,
        eps: float = torch.finfo(torch.float64).eps,
    ):
        rank = max(1, min(rank, n))
        g = torch.Generator().manual_seed(seed)
        omega = _orthonormal_columns(torch.randn(n, rank, generator=g, dtype=torch.float64))
        y = matvec(omega)
        nu = (n**0.5) * eps * float(y.norm())  # stabilising shift (their Alg. 2.1)
        y.add_(omega, alpha=nu)
        core = omega.T @ y
        del omega  # memory: at most two (N, r) matrices at a time from here on
        with one_thread():
            chol = torch.linalg.cholesky((core + core.T) / 2)
        b = torch.linalg.solve_triangular(chol, y.T, upper=False).T  # Y_ν C⁻ᵀ (N, r)
        del y
        # B = U Σ Vᵀ through the r x r Gram matrix BᵀB = V Σ² Vᵀ, U = B V Σ⁻¹ (directions with σ ~ 0 dropped)
        gram = b.T @ b
        with one_thread():
            s2, v = torch.linalg.eigh(gram)
        keep = s2 > s2.max() * rank * torch.finfo(torch.float64).eps
        s2, v = s2[keep].flip(0), v[:, keep].flip(1)
        u = (b @ v) / s2.sqrt()
        del b
        lam = (s2 - nu).clamp_min(0.0)
        self.u = u
        floor = float(lam[-1]) + shift
        # (λ̂_r + μ) / (λ̂_i + μ); the identity if the approximation is zero and there is no shift
        self.scale = floor / (lam + shift) if floor > 0 else torch.ones_like(lam)
        self.eigenvalues = lam

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        """P⁻¹ r for r (N, C)."""
        ur = self.u.T @ r
        out: torch.Tensor = r + self.u @ ((self.scale - 1.0)[:, None] * ur)
        return out


class PivotedCholeskyPreconditioner:
    """P⁻¹ = (L Lᵀ + σI)⁻¹ of the greedy pivoted Cholesky factor L (N, r) of K (module docs).

    ``diagonal``: K's diagonal (N,) float64; ``columns(index)``: K[:, index] (N, P) float64 for a long tensor of
    indices; ``shift`` μ >= 0. Stops before ``rank`` steps when the remaining diagonal is at round-off level.
    Attributes: ``factor`` L (N, r'), ``pivots`` (r',), ``remaining`` the diagonal of K − L Lᵀ (N,).
    """

    def __init__(self, diagonal: torch.Tensor, columns: Columns, rank: int, shift: float, block: int = 64):
        n = diagonal.shape[0]
        rank = max(1, min(rank, n))
        factor = torch.zeros((n, rank), dtype=torch.float64)
        d = diagonal.to(torch.float64).clone()
        floor = n * torch.finfo(torch.float64).eps * float(d.sum())
        fetched: dict[int, torch.Tensor] = {}
        pivots: list[int] = []
        for m in range(rank):
            p = int(d.argmax())
            if float(d[p]) <= floor:
                break
            if p not in fetched:  # the next block: the examples with the largest remaining diagonal
                fetched.clear()
                wanted = torch.topk(d, min(block, rank - m, n)).indices
                for q, column in zip(wanted.tolist(), columns(wanted).T, strict=True):
                    fetched[q] = column
            column = fetched.pop(p) - factor[:, :m] @ factor[p, :m]
            factor[:, m] = column / math.sqrt(float(d[p]))
            d -= factor[:, m] ** 2
            d[p] = 0.0  # exact: the pivot's own entry is interpolated
            pivots.append(p)
        self.factor = factor[:, : len(pivots)]
        self.pivots = torch.tensor(pivots, dtype=torch.long)
        self.remaining = d.clamp_min(0.0)
        self.sigma = shift if shift > 0 else float(self.remaining.mean())
        if self.sigma <= 0:  # K = L Lᵀ exactly and no shift: P = L Lᵀ is K itself
            self.sigma = torch.finfo(torch.float64).eps * float(diagonal.abs().max())
        inner = self.sigma * torch.eye(len(pivots), dtype=torch.float64) + self.factor.T @ self.factor
        with one_thread():
            self._inner = torch.linalg.cholesky(inner)

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        """P⁻¹ r for r (N, C)."""
        correction = self.factor @ torch.cholesky_solve(self.factor.T @ r, self._inner)
        out: torch.Tensor = (r - correction) / self.sigma
        return out


def _orthonormal_columns(a: torch.Tensor) -> torch.Tensor:
    """Q with orthonormal columns spanning those of a tall, well-conditioned a (N, r): Cholesky-QR twice, in
    matrix products and one r x r Cholesky each.
    """
    for _ in range(2):
        gram = a.T @ a
        with one_thread():
            r = torch.linalg.cholesky(gram)
        a = torch.linalg.solve_triangular(r, a.T, upper=False).T
    return a
