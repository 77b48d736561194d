"""``Aggregate``: graph aggregation over a fixed adjacency (neural-tangents' Aggregate), and its kernel map."""

from __future__ import annotations

import torch

from ..errors import InvalidArgumentError, ShapeError
from ..infinite import transforms
from ..infinite.kernel_type import Kernel
from .layer import KernelLayer

__all__ = ["Aggregate"]


class Aggregate(KernelLayer):
    """Each node becomes the weighted sum of its predecessors: y_j = Σ_i A[i, j] x_i along the node axis ``dim``
    (inputs (N, C, n) for a graph of n nodes, or any (N, C, *S) with the nodes on spatial axis ``dim`` >= 2),
    with one (n, n) adjacency A for every example (``A[i, j]`` = the weight of the edge i -> j; neural-tangents'
    Aggregate with the same dense pattern for all inputs).

    Kernel (theory.md §4.6; a fixed linear map of the positions, as pooling): K'(j, j') = Σ_{i, i'} A[i, j]
    A[i', j'] K(i, i'), the same for Θ; the node axis needs the full layout (``mixes_positions``). Graph
    NNGP/NTK: stack Aggregate with Conv1d(kernel_size=1) or Linear-like layers and activations (a graph
    convolutional network), then GlobalSumPool/GlobalAvgPool for graph-level outputs.
    """

    mixes_positions = True

    def __init__(self, adjacency: torch.Tensor, dim: int = 2) -> None:
        super().__init__()
        if not (
            isinstance(adjacency, torch.Tensor) and adjacency.ndim == 2 and adjacency.shape[0] == adjacency.shape[1]
        ):
            raise InvalidArgumentError(
                f"adjacency must be a square (n, n) tensor of edge weights, got {type(adjacency).__name__}"
                + (f" of shape {tuple(adjacency.shape)}" if isinstance(adjacency, torch.Tensor) else "")
                + "."
            )
        if not adjacency.is_floating_point() or not bool(torch.isfinite(adjacency).all()):
            raise InvalidArgumentError("adjacency must hold finite floating-point edge weights.")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise InvalidArgumentError(f"dim is the node axis of (N, C, *spatial) inputs (2, 3, ...), got {dim!r}.")
        self.adjacency = adjacency.detach().clone()  # not a buffer: a constant of the architecture, moved on use
        self.dim = dim

    def _check(self, shape: tuple[int, ...], what: str) -> None:
        n = self.adjacency.shape[0]
        if len(shape) <= self.dim - 2 or shape[self.dim - 2] != n:
            raise ShapeError(
                f"Aggregate's adjacency has {n} nodes, but {what} has spatial shape {shape} (nodes on dim "
                f"{self.dim}); make the sizes agree."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(tuple(x.shape[2:]), "its input")
        y: torch.Tensor = torch.tensordot(x, self.adjacency.to(x), dims=([self.dim], [0]))
        return y.movedim(-1, self.dim)

    def kernel_transform(self, k: Kernel) -> Kernel:
        self._check(k.spatial_shape, "the layer before it")
        eye = [torch.eye(n, dtype=self.adjacency.dtype, device=self.adjacency.device) for n in k.spatial_shape]
        eye[self.dim - 2] = self.adjacency.T
        return transforms.separable_linear(k, tuple(eye), layer="graph aggregation")

    def extra_repr(self) -> str:
        return f"nodes={self.adjacency.shape[0]}, dim={self.dim}"
