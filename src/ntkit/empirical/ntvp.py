"""Method ``"ntvp"``: NTK-vector products, a vjp then a jvp; J(x1) is never formed.

For a chunk of x2 the rows J(x2)ᵀ e_{m,o} (one vjp per example and output, batched by ``vmap``) are the
tangents; one jvp of f(·, x1 chunk) per tangent gives the columns Θ̂(x1, x2_m)[:, :, o] (Novak et al. 2022,
§3.3). At most one x2 chunk of rows (b2·O·P entries) is held at a time.
"""

from __future__ import annotations

import torch
from torch.func import vmap

from .._functional import FunctionalModel
from .autodiff import autodiff_context, jacobian_vector_product
from .cost import MethodCost, Problem, SideCost
from .jacobian import jacobian_side_cost, per_example_jacobians
from .tracing import ModelTrace

__all__ = ["NtvpMethod"]


class NtvpMethod:
    name = "ntvp"
    same_features = False

    def __init__(self, fm: FunctionalModel, trace: ModelTrace, problem: Problem) -> None:
        self.fm, self.trace, self.problem = fm, trace, problem

    def cost(self) -> MethodCost:
        o, fp, act = self.trace.n_outputs, self.trace.forward_flops, self.trace.activation_words
        return MethodCost(
            SideCost(0.0, 0.0, 0.0),
            jacobian_side_cost(self.trace, self.trace.n_params),
            pair_flops=2 * o * fp,
            pair_words=2 * o * act + o**self.problem.output_power,
            same_features=False,
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def features2(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return per_example_jacobians(self.fm, x)

    def _push(self, x: torch.Tensor, tangent: dict[str, torch.Tensor]) -> torch.Tensor:
        """J(x) t: (N, O)."""
        return jacobian_vector_product(lambda p: self.fm.fn(p, x), self.fm.params, tangent)

    def pair(self, x1: torch.Tensor, rows: dict[str, torch.Tensor], full: bool) -> torch.Tensor:
        b2, o = next(iter(rows.values())).shape[:2]
        tangents = {k: v.reshape(b2 * o, *v.shape[2:]) for k, v in rows.items()}
        with autodiff_context():
            cols = vmap(lambda t: self._push(x1, t))(tangents)  # (b2·O, b1, O): [(m, o'), n, o]
        cols = cols.reshape(b2, o, x1.shape[0], o)
        if full:
            return cols.permute(2, 0, 3, 1)
        return cols.diagonal(dim1=1, dim2=3).sum(-1).T

    def diag(self, x1: torch.Tensor, rows: dict[str, torch.Tensor], full: bool) -> torch.Tensor:
        def own(xn: torch.Tensor, rows_n: dict[str, torch.Tensor]) -> torch.Tensor:  # (O', O)
            return vmap(lambda t: self._push(xn.unsqueeze(0), t)[0])(rows_n)

        with autodiff_context():
            block = vmap(own)(x1, rows).transpose(1, 2)  # (N, O, O')
        return block if full else block.diagonal(dim1=1, dim2=2).sum(-1)
