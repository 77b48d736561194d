"""``ntkit.empirical_nngp``: the finite-width NNGP kernel f(x1) f(x2)ᵀ / O, or of a chosen layer's features."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .._functional import FunctionalModel, ModelArg, ParamsArg, check_input_dtype, functionalize, model_errors
from .._memory import check_fits, resolve_budget
from .._validation import check_input_pair, check_positive_int, format_shape, same_examples
from ..errors import ParameterSelectionError, ShapeError, UnsupportedError
from .blocks import chunk_for_budget, chunks
from .tracing import measure_forward

__all__ = ["empirical_nngp"]


def _layer_features(fm: FunctionalModel, layer: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """x (N, ...) -> features (N, F): the model's outputs, or the output of submodule ``layer`` flattened."""
    if layer is None:
        return lambda x: fm.fn(fm.params, x)
    if fm.module is None:
        raise UnsupportedError("layer= needs a torch.nn.Module; a plain function f(params, x) has no submodules.")
    try:
        sub = fm.module.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in fm.module.named_modules() if n][:12]
        raise ParameterSelectionError(
            f"layer {layer!r} is not a submodule of the model; its submodules include: {', '.join(names)}."
        ) from None

    def features(x: torch.Tensor) -> torch.Tensor:
        seen: list[object] = []
        handle = sub.register_forward_hook(lambda _m, _i, output: seen.append(output))
        try:
            fm.fn(fm.params, x)
        finally:
            handle.remove()
        if not seen:
            raise UnsupportedError(f"layer {layer!r} is not called in the model's forward pass.")
        out = seen[-1]
        if not isinstance(out, torch.Tensor):
            raise UnsupportedError(
                f"layer {layer!r} returns {type(out).__name__}, not a tensor; choose a submodule that returns one "
                "tensor with examples along its first axis."
            )
        if out.ndim == 0 or out.shape[0] != x.shape[0]:
            raise ShapeError(
                f"layer {layer!r} returns shape {format_shape(out.shape)} for a batch of {x.shape[0]}; its first "
                "axis must index the examples."
            )
        return out.reshape(out.shape[0], -1)

    return features


def empirical_nngp(
    model: ModelArg,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    params: ParamsArg = None,
    layer: str | None = None,
    trace_outputs: bool = True,
    diagonal: bool = False,
    chunk_size: int | None = None,
    memory_budget: int | str | None = None,
) -> torch.Tensor:
    """The empirical NNGP kernel K̂(x1, x2) = φ(x1) φ(x2)ᵀ / F (theory.md §1.3).

    φ is the model output (F = O outputs) or, with ``layer="name.of.submodule"``, that submodule's output
    flattened per example (F its feature count), e.g. the penultimate layer whose Gram matrix is the kernel of
    readout-only training (theory.md §3.3).

    Args:
        model, x1, x2, params: as in :func:`ntkit.empirical_ntk` (``params`` given as a dict sets parameter
            values; a selection by names changes nothing here, as no derivative is taken, and frozen
            parameters are fine).
        layer: name of a submodule whose output gives the features; its first axis must index the examples.
        trace_outputs: ``False`` gives the full output kernel f(x1)_a f(x2)_b, shape (N1, N2, O, O) (only
            with ``layer=None``).
        diagonal: only K̂(x1_n, x2_n): (N1,) or (N1, O, O).
        chunk_size, memory_budget: examples per forward pass (default: as many as fit the budget).

    Returns:
        (N1, N2), (N1, N2, O, O), (N1,) or (N1, O, O), in the model's dtype on the inputs' device.
    """
    check_positive_int(chunk_size, "chunk_size", allow_none=True)
    x1, x2 = check_input_pair(x1, x2, allow_integer=True)
    x2 = same_examples(x1, x2)
    if layer is not None and not trace_outputs:
        raise UnsupportedError("trace_outputs=False (per-output blocks) is defined for outputs only; use layer=None.")
    if diagonal and x2 is not None and x2.shape[0] != x1.shape[0]:
        raise ShapeError("diagonal=True pairs x1[n] with x2[n], so they need the same number of examples.")
    if params is None and isinstance(model, nn.Module):
        # no derivative is taken, so frozen parameters (requires_grad=False) are fine here
        params = {name: p.detach() for name, p in model.named_parameters()}
    fm = functionalize(model, params)
    check_input_dtype(fm, x1)
    features = _layer_features(fm, layer)
    out1, activation_words = measure_forward(fm, x1)
    budget = resolve_budget(memory_budget, x1.device)
    itemsize = fm.dtype.itemsize
    n1, n2 = x1.shape[0], (x1 if x2 is None else x2).shape[0]
    o = out1.shape[1]
    shape = ((n1,) if diagonal else (n1, n2)) + (() if trace_outputs else (o, o))
    check_fits(math.prod(shape) * itemsize, budget, f"the kernel of shape {format_shape(shape)} in {fm.dtype}")
    size = chunk_for_budget(max(n1, n2), 2 * activation_words * itemsize, budget, chunk_size)

    def all_features(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), model_errors(x):
            return torch.cat([features(x[rows]) for rows in chunks(x.shape[0], size)])

    f1 = all_features(x1)
    f2 = f1 if x2 is None else all_features(x2)
    if diagonal:
        kernel = (f1 * f2).sum(1) if trace_outputs else f1[:, :, None] * f2[:, None, :]
    else:
        kernel = f1 @ f2.T if trace_outputs else f1[:, None, :, None] * f2[None, :, None, :]
    return kernel / f1.shape[1] if trace_outputs else kernel
