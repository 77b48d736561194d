"""``ntkit.ntk_vector_product``: Θ̂(x1, x2) v without forming Θ̂ (for iterative solvers)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import vjp

from .._functional import (
    ModelArg,
    ParamsArg,
    check_input_dtype,
    functionalize,
    model_errors,
    translate_transform_errors,
)
from .._memory import resolve_budget
from .._validation import check_input_pair, check_positive_int, check_tensor, format_shape
from ..errors import ShapeError
from .autodiff import autodiff_context, jacobian_vector_product
from .blocks import chunk_for_budget, chunks
from .tracing import measure_forward

__all__ = ["ntk_vector_product"]


def ntk_vector_product(
    model: ModelArg,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    v: torch.Tensor,
    *,
    params: ParamsArg = None,
    chunk_size: int | None = None,
    memory_budget: int | str | None = None,
) -> torch.Tensor:
    """Θ̂(x1, x2) v = J(x1) (J(x2)ᵀ v) with the full output-block kernel, without forming Θ̂ or J.

    ``out[n, a] = Σ_{m, b} Θ̂(x1_n, x2_m)[a, b] v[m, b]``: ``v`` of shape (N2, O) gives (N1, O); for a model
    with one output, ``v`` of shape (N2,) gives (N1,). This is the operator of the full (N·O × N·O) kernel
    used by exact finite-width dynamics, not of the output-averaged (traced) kernel. Cost: one vjp over x2
    (u = J(x2)ᵀ v, a vector in parameter space) and one jvp over x1 (J(x1) u; two reverse passes instead
    for models with an operation that has no forward-mode derivative), in chunks of examples that fit the
    memory budget. ``x2=None`` means x1. Other arguments as in :func:`ntkit.empirical_ntk`.
    """
    check_positive_int(chunk_size, "chunk_size", allow_none=True)
    x1, x2 = check_input_pair(x1, x2, allow_integer=True)
    x2 = x1 if x2 is None else x2
    fm = functionalize(model, params)
    check_input_dtype(fm, x1)
    out1, activation_words = measure_forward(fm, x1)
    n2, o = x2.shape[0], out1.shape[1]
    v = check_tensor(v, "v", min_ndim=1)
    squeeze = v.ndim == 1 and o == 1
    if squeeze:
        v = v[:, None]
    if tuple(v.shape) != (n2, o):
        expected = f"({n2}, {o})" + (f" or ({n2},)" if o == 1 else "")
        raise ShapeError(f"v must have shape {expected} (examples of x2, model outputs); got {format_shape(v.shape)}.")
    v = v.to(fm.dtype)
    itemsize = fm.dtype.itemsize
    budget = resolve_budget(memory_budget, x1.device)
    size = chunk_for_budget(max(x1.shape[0], n2), 3 * activation_words * itemsize, budget, chunk_size)

    def at(xs: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        return lambda p: fm.fn(p, xs)

    with autodiff_context(), model_errors(x1), translate_transform_errors():
        u = {k: torch.zeros_like(p) for k, p in fm.params.items()}
        for rows in chunks(n2, size):
            _, pull = vjp(at(x2[rows]), fm.params)  # type: ignore[misc]  # torch types vjp's result as a 2- or 3-tuple whatever has_aux is
            for k, g in pull(v[rows])[0].items():
                u[k] += g
        out = torch.cat([jacobian_vector_product(at(x1[rows]), fm.params, u) for rows in chunks(x1.shape[0], size)])
    return out[:, 0] if squeeze else out
