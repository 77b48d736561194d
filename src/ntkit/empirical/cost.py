"""The cost model: FLOPs and memory of each method from shapes, the block size, and the automatic choice.

Notation (all per call of :func:`ntkit.empirical_ntk`): N1, N2 examples; O outputs; P selected parameters;
FP the FLOPs of one example's forward pass (2·m·k·n per matrix product, linear layer and convolution, plus
one per activation entry, counted in the traced forward pass); ACT the entries of all tensors one example's
forward creates; a = 1 for the traced kernel and 2 for the full one (the contraction over outputs is O-fold
or O²-fold).

Each method is described by a :class:`MethodCost`: for each side (x1, x2) the FLOPs and memory of one
example's *features* (what is computed per example before examples are paired), and the FLOPs and memory of
one *pair* (n, m) of the kernel:

=============  ===========================  =====================  ==================================
method         features per example         words held / example   per pair
=============  ===========================  =====================  ==================================
jacobian       (1 + 2·O)·FP                 O·P                    2·O^a·P
ntvp           x1: none; x2: (1 + 2·O)·FP   x2: O·P                2·O·FP (one jvp per tangent)
structured     (1 + O)·FP + rule work       Σ over parameters      Σ over parameters (see below)
=============  ===========================  =====================  ==================================

For structured, each weight of a linear or convolution layer (K groups, L positions, d_in, d_out) is
contracted in whichever form is cheaper over the whole kernel (P_W = K·d_in·d_out):

- Gram form: 2·K·L²·(d_in + O^a·d_out) per pair, nothing per example;
- Jacobian form: 2·O·L·P_W per example (building J from inputs and cotangents) and 2·O^a·P_W per pair.

Embeddings cost 2·O^a·D·min(L², V) per pair; other rule parameters and the fallback parameters cost as in
the Jacobian method (their per-example Jacobian is built from the recorded tensors or by ``jacrev``).

Memory: a block of b1 × b2 examples holds b1·words1 + b2·words2 + b·(2 + O)·ACT (activations and the
batched backward) + b1·b2·(pair intermediates) entries, on top of the result. :func:`plan_blocks` takes the
largest b whose block fits in the budget, and the total cost counts the features that chunking computes
more than once. ``method="auto"`` takes the method with the smallest total FLOPs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._memory import format_bytes
from ..errors import MemoryBudgetError

__all__ = ["BlockPlan", "MethodCost", "Problem", "SideCost", "plan_blocks"]


@dataclass(frozen=True)
class Problem:
    """The kernel asked for: sizes, whether x2 is x1, whether only the diagonal, whether full (O, O) blocks."""

    n1: int
    n2: int
    symmetric: bool
    diagonal: bool
    full: bool
    n_outputs: int

    @property
    def output_power(self) -> int:
        """a: the contraction over outputs is O^a-fold."""
        return 2 if self.full else 1

    @property
    def pairs(self) -> float:
        """Pairs of examples the contraction visits (rows when diagonal)."""
        return self.n1 if self.diagonal else self.n1 * self.n2

    @property
    def examples(self) -> int:
        """Examples whose features are computed (at least once)."""
        return self.n1 if self.symmetric else self.n1 + self.n2


@dataclass(frozen=True)
class SideCost:
    """Per example of one side: FLOPs of its features, entries held, entries while they are computed."""

    flops: float
    words: float
    transient: float


@dataclass(frozen=True)
class MethodCost:
    """Per-side feature costs; per pair of examples FLOPs and intermediate entries; and work redone for each
    block an example takes part in (``block_flops``, e.g. forming a weight's Jacobian from its factors)
    with the entries it needs (``workspace_words``)."""

    side1: SideCost
    side2: SideCost
    pair_flops: float
    pair_words: float
    same_features: bool
    block_flops: float = 0.0
    workspace_words: float = 0.0


@dataclass(frozen=True)
class BlockPlan:
    """Chunk size (examples per block on each side), its estimated peak bytes and the total FLOPs."""

    size: int
    peak_bytes: float
    flops: float


def _block_bytes(cost: MethodCost, problem: Problem, b: int, itemsize: int) -> float:
    b1, b2 = min(b, problem.n1), min(b, problem.n2)
    shared = cost.same_features and problem.symmetric and b >= problem.n1  # one block: x2's features are x1's
    pairs = b1 if problem.diagonal else b1 * b2
    transient = max(b1, b2) * max(cost.side1.transient, cost.side2.transient)
    features = b1 * cost.side1.words + (0 if shared else b2 * cost.side2.words)
    workspace = (b1 + (0 if shared else b2)) * cost.workspace_words
    return itemsize * (features + transient + workspace + pairs * cost.pair_words)


def _total_flops(cost: MethodCost, problem: Problem, b: int) -> float:
    n1, n2 = problem.n1, problem.n2
    f1, f2 = cost.side1.flops, cost.side2.flops
    if problem.diagonal:
        shared = cost.same_features and problem.symmetric
        return n1 * (f1 + (0 if shared else f2)) + n1 * (cost.pair_flops + cost.block_flops * (1 if shared else 2))
    if problem.symmetric:
        chunks = math.ceil(n1 / b)
        # row i computes its own features, then those of the chunks after it (all of them for ntvp's x2 side)
        extra = (chunks - 1) / 2 if cost.same_features else (chunks + 1) / 2
        pairs = min(b, n1) ** 2 * chunks * (chunks + 1) / 2
        return n1 * f1 + n1 * extra * f2 + pairs * cost.pair_flops + n1 * chunks * cost.block_flops
    rows, cols = math.ceil(n1 / b), math.ceil(n2 / b)
    x2_evaluations = 1 if cols == 1 else rows  # a single x2 chunk is computed once and kept
    block_examples = n1 * cols + n2 * rows
    return n1 * f1 + n2 * x2_evaluations * f2 + n1 * n2 * cost.pair_flops + block_examples * cost.block_flops


def plan_blocks(
    cost: MethodCost, problem: Problem, itemsize: int, budget: float, chunk_size: int | None, what: str
) -> BlockPlan:
    """The largest chunk size whose block fits in ``budget`` bytes (or ``chunk_size`` if given)."""
    n_max = max(problem.n1, problem.n2)

    def need(b: int) -> float:
        return _block_bytes(cost, problem, b, itemsize)

    if chunk_size is not None:
        size = min(chunk_size, n_max)
        if need(size) > budget:
            raise MemoryBudgetError(
                f"{what} with chunk_size={chunk_size} needs about {format_bytes(need(size))} per block, over the "
                f"memory budget of {format_bytes(budget)}. Use a smaller chunk_size, or leave it to ntkit."
            )
    elif need(n_max) <= budget:
        size = n_max  # one block (with x2 = x1 its features are computed once)
    else:
        if need(1) > budget:
            raise MemoryBudgetError(
                f"{what} needs about {format_bytes(need(1))} even for one example at a time, over the memory "
                f"budget of {format_bytes(budget)}. Raise memory_budget, select fewer parameters (params=...), "
                "or choose another method."
            )
        lo, hi = 1, n_max - 1
        while lo < hi:  # largest b with need(b) <= budget; need grows with b below n_max
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if need(mid) <= budget else (lo, mid - 1)
        size = lo
    return BlockPlan(size=size, peak_bytes=need(size), flops=_total_flops(cost, problem, size))
