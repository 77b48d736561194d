"""Preconditioned conjugate gradients for (K + μI) X = B.

CG (Hestenes & Stiefel 1952; preconditioned form: Saad, "Iterative Methods for Sparse Linear Systems", Alg. 9.1)
runs one independent recursion per column of B in float64, sharing each product with K (one pass over the
kernel per iteration). The preconditioners are in :mod:`ntkit.scale.preconditioners`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..errors import NotConvergedError

__all__ = ["CGResult", "Operator", "conjugate_gradients", "one_thread"]

Operator = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CGResult:
    """The solution X (N, C), the iterations run, and the largest relative residual ‖B − A X‖ / ‖B‖ of a column."""

    solution: torch.Tensor
    iterations: int
    residual: float


def conjugate_gradients(
    matvec: Operator,
    b: torch.Tensor,
    *,
    preconditioner: Operator | None = None,
    tol: float,
    max_iter: int,
    label: str = "the kernel system",
) -> CGResult:
    """Solve A X = B for a symmetric positive definite A given by ``matvec`` (B (N, C) float64).

    Stops when every column's relative residual ‖r‖ / ‖b‖ <= ``tol``; columns that converged stop changing.
    Raises :class:`NotConvergedError` after ``max_iter`` iterations.
    """
    apply_p = preconditioner or (lambda r: r)
    x = torch.zeros_like(b)
    r = b.clone()
    norms = b.norm(dim=0).clamp_min(torch.finfo(b.dtype).tiny)
    active = (r.norm(dim=0) / norms) > tol
    z = apply_p(r)
    p = z.clone()
    rz = (r * z).sum(0)
    residual = float((r.norm(dim=0) / norms).max())
    for iteration in range(1, max_iter + 1):
        if not bool(active.any()):
            return CGResult(x, iteration - 1, residual)
        q = matvec(p)
        pq = (p * q).sum(0)
        alpha = torch.where(active & (pq > 0), rz / torch.where(pq > 0, pq, 1.0), 0.0)
        x += alpha * p
        r -= alpha * q
        relative = r.norm(dim=0) / norms
        residual = float(relative.max())
        active = active & (relative > tol)
        z = apply_p(r)
        rz_new = (r * z).sum(0)
        beta = torch.where(active, rz_new / torch.where(rz != 0, rz, 1.0), 0.0)
        p = z + beta * p
        rz = rz_new
    if not bool(active.any()):
        return CGResult(x, max_iter, residual)
    raise NotConvergedError(
        f"conjugate gradients on {label} did not converge in {max_iter} iterations: relative residual {residual:.3g} "
        f"> tol {tol:g}. Raise max_iter, use a larger preconditioner rank, or a larger diag_reg (the kernel is "
        "ill-conditioned)."
    )


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run small LAPACK calls (r x r) single-threaded: MKL's waiting threads cost far more than such a call on
    shared cores (benchmarks/README.md, "Tuning notes")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
