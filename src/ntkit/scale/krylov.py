"""Matrix functions times vectors, f(A) B, by the Lanczos method, for a symmetric A given only by products.

For one column b, m steps of Lanczos (Golub & Van Loan, "Matrix Computations", 4th ed., Algorithm 10.1.1) build
an orthonormal basis Q_m (N, m) of the Krylov space span{b, Ab, ..., A^{m−1} b} and the tridiagonal
T_m = Q_mᵀ A Q_m; then (Saad 1992, "Analysis of some Krylov subspace approximations to the matrix exponential
operator", SIAM J. Numer. Anal. 29; Golub & Van Loan §10.1.6)

    f(A) b ≈ ‖b‖ Q_m f(T_m) e_1 = ‖b‖ Q_m S f(Θ) Sᵀ e_1,    T_m = S diag(Θ) Sᵀ,

exact when m reaches the dimension of the Krylov space, and close long before for functions that are smooth on
A's spectrum (e^{−tA}, (1 − e^{−tA}) A⁻¹). The columns of B run side by side, sharing one product with A per
step (one pass over a stored kernel), each with its own T_m. Every new basis vector is orthogonalized against
all earlier ones, twice (full reorthogonalization, "twice is enough": Parlett, "The Symmetric Eigenvalue
Problem", §6.9), so Q_m stays orthonormal to round-off; memory is m + 1 vectors per column.

The iteration stops when every column's approximation changed by at most ``tol`` (relative) over the last
step, or when its Krylov space is exhausted (β = 0: the approximation is then exact).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import NotConvergedError
from .cg import Operator, one_thread

__all__ = ["KrylovResult", "lanczos_functions"]

#: ``functions(eigenvalues (m,)) -> values (F, m)``: F functions of A evaluated at the Ritz values.
Functions = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class KrylovResult:
    """``values`` (F, N, C): f_k(A) B; ``steps``: Lanczos steps (products with A); ``largest``: the largest Ritz
    value (a lower bound of A's largest eigenvalue, close to it after a few steps)."""

    values: torch.Tensor
    steps: int
    largest: float


def lanczos_functions(
    matvec: Operator,
    b: torch.Tensor,
    functions: Functions,
    *,
    tol: float,
    max_iter: int,
    label: str = "the kernel",
) -> KrylovResult:
    """f_k(A) B for the F functions of ``functions`` (module docs), for B (N, C) float64.

    Raises :class:`NotConvergedError` if some column's approximation still changes by more than ``tol``
    after ``max_iter`` steps.
    """
    n, c = b.shape
    norms = b.norm(dim=0)
    basis = torch.empty((min(max_iter + 1, 32), n, c), dtype=torch.float64)  # grown by doubling
    basis[0] = b / torch.where(norms > 0, norms, 1.0)
    alpha = torch.zeros((max_iter, c), dtype=torch.float64)
    beta = torch.zeros((max_iter, c), dtype=torch.float64)
    size = torch.where(norms > 0, max_iter + 1, 0)  # steps per column, set when its Krylov space is exhausted
    previous: torch.Tensor | None = None
    change = float("inf")
    for m in range(1, max_iter + 1):
        running = size >= m
        w = matvec(basis[m - 1])
        alpha[m - 1] = torch.where(running, (basis[m - 1] * w).sum(0), 0.0)
        for _ in range(2):  # full reorthogonalization, twice
            w -= torch.einsum("knc,kc->nc", basis[:m], torch.einsum("knc,nc->kc", basis[:m], w))
        beta[m - 1] = torch.where(running, w.norm(dim=0), 0.0)
        scale = alpha[:m].abs().amax(0) + beta[:m].amax(0)
        exhausted = running & (beta[m - 1] <= 1e3 * torch.finfo(torch.float64).eps * scale)
        size = torch.where(exhausted, m, size)
        if m == basis.shape[0]:
            basis = torch.cat([basis, torch.empty_like(basis[: min(m, max_iter + 1 - m)])])
        keep = size > m
        basis[m] = torch.where(keep, w / torch.where(keep, beta[m - 1], 1.0), 0.0)
        coefficients, largest = _coefficients(alpha[:m], beta[:m], torch.clamp(size, max=m), norms, functions)
        if previous is not None:
            difference = (coefficients - previous).norm(dim=1)  # ‖Q (y_m − y_{m−1})‖ = ‖y_m − y_{m−1}‖
            change = float((difference / coefficients.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)).max())
        previous = torch.cat([coefficients, torch.zeros_like(coefficients[:, :1])], dim=1)
        if change <= tol or not bool(keep.any()):
            return KrylovResult(torch.einsum("knc,fkc->fnc", basis[:m], coefficients), m, largest)
    raise NotConvergedError(
        f"the Lanczos approximation of f(A) B on {label} still changed by {change:.3g} (relative) after {max_iter} "
        f"steps (tol {tol:g}). Raise max_iter or tol, or use a larger diag_reg."
    )


def _coefficients(
    alpha: torch.Tensor, beta: torch.Tensor, sizes: torch.Tensor, norms: torch.Tensor, functions: Functions
) -> tuple[torch.Tensor, float]:
    """y (F, m, C) with f(A) b_c ≈ Q y[:, :, c]: y = ‖b_c‖ S f(Θ) Sᵀ e_1 from column c's T of its size (zero
    beyond it; a zero column stays zero), for alpha and beta (m, C); and the largest Ritz value. The functions
    are evaluated once, at the Ritz values of every column together."""
    m, c = alpha.shape
    ritz = []
    for col in range(c):
        k = int(sizes[col])
        off = beta[: max(k - 1, 0), col]
        with one_thread():
            ritz.append(torch.linalg.eigh(torch.diag(alpha[:k, col]) + torch.diag(off, 1) + torch.diag(off, -1)))
    thetas = torch.cat([theta for theta, _ in ritz])
    values = torch.split(functions(thetas), [theta.numel() for theta, _ in ritz], dim=1)  # (F, k) per column
    y = torch.zeros((values[0].shape[0], m, c), dtype=torch.float64)
    for col, ((_, s), v) in enumerate(zip(ritz, values, strict=True)):
        y[:, : s.shape[0], col] = float(norms[col]) * (v * s[0]) @ s.T
    return y, float(thetas.max()) if thetas.numel() else -math.inf
