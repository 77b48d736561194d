"""Method ``"jacobian"``: per-example Jacobians J(x) of shape (N, O, P), contracted per parameter tensor.

J comes from ``vmap(jacrev(f))`` over the examples (one batched reverse pass per output); the kernel block
is J(x1) J(x2)ᵀ, one matrix product per parameter tensor (theory.md §1.3, eq. 4).
"""

from __future__ import annotations

import torch
from torch.func import jacrev, vmap

from .._functional import FunctionalModel
from .autodiff import autodiff_context
from .cost import MethodCost, Problem, SideCost
from .terms import JacobianTerm, contract, contract_diagonal
from .tracing import ModelTrace

__all__ = ["JacobianMethod", "jacobian_side_cost", "per_example_jacobians"]


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
        return [JacobianTerm(J.flatten(2)) for J in per_example_jacobians(self.fm, x).values()]

    features2 = features

    def pair(self, f1: list[JacobianTerm], f2: list[JacobianTerm], full: bool) -> torch.Tensor:
        return contract(f1, f2, full)

    def diag(self, f1: list[JacobianTerm], f2: list[JacobianTerm], full: bool) -> torch.Tensor:
        return contract_diagonal(f1, f2, full)
