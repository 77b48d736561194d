"""What one tile computes (the in-memory ``nk.kernel`` / ``nk.empirical_ntk`` on its rows and columns) and the
task that computes a tile and writes it into the store, wherever it runs (this process, a Dask worker, a
local process per GPU)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ..empirical import empirical_ntk
from ..infinite.compute import kernel
from .store import KernelStore, StoreSpec

__all__ = ["EmpiricalTiles", "InfiniteTiles", "Payload", "TileFunction", "prepared", "run_tile"]


class TileFunction(Protocol):
    """Computes the kernels of one tile: ``self(a, b)`` with a (n_a, ...) and b (n_b, ...) examples, or b None
    for a diagonal tile of a symmetric kernel (a with itself, exactly symmetric), -> {name: (n_a, n_b)};
    ``to(device)`` moves what it holds (the network) to a device."""

    def __call__(self, a: torch.Tensor, b: torch.Tensor | None) -> dict[str, torch.Tensor]: ...

    def to(self, device: torch.device) -> TileFunction: ...


@dataclass(frozen=True)
class InfiniteTiles:
    """``nk.kernel(net, a, b, get=kernels, dtype=dtype, memory_budget=memory_budget)`` on a tile.

    ``memory_budget`` (bytes) is the driver's, which chose the tile size: the default budget of a worker (a
    quarter of its free memory) shrinks as the page cache fills with written tiles."""

    net: nn.Module
    kernels: tuple[str, ...]
    dtype: torch.dtype
    memory_budget: int

    def __call__(self, a: torch.Tensor, b: torch.Tensor | None) -> dict[str, torch.Tensor]:
        k = kernel(self.net, a, b, get=self.kernels, dtype=self.dtype, memory_budget=self.memory_budget)
        return {name: getattr(k, name) for name in self.kernels}

    def to(self, device: torch.device) -> InfiniteTiles:
        return replace(self, net=copy.deepcopy(self.net).to(device))  # a copy: the caller's module stays put


@dataclass(frozen=True)
class EmpiricalTiles:
    """``nk.empirical_ntk(model, a, b, params=params, method=method, memory_budget=memory_budget)`` (traced
    over outputs) on a tile; ``memory_budget`` as for :class:`InfiniteTiles`."""

    model: nn.Module
    params: Any
    method: str
    memory_budget: int

    def __call__(self, a: torch.Tensor, b: torch.Tensor | None) -> dict[str, torch.Tensor]:
        ntk = empirical_ntk(self.model, a, b, params=self.params, method=self.method, memory_budget=self.memory_budget)
        return {"ntk": ntk}

    def to(self, device: torch.device) -> EmpiricalTiles:
        return replace(self, model=copy.deepcopy(self.model).to(device))


@dataclass(frozen=True)
class Payload:
    """What every worker needs, shipped to it once: the tile function, the inputs and the store's spec."""

    tiles: TileFunction
    x1: torch.Tensor
    x2: torch.Tensor | None
    store: Any  # a picklable zarr Store
    spec: StoreSpec

    def to(self, device: torch.device) -> Payload:
        if self.x1.device == device:
            return self
        x2 = None if self.x2 is None else self.x2.to(device)
        return replace(self, tiles=self.tiles.to(device), x1=self.x1.to(device), x2=x2)

    def compute(self, i: int, j: int) -> dict[str, np.ndarray]:
        """The kernels of tile (i, j) as host arrays."""
        grid = self.spec.grid
        rows, cols = grid.rows(i), grid.cols(j)
        diagonal = grid.symmetric and i == j
        xs2 = self.x1 if self.x2 is None else self.x2
        values = self.tiles(self.x1[rows], None if diagonal else xs2[cols])  # not under no_grad: J needs autograd
        return {name: v.detach().to("cpu").numpy() for name, v in values.items()}


#: Per process: the last payload, moved to this process's device, and its open store (the tasks of one call,
#: which share one payload object per process, reuse them).
_CACHE: dict[str, Any] = {}


def prepared(payload: Payload, device: torch.device) -> tuple[Payload, KernelStore]:
    if _CACHE.get("source") is not payload or _CACHE.get("device") != device:
        _CACHE.clear()
        store = KernelStore(payload.store, payload.spec, _open_for_writing(payload.store))
        _CACHE.update(source=payload, device=device, payload=payload.to(device), store=store)
    return _CACHE["payload"], _CACHE["store"]


def _open_for_writing(zstore: Any) -> Any:
    from .deps import require

    zarr = require("zarr", "nk.scale kernel stores")
    return zarr.open_group(store=zstore, mode="r+")


def run_tile(payload: Payload, i: int, j: int, device: str | None = None) -> tuple[int, int]:
    """Compute tile (i, j) on ``device`` (default: CUDA if this process sees a GPU, else CPU), write it and mark
    it done; returns (i, j)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    local, store = prepared(payload, dev)
    store.write_tile(i, j, local.compute(i, j))
    return i, j
