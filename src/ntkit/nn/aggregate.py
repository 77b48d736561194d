"""``Aggregate``: graph aggregation (neural-tangents' Aggregate) over a fixed adjacency or over each example's own
graph, and its kernel map."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from ..errors import InvalidArgumentError, ShapeError
from ..infinite import transforms
from ..infinite.graphs import check_pattern, dense_adjacency
from ..infinite.kernel_type import Kernel
from .layer import KernelLayer

__all__ = ["Aggregate", "graph_patterns"]

#: The graphs of the batch being evaluated by the finite network (:func:`graph_patterns`).
_PATTERNS: ContextVar[torch.Tensor | None] = ContextVar("ntkit_graph_patterns", default=None)


@contextmanager
def graph_patterns(pattern: torch.Tensor) -> Iterator[None]:
    """Within the block, the ``Aggregate`` layers without a fixed adjacency use ``pattern``, one graph per
    example of the batch (dense (N, n, n) or sparse (N, n_edges, 2), as ``nk.kernel(..., pattern=)``):

        with N.graph_patterns(edges):
            y = net(x)          # any container: Sequential, Residual, torch.nn.Sequential, torch.func calls

    (neural-tangents passes ``pattern=`` to ``apply_fn``; a torch module's forward takes one input, so the graphs
    travel beside it.)"""
    token = _PATTERNS.set(check_pattern(pattern, None, "graph_patterns' pattern"))
    try:
        yield
    finally:
        _PATTERNS.reset(token)


class Aggregate(KernelLayer):
    """Each node becomes the weighted sum of its predecessors: y_j = Σ_i A[i, j] x_i along the node axis ``dim``
    (inputs (N, C, n) for graphs of n nodes, or any (N, C, *S) with the nodes on spatial axis ``dim`` >= 2;
    ``A[i, j]`` = the weight of the edge i -> j, neural-tangents' ``x @ A``).

    - ``Aggregate(adjacency, dim)``: one (n, n) adjacency A for every example;
    - ``Aggregate(dim=dim)``: each example its own graph (neural-tangents' per-example ``pattern``), given to the
      kernel as ``nk.kernel(net, x1, x2, pattern=(p1, p2))`` and to the finite network by
      :func:`graph_patterns` (or ``layer(x, pattern)``): dense (N, n, n) edge weights, or sparse (N, n_edges, 2)
      integer (tail, head) edges of weight 1 each, padded with (-1, -1) (:mod:`ntkit.infinite.graphs`).

    Kernel (theory.md §4.6; a linear map of the positions, as pooling, but the example's own): K'_ab(j, j') =
    Σ_{i, i'} A_a[i, j] A_b[i', j'] K_ab(i, i'), the same for Θ; the node axis needs the full layout
    (``mixes_positions``). Masked positions stay masked (neural-tangents' rule). Graph NNGP/NTK: stack Aggregate
    with Conv1d(kernel_size=1) or Linear-like layers and activations (a graph convolutional network), then
    GlobalSumPool/GlobalAvgPool for graph-level outputs.
    """

    mixes_positions = True
    mask_rule = "elementwise"  # the mask is kept and masked covariances zeroed, as neural-tangents

    def __init__(self, adjacency: torch.Tensor | None = None, dim: int = 2) -> None:
        super().__init__()
        if adjacency is not None:
            if not (
                isinstance(adjacency, torch.Tensor) and adjacency.ndim == 2 and adjacency.shape[0] == adjacency.shape[1]
            ):
                raise InvalidArgumentError(
                    f"adjacency must be a square (n, n) tensor of edge weights (or None: each example's graph is "
                    f"given with the inputs), got {type(adjacency).__name__}"
                    + (f" of shape {tuple(adjacency.shape)}" if isinstance(adjacency, torch.Tensor) else "")
                    + "."
                )
            if not adjacency.is_floating_point() or not bool(torch.isfinite(adjacency).all()):
                raise InvalidArgumentError("adjacency must hold finite floating-point edge weights.")
            adjacency = adjacency.detach().clone()  # not a buffer: a constant of the architecture, moved on use
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise InvalidArgumentError(f"dim is the node axis of (N, C, *spatial) inputs (2, 3, ...), got {dim!r}.")
        self.adjacency = adjacency
        self.dim = dim

    def _nodes(self, shape: tuple[int, ...], what: str) -> int:
        """The number of nodes of inputs with spatial shape ``shape`` (checked against a fixed adjacency)."""
        if len(shape) <= self.dim - 2:
            raise ShapeError(
                f"Aggregate's node axis is dim {self.dim}, but {what} has spatial shape {shape}; give inputs "
                "(N, C, *spatial) with the nodes on that axis."
            )
        n = shape[self.dim - 2]
        if self.adjacency is not None and self.adjacency.shape[0] != n:
            raise ShapeError(
                f"Aggregate's adjacency has {self.adjacency.shape[0]} nodes, but {what} has spatial shape {shape} "
                f"(nodes on dim {self.dim}); make the sizes agree."
            )
        return n

    def _adjacencies(self, pattern: torch.Tensor | None, n_examples: int, n: int, dtype: torch.dtype) -> torch.Tensor:
        """(n_examples, n, n): the fixed adjacency for every example, or each example's graph from ``pattern``."""
        if self.adjacency is not None:
            return self.adjacency.to(dtype).expand(n_examples, n, n)
        if pattern is None:
            raise InvalidArgumentError(
                "Aggregate() without an adjacency aggregates each example over its own graph: pass the graphs as "
                "nk.kernel(net, x1, x2, pattern=(p1, p2)) (pattern=p1 when x2 is None), and to the finite network "
                "as `with ntkit.nn.graph_patterns(p): net(x)`; or give Aggregate one adjacency for all examples."
            )
        return dense_adjacency(pattern, n, dtype, f"Aggregate (dim={self.dim})'s input")

    def forward(self, x: torch.Tensor, pattern: torch.Tensor | None = None) -> torch.Tensor:
        """y = Σ_i A[i, j] x_i along ``dim``; ``pattern``: this batch's graphs (default: :func:`graph_patterns`'),
        for a layer without a fixed adjacency."""
        n = self._nodes(tuple(x.shape[2:]), "its input")
        if pattern is not None and self.adjacency is not None:
            raise InvalidArgumentError(
                "this Aggregate has a fixed adjacency, so it takes no per-example pattern; build Aggregate(dim=...) "
                "without an adjacency to aggregate over each example's graph."
            )
        graphs = pattern if pattern is not None else _PATTERNS.get()
        if graphs is not None and self.adjacency is None:
            graphs = check_pattern(graphs, x.shape[0], "pattern")
        a = self._adjacencies(graphs, x.shape[0], n, x.dtype)
        return torch.einsum("z...i,zij->z...j", x.movedim(self.dim, -1), a.to(x.device)).movedim(-1, self.dim)

    def kernel_transform(self, k: Kernel) -> Kernel:
        n = self._nodes(k.spatial_shape, "the layer before it")
        a = self._adjacencies(k.pattern, k.cov.shape[0], n, k.cov.dtype)
        return transforms.graph_aggregation(k, a, self.dim - 2)

    def extra_repr(self) -> str:
        nodes = "per-example graphs" if self.adjacency is None else f"nodes={self.adjacency.shape[0]}"
        return f"{nodes}, dim={self.dim}"
