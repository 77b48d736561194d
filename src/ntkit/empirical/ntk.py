"""``ntkit.empirical_ntk``: the finite-width NTK Θ̂(x1, x2) = J(x1) J(x2)ᵀ of any PyTorch model."""

from __future__ import annotations

import math

import torch

from .._functional import (
    FunctionalModel,
    ModelArg,
    ParamsArg,
    check_input_dtype,
    functionalize,
    translate_transform_errors,
)
from .._memory import check_fits, resolve_budget
from .._progress import progress_bar
from .._validation import check_input_pair, check_positive_int, format_shape, same_examples
from ..errors import InvalidArgumentError, MemoryBudgetError, ShapeError
from .blocks import KernelMethod, assemble, assemble_diagonal, block_count, counted
from .cost import BlockPlan, Problem, plan_blocks
from .jacobian import JacobianMethod
from .ntvp import NtvpMethod
from .structured import StructuredMethod
from .tracing import ModelTrace, cached_trace

__all__ = ["METHODS", "choose_method", "empirical_ntk", "unlimited_choice"]

METHODS: dict[str, type] = {"structured": StructuredMethod, "jacobian": JacobianMethod, "ntvp": NtvpMethod}

#: ``method="auto"`` decides problems below this many FLOPs (the Jacobian method's estimate) by fixed costs, not
#: FLOPs: the structured method where no parameter falls back to Jacobian contraction (it then runs plain autograd
#: on the whole batch, no per-example transforms), else the Jacobian method (one batched reverse pass and one matrix
#: product per parameter tensor, the torch.func recipe's own steps) (benchmarks/empirical.py, case tinycnn).
TINY_FLOPS = 1e9


