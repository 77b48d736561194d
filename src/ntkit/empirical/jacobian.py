"""Method ``"jacobian"``: per-example Jacobians J(x) of shape (N, O, P), contracted per parameter tensor.

J comes from ``vmap(jacrev(f))`` over the examples (one batched reverse pass per output); the kernel block
is J(x1) J(x2)ᵀ, one matrix product per parameter tensor (theory.md §1.3, eq. 4).

For a tiny chunk (:data:`BATCHED_FLOPS`) J comes instead from plain autograd on the whole chunk: one forward
pass of the N examples and one reverse pass batched over the N·O one-hot output cotangents (``is_grads_batched``).
The examples are independent (checked when the model was traced), so the gradient of f_o(x_n) with respect to the
parameters is row (n, o) of J; each reverse pass also runs through the other N − 1 examples, which costs
2·O·N·(N − 1)·FP more FLOPs, and saves the per-example transforms' dispatch, which costs more than a tiny model's
arithmetic. A forward pass that turns tensor values into Python objects (``.item()``, whose value autograd would
take as a constant, or ``bool(t)``, a branch on values) takes the per-example route, which refuses both with a
clear error, so that what a model may do does not depend on the chunk size.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch
from torch.func import jacrev, vmap
from torch.overrides import TorchFunctionMode

from .._functional import FunctionalModel
from .autodiff import autodiff_context
from .cost import MethodCost, Problem, SideCost
from .interception import VALUE_READS
from .terms import JacobianTerm, contract, contract_diagonal
from .tracing import ModelTrace

__all__ = ["BATCHED_FLOPS", "JacobianMethod", "batched_jacobians", "jacobian_side_cost", "per_example_jacobians"]

#: The Jacobian method takes the batched route (module docs) for a chunk whose extra reverse-pass work,
#: 2·O·N·(N − 1)·FP, is under this many FLOPs: measured on one core, the batched route stays ahead of the
#: per-example one up to 4-9e6 extra FLOPs (a 8-h-2 MLP: h = 16, N = 8: 0.58 against 0.99 ms per call; h = 128,
#: N = 24, 8.5e6: 1.09 against 1.22 ms; N = 32, 1.5e7: 1.38 against 1.29 ms).
BATCHED_FLOPS = 4e6


def per_example_jacobians(
    fm: FunctionalModel, x: torch.Tensor, names: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """d f_o(x_n) / d θ for the parameters ``names`` (default all selected): {name: (N, O, *shape)}."""
    chosen = {k: v for k, v in fm.params.items() if names is None or k in names}
    rest = {k: v for k, v in fm.params.items() if k not in chosen}

    def single(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return fm.fn({**rest, **p}, xi.unsqueeze(0)).squeeze(0)

    with autodiff_context(fm.module):
        jacobians: dict[str, torch.Tensor] = vmap(jacrev(single), in_dims=(None, 0))(chosen, x)
        return jacobians


class _ValueReads(TorchFunctionMode):
    """Notes whether the forward pass turns tensor values into Python objects (module docs)."""

    READS = VALUE_READS | {torch.Tensor.__bool__, torch.Tensor.__index__}

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def __torch_function__(
        self,
        func: Callable[..., Any],
        _types: Collection[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        self.seen |= func in self.READS
        return func(*args, **(kwargs or {}))


def batched_jacobians(fm: FunctionalModel, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """{name: (N, O, *shape)} like :func:`per_example_jacobians`, by the batched route (module docs); None if the
    forward pass turned tensor values into Python objects."""
    params = {k: v.detach().requires_grad_() for k, v in fm.params.items()}
    values_read = _ValueReads()
    with autodiff_context(fm.module), torch.enable_grad():
        with values_read:
            out = fm.fn(params, x)
        if values_read.seen:
            return None
        n, o = out.shape
        seeds = torch.eye(n * o, dtype=out.dtype, device=out.device).reshape(n * o, n, o)
        grads = torch.autograd.grad(
            out, list(params.values()), seeds, is_grads_batched=True, allow_unused=True, materialize_grads=True
        )
    # a parameter the outputs do not depend on gets one zero tensor of its own shape, not one per cotangent
    return {
        k: (g if g.dim() > p.dim() else g.expand(n * o, *p.shape)).reshape(n, o, *p.shape)
        for (k, p), g in zip(params.items(), grads, strict=True)
    }


def jacobian_side_cost(trace: ModelTrace, n_params: int) -> SideCost:
    """Per example: a forward pass and O backward passes (≈ 2·FP each), O·P Jacobian entries."""
    o = trace.n_outputs
    return SideCost(
        flops=(1 + 2 * o) * trace.forward_flops, words=o * n_params, transient=(2 + o) * trace.activation_words
    )


class JacobianMethod:
    name = "jacobian"
    same_features = True

    def __init__(self, fm: FunctionalModel, trace: ModelTrace, problem: Problem) -> None:
        self.fm, self.trace, self.problem = fm, trace, problem

    def cost(self) -> MethodCost:
        side = jacobian_side_cost(self.trace, self.trace.n_params)
        o_a = self.trace.n_outputs**self.problem.output_power
        return MethodCost(side, side, 2 * o_a * self.trace.n_params, o_a, same_features=True)

    def features(self, x: torch.Tensor) -> list[JacobianTerm]:
        jacobians = None
        if 2 * self.trace.n_outputs * x.shape[0] * (x.shape[0] - 1) * self.trace.forward_flops < BATCHED_FLOPS:
            jacobians = batched_jacobians(self.fm, x)
        if jacobians is None:
            jacobians = per_example_jacobians(self.fm, x)
        return [JacobianTerm(J.flatten(2)) for J in jacobians.values()]

    features2 = features

    def pair(self, f1: list[JacobianTerm], f2: list[JacobianTerm], full: bool) -> torch.Tensor:
        return contract(f1, f2, full)

    def diag(self, f1: list[JacobianTerm], f2: list[JacobianTerm], full: bool) -> torch.Tensor:
        return contract_diagonal(f1, f2, full)
