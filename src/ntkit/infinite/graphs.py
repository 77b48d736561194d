"""Per-example graphs for graph aggregation (``ntkit.nn.Aggregate``; neural-tangents' ``pattern``): their two
formats, checks, and the dense adjacency each layer uses.

A batch of N graphs over n nodes is given as

- **dense**: a floating-point (or bool) tensor (N, n, n), ``A[e, i, j]`` the weight of the edge i -> j of
  example e (neural-tangents' DENSE pattern, ``to_dense`` the identity); with K node axes A (the nodes are the
  positions of a grid) (N, *A, *A);
- **sparse**: an integer tensor (N, E, 2) of E directed edges (tail, head) per example, each of weight 1, a
  repeated edge counting once per repetition (neural-tangents' SPARSE pattern); with K node axes (N, E, K, 2),
  the K coordinates of the tail and of the head. Examples with fewer edges are padded with -1: an edge with a
  negative coordinate in its tail or head is left out.

``nk.kernel(..., pattern=)`` takes one such tensor per input batch; :class:`~.kernel_type.Kernel` carries them
together, ordered as ``cov`` (``Kernel.pattern``), so that each tile of the kernel gets its examples' graphs.
"""

from __future__ import annotations

import math

import torch

from .._validation import format_shape
from ..errors import InvalidArgumentError, ShapeError

__all__ = ["check_pattern", "dense_adjacency", "is_sparse", "stack_patterns"]


def is_sparse(pattern: torch.Tensor) -> bool:
    """Whether ``pattern`` is an edge list (integer dtype) rather than dense adjacencies."""
    return not (pattern.is_floating_point() or pattern.dtype == torch.bool)


def check_pattern(pattern: object, n_examples: int | None, name: str) -> torch.Tensor:
    """``pattern`` checked as the graphs of ``n_examples`` examples (None: any number): dense (N, *A, *A) with
    finite weights (A the node axes: (N, n, n) for one), or sparse (N, E, 2) / (N, E, K, 2) integer edges (the
    node counts are checked against the layer's input, where they are known)."""
    if not isinstance(pattern, torch.Tensor) or pattern.ndim < 3 or pattern.is_complex():
        raise InvalidArgumentError(
            f"{name} must be a tensor of graphs, dense (N, n, n) edge weights or sparse (N, n_edges, 2) integer "
            f"(tail, head) pairs, got {_describe(pattern)}."
        )
    if n_examples is not None and pattern.shape[0] != n_examples:
        raise ShapeError(
            f"{name} has {pattern.shape[0]} graphs for {n_examples} examples ({format_shape(pattern.shape)}); "
            "give one graph per example, in the order of the inputs."
        )
    if is_sparse(pattern):
        if pattern.ndim > 4 or pattern.shape[-1] != 2:
            raise ShapeError(
                f"{name} is a sparse edge list (integer dtype), so it must be (N, n_edges, 2) (tail, head) pairs "
                f"(or (N, n_edges, K, 2) for K node axes), got {format_shape(pattern.shape)}; dense adjacencies "
                "(N, n, n) must be floating point."
            )
        return pattern
    half = (pattern.ndim - 1) // 2
    if pattern.ndim % 2 == 0 or pattern.shape[1 : 1 + half] != pattern.shape[1 + half :]:
        raise ShapeError(
            f"{name} holds dense adjacencies, so it must be (N, n, n) (or (N, *A, *A) for node axes A), got "
            f"{format_shape(pattern.shape)}; sparse edge lists (N, n_edges, 2) must have an integer dtype."
        )
    if pattern.is_floating_point() and pattern.device.type != "meta" and not bool(torch.isfinite(pattern).all()):
        raise InvalidArgumentError(f"{name} has edge weights that are not finite (inf or NaN).")
    return pattern


def stack_patterns(p1: torch.Tensor, p2: torch.Tensor | None) -> torch.Tensor:
    """The graphs of x1 then x2 in one tensor (the order of ``Kernel.cov``): edge lists padded with (-1, -1)
    to the longer one."""
    if p2 is None:
        return p1
    if is_sparse(p1) != is_sparse(p2):
        raise InvalidArgumentError(
            "the patterns of x1 and x2 must have the same format, both dense (floating point) or both sparse "
            f"(integer edge lists), got {p1.dtype} and {p2.dtype}."
        )
    if not is_sparse(p1):
        if p1.shape[1:] != p2.shape[1:]:
            raise ShapeError(
                f"the graphs of x1 and x2 must have the same number of nodes, got dense patterns "
                f"{format_shape(p1.shape)} and {format_shape(p2.shape)}."
            )
        return torch.cat([p1, p2.to(p1)])
    edges = max(p1.shape[1], p2.shape[1])

    def padded(p: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(p, (0, 0, 0, edges - p.shape[1]), value=-1)

    return torch.cat([padded(p1), padded(p2).to(p1.dtype)])


def dense_adjacency(pattern: torch.Tensor, nodes: tuple[int, ...], dtype: torch.dtype, where: str) -> torch.Tensor:
    """(N, n, n) edge weights of ``pattern`` for graphs whose nodes are the positions of a grid of shape ``nodes``
    (one size per node axis; n = their product, positions numbered row-major), ``where`` naming the layer and its
    input for errors: a dense pattern (N, *nodes, *nodes) reshaped, a sparse one with A[e, i, j] = the number of
    edges (i, j) of example e. Raises if the pattern does not fit."""
    n = math.prod(nodes)
    if not is_sparse(pattern):
        if tuple(pattern.shape[1:]) != nodes + nodes:
            raise ShapeError(
                f"{where} has nodes of shape {nodes}, but the pattern's adjacencies are "
                f"{format_shape(pattern.shape)}; give (N, *{nodes}, *{nodes}) adjacencies or make the node axes "
                "agree."
            )
        return pattern.to(dtype).reshape(-1, n, n)
    edges = pattern.unsqueeze(2) if pattern.ndim == 3 else pattern  # (N, E, K, 2)
    if edges.shape[2] != len(nodes):
        raise ShapeError(
            f"the pattern's edges have {edges.shape[2]} coordinates per node ({format_shape(pattern.shape)}), but "
            f"{where} has {len(nodes)} node axes of sizes {nodes}."
        )
    sizes = torch.tensor(nodes, device=pattern.device)
    if pattern.device.type != "meta" and bool((edges >= sizes[:, None]).any()):
        axis = int((edges >= sizes[:, None]).any(dim=(0, 1, 3)).nonzero()[0])
        largest = int(edges[:, :, axis].max())
        raise InvalidArgumentError(
            f"the pattern has an edge to or from node {largest} on node axis {axis}, but {where} has {nodes[axis]} "
            f"nodes there (indices 0 to {nodes[axis] - 1}; -1 marks padding edges)."
        )
    strides = [math.prod(nodes[i + 1 :]) for i in range(len(nodes))]
    flat = (edges.long() * torch.tensor(strides, device=pattern.device)[:, None]).sum(dim=2)  # (N, E, 2)
    kept = (edges >= 0).all(dim=(2, 3))  # (-1, -1) pads examples with fewer edges
    index = torch.where(kept, flat[..., 0] * n + flat[..., 1], 0)
    adjacency = torch.zeros(pattern.shape[0], n * n, dtype=dtype, device=pattern.device)
    adjacency.scatter_add_(1, index, kept.to(dtype))
    return adjacency.reshape(-1, n, n)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {format_shape(value.shape)}"
    return type(value).__name__