def empirical_ntk(
    model: ModelArg,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    params: ParamsArg = None,
    method: str = "auto",
    trace_outputs: bool = True,
    diagonal: bool = False,
    chunk_size: int | None = None,
    memory_budget: int | str | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """The empirical NTK Θ̂(x1, x2) = J(x1) J(x2)ᵀ, J = ∂f/∂θ over the selected parameters (theory.md §1.3, eq. 4).

    Args:
        model: a ``torch.nn.Module`` mapping a batch (N, ...) to outputs (N, ...) (flattened to (N, O)), or a
            function ``f(params, x)`` with ``params`` a dict of tensors. Examples must be independent: BatchNorm
            or dropout in train mode raise :class:`~ntkit.errors.BatchCouplingError` (call ``model.eval()``).
        x1: inputs (N1, ...); floating point in the model's dtype, or integer token ids.
        x2: inputs (N2, ...) with the same per-example shape; ``None`` means x1 (the symmetry is used: only the
            blocks on and above the diagonal are computed).
        params: which parameters count: ``None`` (every parameter with ``requires_grad``), a list of names or
            ``fnmatch`` patterns (``["head.*"]``, ``["*.bias"]``), a predicate on names, or a dict of tensors
            (these parameters at these values). The others and all buffers stay fixed.
        method: ``"jacobian"`` (per-example Jacobians, contracted), ``"ntvp"`` (vjp then jvp, J(x1) never
            formed), ``"structured"`` (per-layer structure: Gram products of layer inputs and output
            cotangents for linear/conv weights, index equality for embeddings, small Jacobians for biases and
            normalisation parameters, Jacobian contraction for everything else), or ``"auto"``. All are exact.
            ``"auto"`` estimates the FLOPs of each method from the shapes seen in one traced forward pass and
            takes the cheapest (details in :mod:`ntkit.empirical.cost`), except that problems the Jacobian
            method does in under ``TINY_FLOPS`` (1e9) go to the method with the smallest fixed costs per call:
            structured if no parameter falls back to Jacobian contraction, else jacobian. With FP the
            FLOPs of one example's forward pass, P the selected parameters and a = 1 (traced) or 2 (full):
            jacobian (1 + 2·O)·FP per example + 2·O^a·P per pair of examples; ntvp (1 + 2·O)·FP per x2
            example + 2·O·FP per pair; structured (1 + O)·FP per example + per pair, for each weight with
            L positions, the cheaper of 2·L²·(d_in + O^a·d_out) (Gram form) and 2·O^a·d_in·d_out (after
            2·O·L·d_in·d_out per example to form its Jacobian), and 2·O^a·P_k for the other parameters. The
            total counts features that chunking computes more than once.
        trace_outputs: ``True``: the mean over outputs of the diagonal output blocks, (N1, N2), the estimate of
            the per-output infinite-width kernel; ``False``: the full kernel (N1, N2, O, O).
        diagonal: only Θ̂(x1_n, x2_n) (x2 ``None`` or with N2 = N1): (N1,) or (N1, O, O); its cost is linear in N.
        chunk_size: examples per block on each side (default: the largest block that fits the budget).
        memory_budget: bytes (or a string such as ``"4G"``) that intermediates may use; default a quarter of
            the free memory of the inputs' device (or ``NTKIT_MEMORY_BUDGET``); a call that needs at most 32 MiB
            in all does not read the free memory (it fits any budget). A result that does not fit raises
            :class:`~ntkit.errors.MemoryBudgetError` before anything is computed.
        progress: show a tqdm progress bar over the blocks (needs ``tqdm``).

    Returns:
        A tensor in the model's dtype on the inputs' device: (N1, N2), (N1, N2, O, O), (N1,) or (N1, O, O).
    """
    if method != "auto" and method not in METHODS:
        raise InvalidArgumentError(f"unknown method {method!r}; use one of 'auto', {', '.join(map(repr, METHODS))}.")
    check_positive_int(chunk_size, "chunk_size", allow_none=True)
    x1, x2 = check_input_pair(x1, x2, allow_integer=True)
    x2 = same_examples(x1, x2)
    if diagonal and x2 is not None and x2.shape[0] != x1.shape[0]:
        raise ShapeError(
            f"diagonal=True pairs x1[n] with x2[n], so they need the same number of examples; got "
            f"{format_shape(x1.shape)} and {format_shape(x2.shape)}."
        )
    fm = functionalize(model, params)
    check_input_dtype(fm, x1)
    trace = cached_trace(fm, x1)
    n1 = x1.shape[0]
    problem = Problem(
        n1=n1,
        n2=n1 if x2 is None else x2.shape[0],
        symmetric=x2 is None,
        diagonal=diagonal,
        full=not trace_outputs,
        n_outputs=trace.n_outputs,
    )
    o = trace.n_outputs
    shape = ((n1,) if diagonal else (n1, problem.n2)) + (() if trace_outputs else (o, o))
    itemsize = fm.dtype.itemsize
    result_bytes = math.prod(shape) * itemsize
    _, unlimited = unlimited_choice(fm, trace, problem, method, chunk_size, itemsize)
    budget = resolve_budget(memory_budget, x1.device, result_bytes + unlimited.peak_bytes)
    check_fits(
        result_bytes,
        budget,
        f"the kernel of shape {format_shape(shape)} in {fm.dtype}",
        "Compute it in pieces (slices of x1 and x2), use trace_outputs=True or diagonal=True, or raise memory_budget.",
    )
    chosen, plan = choose_method(fm, trace, problem, method, budget - result_bytes, chunk_size, itemsize)
    n_blocks = block_count(x1.shape[0], problem.n2, plan.size, x2 is None, diagonal)
    with translate_transform_errors(), progress_bar(progress, n_blocks, "nk.empirical_ntk", "block") as bar:
        if diagonal:
            out = assemble_diagonal(counted(chosen, bar), x1, x2, not trace_outputs, plan.size)
        else:
            out = assemble(counted(chosen, bar), x1, x2, not trace_outputs, plan.size)
    return out.div_(o) if trace_outputs else out


def choose_method(
    fm: FunctionalModel,
    trace: ModelTrace,
    problem: Problem,
    method: str,
    budget: float,
    chunk_size: int | None,
    itemsize: int,
) -> tuple[KernelMethod, BlockPlan]:
    """The method asked for, or for ``"auto"`` the one with the fewest estimated FLOPs, with its block plan for
    ``budget`` bytes. Where the choice for an unlimited budget (:func:`unlimited_choice`) fits, it is the choice:
    a smaller budget only shrinks blocks, which never lowers a method's FLOPs (the ``TINY_FLOPS`` rule is then read
    on the unlimited plans); else every method is planned for the budget."""
    name, plan = unlimited_choice(fm, trace, problem, method, chunk_size, itemsize)
    if plan.peak_bytes > budget:
        name, plan = _choose(fm, trace, problem, method, budget, chunk_size, itemsize)
    return METHODS[name](fm, trace, problem), plan


def unlimited_choice(
    fm: FunctionalModel, trace: ModelTrace, problem: Problem, method: str, chunk_size: int | None, itemsize: int
) -> tuple[str, BlockPlan]:
    """:func:`choose_method`'s choice (the method's name) and plan without a memory limit, kept with the trace: it
    depends only on the traced shapes and the problem, so that warm calls neither build nor plan every method.
    Its ``peak_bytes`` is the most the call can use: a budget of that much changes nothing."""
    key = ("unlimited choice", problem, method, chunk_size, itemsize)
    return trace.memo(key, lambda: _choose(fm, trace, problem, method, math.inf, chunk_size, itemsize))


def _choose(
    fm: FunctionalModel,
    trace: ModelTrace,
    problem: Problem,
    method: str,
    budget: float,
    chunk_size: int | None,
    itemsize: int,
) -> tuple[str, BlockPlan]:
    """The name of the chosen method and its block plan for ``budget`` bytes (see :func:`choose_method`)."""
    candidates, refusals = {}, []
    for name in METHODS if method == "auto" else [method]:
        cost = METHODS[name](fm, trace, problem).cost()
        try:
            candidates[name] = plan_blocks(
                cost, problem, itemsize, budget, chunk_size, f"the {name} method on this model"
            )
        except MemoryBudgetError as err:
            refusals.append(err)
    if not candidates:
        raise refusals[0]
    if method == "auto" and "jacobian" in candidates and candidates["jacobian"].flops < TINY_FLOPS:
        name = "structured" if "structured" in candidates and not trace.fallback else "jacobian"
    else:
        name = min(candidates, key=lambda n: candidates[n].flops)
    return name, candidates[name]
