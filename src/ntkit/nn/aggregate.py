"""``Aggregate``: graph aggregation (neural-tangents' Aggregate) over a fixed adjacency or over each example's own
graph, and its kernel map."""

from __future__ import annotations

import math
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
    """Each node becomes the weighted sum of its predecessors: y_j = Σ_i A[i, j] x_i over the node axis ``dim``
    (inputs (N, C, n) for graphs of n nodes, or any (N, C, *S) with the nodes on spatial axis ``dim`` >= 2;
    ``A[i, j]`` = the weight of the edge i -> j, neural-tangents' ``x @ A``). ``dim`` may also be several axes
    (e.g. (2, 3): the pixels of an image are the nodes, numbered row-major; neural-tangents' ``aggregate_axis``).

    - ``Aggregate(adjacency, dim)``: one adjacency A for every example, (n, n) (or (*A, *A) for node axes A);
    - ``Aggregate(dim=dim)``: each example its own graph (neural-tangents' per-example ``pattern``), given to the
      kernel as ``nk.kernel(net, x1, x2, pattern=(p1, p2))`` and to the finite network by
      :func:`graph_patterns` (or ``layer(x, pattern)``): dense (N, n, n) edge weights ((N, *A, *A) for several
      node axes), or sparse (N, n_edges, 2) integer (tail, head) edges of weight 1 each ((N, n_edges, K, 2) with
      K node axes), padded with -1 (:mod:`ntkit.infinite.graphs`).

    Kernel (theory.md §4.6; a linear map of the positions, as pooling, but the example's own): K'_ab(j, j') =
    Σ_{i, i'} A_a[i, j] A_b[i', j'] K_ab(i, i'), the same for Θ; the node axes need the full layout
    (``mixes_positions``). Masked positions stay masked (neural-tangents' rule). Graph NNGP/NTK: stack Aggregate
    with Conv1d(kernel_size=1) or Linear-like layers and activations (a graph convolutional network), then
    GlobalSumPool/GlobalAvgPool for graph-level outputs.
    """

    mixes_positions = True
    mask_rule = "elementwise"  # the mask is kept and masked covariances zeroed, as neural-tangents

    def __init__(self, adjacency: torch.Tensor | None = None, dim: int | tuple[int, ...] = 2) -> None:
        super().__init__()
        dims = (dim,) if isinstance(dim, int) and not isinstance(dim, bool) else dim
        if (
            not isinstance(dims, tuple)
            or not dims
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 2 for d in dims)
            or list(dims) != sorted(set(dims))
        ):
            raise InvalidArgumentError(
                f"dim is the node axis of (N, C, *spatial) inputs (2, 3, ...), or increasing node axes such as "
                f"(2, 3), got {dim!r}."
            )
        if adjacency is not None:
            half = adjacency.ndim // 2 if isinstance(adjacency, torch.Tensor) else 0
            if not (
                isinstance(adjacency, torch.Tensor)
                and adjacency.ndim == 2 * len(dims)
                and adjacency.shape[:half] == adjacency.shape[half:]
            ):
                raise InvalidArgumentError(
                    f"adjacency must be a square (n, n) tensor of edge weights ((*A, *A) for {len(dims)} node axes; "
                    f"or None: each example's graph is given with the inputs), got {type(adjacency).__name__}"
                    + (f" of shape {tuple(adjacency.shape)}" if isinstance(adjacency, torch.Tensor) else "")
                    + "."
                )
            if not adjacency.is_floating_point() or not bool(torch.isfinite(adjacency).all()):
                raise InvalidArgumentError("adjacency must hold finite floating-point edge weights.")
            adjacency = adjacency.detach().clone()  # not a buffer: a constant of the architecture, moved on use
        self.adjacency = adjacency
        self.dims: tuple[int, ...] = dims
        self.dim = dim

    def _nodes(self, shape: tuple[int, ...], what: str) -> tuple[int, ...]:
        """The node grid (sizes of the node axes) of inputs with spatial shape ``shape`` (checked against a fixed
        adjacency)."""
        if len(shape) <= self.dims[-1] - 2:
            raise ShapeError(
                f"Aggregate's node axes are dim {self.dim}, but {what} has spatial shape {shape}; give inputs "
                "(N, C, *spatial) with the nodes on those axes."
            )
        nodes = tuple(shape[d - 2] for d in self.dims)
        if self.adjacency is not None and tuple(self.adjacency.shape) != nodes + nodes:
            raise ShapeError(
                f"Aggregate's adjacency {tuple(self.adjacency.shape)} is for {self.adjacency.shape[0]} nodes, but "
                f"{what} has spatial shape {shape} (nodes on dim {self.dim}); make the sizes agree."
            )
        return nodes

    def _adjacencies(
        self, pattern: torch.Tensor | None, n_examples: int, nodes: tuple[int, ...], dtype: torch.dtype
    ) -> torch.Tensor:
        """(n_examples, n, n): the fixed adjacency for every example, or each example's graph from ``pattern``."""
        if self.adjacency is not None:
            n = math.prod(nodes)
            return self.adjacency.to(dtype).reshape(n, n).expand(n_examples, n, n)
        if pattern is None:
            raise InvalidArgumentError(
                "Aggregate() without an adjacency aggregates each example over its own graph: pass the graphs as "
                "nk.kernel(net, x1, x2, pattern=(p1, p2)) (pattern=p1 when x2 is None), and to the finite network "
                "as `with ntkit.nn.graph_patterns(p): net(x)`; or give Aggregate one adjacency for all examples."
            )
        return dense_adjacency(pattern, nodes, dtype, f"Aggregate (dim={self.dim})'s input")

    def forward(self, x: torch.Tensor, pattern: torch.Tensor | None = None) -> torch.Tensor:
        """y = Σ_i A[i, j] x_i over the node axes; ``pattern``: this batch's graphs (default:
        :func:`graph_patterns`'), for a layer without a fixed adjacency."""
        nodes = self._nodes(tuple(x.shape[2:]), "its input")
        if pattern is not None and self.adjacency is not None:
            raise InvalidArgumentError(
                "this Aggregate has a fixed adjacency, so it takes no per-example pattern; build Aggregate(dim=...) "
                "without an adjacency to aggregate over each example's graph."
            )
        graphs = pattern if pattern is not None else _PATTERNS.get()
        if graphs is not None and self.adjacency is None:
            graphs = check_pattern(graphs, x.shape[0], "pattern")
        a = self._adjacencies(graphs, x.shape[0], nodes, x.dtype).to(x.device)
        tail = list(range(-len(self.dims), 0))
        moved = x.movedim(self.dims, tail)
        y = torch.einsum("z...i,zij->z...j", moved.reshape(*moved.shape[: -len(tail)], -1), a)
        return y.reshape(moved.shape).movedim(tail, self.dims)

    def kernel_transform(self, k: Kernel) -> Kernel:
        nodes = self._nodes(k.spatial_shape, "the layer before it")
        a = self._adjacencies(k.pattern, k.cov.shape[0], nodes, k.cov.dtype)
        return transforms.graph_aggregation(k, a, tuple(d - 2 for d in self.dims))

    def extra_repr(self) -> str:
        nodes = "per-example graphs" if self.adjacency is None else f"adjacency={tuple(self.adjacency.shape)}"
        return f"{nodes}, dim={self.dim}"
