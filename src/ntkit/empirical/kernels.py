"""Empirical NTK Θ̂(x1, x2) = J(x1) J(x2)ᵀ and NNGP f(x1) f(x2)ᵀ / O of a finite network.

First version: Jacobian contraction only (``method="jacobian"``). Faster methods follow.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import jacrev, vmap

from .._functional import ParamsArg, check_input_dtype, functionalize, translate_transform_errors
from .._validation import check_input_pair
from ..errors import UnsupportedError

__all__ = ["empirical_nngp", "empirical_ntk"]


def _jacobians(fm, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-parameter Jacobians, each of shape (N, O, P_k)."""

    def single(p, xi):
        return fm.fn(p, xi.unsqueeze(0)).squeeze(0)

    with translate_transform_errors():
        jac = vmap(jacrev(single), in_dims=(None, 0))(fm.params, x)
    return {k: v.reshape(v.shape[0], v.shape[1], -1) for k, v in jac.items()}


def empirical_ntk(
    model: nn.Module | Callable,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    params: ParamsArg = None,
    method: str = "auto",
    trace_outputs: bool = True,
    diagonal: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Empirical NTK Θ̂(x1, x2) = J(x1) J(x2)ᵀ, J the Jacobian of the outputs in the selected parameters.

    Returns (N1, N2) with ``trace_outputs`` (mean over outputs of the diagonal output blocks), else
    (N1, N2, O, O); with ``diagonal`` only Θ̂(x_i, x_i): (N1,) or (N1, O, O).
    """
    if method not in ("auto", "jacobian"):
        raise UnsupportedError(f"unknown method {method!r}")
    x1, x2 = check_input_pair(x1, x2, allow_integer=True)
    fm = functionalize(model, params)
    check_input_dtype(fm, x1)
    j1 = _jacobians(fm, x1)
    j2 = j1 if x2 is None else _jacobians(fm, x2)
    if diagonal:
        eq = "nap,nap->n" if trace_outputs else "nap,nbp->nab"
        out = sum(torch.einsum(eq, j1[k], j1[k]) for k in j1)
    else:
        eq = "nap,map->nm" if trace_outputs else "nap,mbp->nmab"
        out = sum(torch.einsum(eq, j1[k], j2[k]) for k in j1)
    if trace_outputs:
        out = out / next(iter(j1.values())).shape[1]
    return out


def empirical_nngp(
    model: nn.Module | Callable,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    params: ParamsArg = None,
) -> torch.Tensor:
    """Empirical NNGP f(x1) f(x2)ᵀ / O, shape (N1, N2)."""
    x1, x2 = check_input_pair(x1, x2, allow_integer=True)
    fm = functionalize(model, params)
    check_input_dtype(fm, x1)
    with torch.no_grad():
        f1 = fm.fn(fm.params, x1)
        f2 = f1 if x2 is None else fm.fn(fm.params, x2)
    return f1 @ f2.T / f1.shape[1]
