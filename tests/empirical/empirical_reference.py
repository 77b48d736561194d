"""Dense float64 reference kernels for the zoo models, built from :func:`reference.dense_jacobian`.

The dense Jacobians are computed once per model (plain autograd, one gradient per example and output) and
every kernel variant (x2 = x1 or not, traced or full, diagonal) is derived from them by explicit einsums.
"""

from __future__ import annotations

import functools

import torch
from empirical_zoo import MODELS

from reference import dense_jacobian

#: Relative Frobenius error allowed against the dense reference in float64. Both routes are exact, so the
#: difference is round-off (about 1e-16 per operation, summed over at most a few thousand terms); any
#: missing or wrong term would show up at 1e-3 or more.
TOL = 1e-10


@functools.cache
def case(name: str):
    """(model, x1, x2, J1, J2) for a zoo model, with a fixed seed."""
    torch.manual_seed(1234)
    model, x1, x2 = MODELS[name]()
    return model, x1, x2, dense_jacobian(model, x1), dense_jacobian(model, x2)


def kernel_from_jacobians(J1: torch.Tensor, J2: torch.Tensor, trace_outputs: bool, diagonal: bool = False):
    """Θ̂ from dense Jacobians (N, O, P): (N1, N2), (N1, N2, O, O), (N,) or (N, O, O)."""
    if diagonal:
        full = torch.einsum("nap,nbp->nab", J1, J2)
        return full.diagonal(dim1=1, dim2=2).mean(-1) if trace_outputs else full
    full = torch.einsum("nap,mbp->nmab", J1, J2)
    return full.diagonal(dim1=2, dim2=3).mean(-1) if trace_outputs else full
