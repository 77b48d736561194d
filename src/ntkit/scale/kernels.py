"""``nk.scale.kernel`` and ``nk.scale.empirical_ntk``: kernels computed tile by tile into a resumable store."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._memory import resolve_budget
from .._validation import check_input_pair, format_shape, parse_get
from ..empirical import empirical_ntk as _empirical_ntk
from ..errors import InvalidArgumentError, UnsupportedError
from ..infinite.compute import kernel as _kernel
from .engine import Progress, fill, parse_devices
from .fingerprint import architecture_digest, describe_value, parameters_digest, tensor_digest
from .grid import TileGrid
from .store import KERNELS, KernelStore, StoreLike, StoreSpec, ntkit_version
from .tiles import EmpiricalTiles, InfiniteTiles, Payload, TileFunction

__all__ = ["empirical_ntk", "kernel"]

#: Largest default tile side: a 4096² float64 tile is 128 MiB; larger tiles only leave workers idle.
_MAX_TILE = 4096


def kernel(
    net: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    store: StoreLike,
    get: str | tuple[str, ...] = KERNELS,
    client: Any = None,
    devices: Sequence[str | torch.device] | None = None,
    tile_size: int | None = None,
    progress: Progress = False,
    dtype: torch.dtype | None = None,
    memory_budget: int | str | None = None,
    allow_other_version: bool = False,
) -> KernelStore:
    """The infinite-width NNGP and/or NTK of ``net`` (as :func:`ntkit.kernel`), computed tile by tile into ``store``.

    Each tile (b x b examples) is ``nk.kernel(net, x1[rows], x2[cols])``, so the store equals the in-memory
    kernel to round-off. Only the missing tiles are computed: calling again with the same arguments after a
    crash resumes (``tiles_computed`` of the result says how many this call computed).

    Args:
        net: as for :func:`ntkit.kernel`; the network must pool or flatten (per-output kernels (N1, N2)).
        x1: (N1, ...) inputs; x2: (N2, ...) or None for x1 (then only tiles on and above the diagonal are
            computed and the others read transposed).
        store: a local path, an fsspec URL (``"s3://bucket/k.zarr"``) or a zarr Store; every worker must reach it.
        get: "nngp", "ntk" or both.
        client: a ``dask.distributed.Client`` (tiles as tasks on its workers, each on its GPU if it has one),
            or None: tiles one after the other in this process.
        devices: without Dask, one local process per device, e.g. ``["cuda:0", "cuda:1"]``.
        tile_size: examples per tile side (default: from the memory budget, at most 4096). Any N works (the
            last tiles are ragged). An existing store keeps its tile size.
        progress: True for a progress bar (tqdm: tiles done, ETA), or a callback ``progress(done, total)``.
        dtype: the kernel's dtype (default x1's).
        memory_budget: bytes (or "4G") that one tile may use; default a quarter of free memory.
        allow_other_version: resume a store written by another ntkit version (an error otherwise).

    Returns:
        the :class:`~ntkit.scale.KernelStore`.

    Raises:
        StoreMismatchError: the store holds another computation (the message names what differs).
        StoreError: the store cannot be written (read-only, disk full); tiles already done are kept.
    """
    wanted, _ = parse_get(get, KERNELS)
    if not isinstance(net, nn.Module):
        raise InvalidArgumentError(f"net must be a torch.nn.Module, got {type(net).__name__}.")
    x1, x2 = check_input_pair(x1, x2)
    dtype = dtype or x1.dtype
    probe = _kernel(net, x1[:2], None if x2 is None else x2[:1], get=wanted, dtype=dtype)
    _check_per_output({name: getattr(probe, name) for name in wanted}, "nk.scale.kernel")
    fingerprint = {
        "kind": "nk.kernel",
        "architecture": architecture_digest(net),
        "dtype": str(dtype).removeprefix("torch."),
        "kernels": ",".join(wanted),
    }
    budget = resolve_budget(memory_budget)
    tiles = InfiniteTiles(net, wanted, dtype, budget)
    return _compute(
        tiles,
        x1,
        x2,
        fingerprint,
        wanted,
        dtype,
        store,
        client,
        devices,
        tile_size,
        progress,
        budget,
        allow_other_version,
    )


def empirical_ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    store: StoreLike,
    params: Any = None,
    method: str = "auto",
    client: Any = None,
    devices: Sequence[str | torch.device] | None = None,
    tile_size: int | None = None,
    progress: Progress = False,
    memory_budget: int | str | None = None,
    allow_other_version: bool = False,
) -> KernelStore:
    """The empirical NTK Θ̂ (N1, N2) of ``model`` (as :func:`ntkit.empirical_ntk`, mean over outputs) computed tile
    by tile into ``store``: the same engine, arguments and resume rules as :func:`kernel` (its docs).

    The fingerprint includes the values of every parameter and buffer: a trained model is another computation.
    ``params`` and ``method`` are those of :func:`ntkit.empirical_ntk`. The store holds "ntk" only.
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    x1, x2 = check_input_pair(x1, x2, allow_integer=True)
    probe = _empirical_ntk(model, x1[:2], None if x2 is None else x2[:1], params=params, method=method)
    _check_per_output({"ntk": probe}, "nk.scale.empirical_ntk")
    fingerprint = {
        "kind": "nk.empirical_ntk",
        "architecture": architecture_digest(model),
        "parameters": parameters_digest(model),
        "params": describe_value(params),
        "dtype": str(probe.dtype).removeprefix("torch."),
        "kernels": "ntk",
    }
    budget = resolve_budget(memory_budget)
    tiles = EmpiricalTiles(model, params, method, budget)
    return _compute(
        tiles,
        x1,
        x2,
        fingerprint,
        ("ntk",),
        probe.dtype,
        store,
        client,
        devices,
        tile_size,
        progress,
        budget,
        allow_other_version,
    )


def _compute(
    tiles: TileFunction,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    fingerprint: dict[str, str],
    kernels: tuple[str, ...],
    dtype: torch.dtype,
    store: StoreLike,
    client: Any,
    devices: Sequence[str | torch.device] | None,
    tile_size: int | None,
    progress: Progress,
    memory_budget: int,
    allow_other_version: bool,
) -> KernelStore:
    """Create or resume the store, then fill its missing tiles (``memory_budget`` in bytes, resolved)."""
    device_list = parse_devices(devices, client)
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    itemsize = torch.finfo(dtype).bits // 8
    tile = _tile_size(tile_size, n1, n2, len(kernels), itemsize, memory_budget)
    fingerprint = {**fingerprint, "x1": tensor_digest(x1), "x2": tensor_digest(x2), "ntkit_version": ntkit_version()}
    spec = StoreSpec(TileGrid(n1, n2, tile, x2 is None), dtype, kernels, fingerprint)
    out = KernelStore.create_or_resume(
        store, spec, tile_given=tile_size is not None, allow_other_version=allow_other_version
    )
    payload = Payload(tiles, x1, x2, out.zarr_store, out.spec)
    out.tiles_computed = fill(out, payload, client=client, devices=device_list, progress=progress)
    return out


def _check_per_output(values: dict[str, torch.Tensor], where: str) -> None:
    for name, value in values.items():
        if value.ndim != 2:
            raise UnsupportedError(
                f"{where} stores per-output kernels (N1, N2), but this network's {name} has shape "
                f"{format_shape(value.shape)} per batch pair: end the network with pooling or flattening "
                "(and, for empirical kernels, keep trace_outputs=True)."
            )


def _tile_size(tile_size: int | None, n1: int, n2: int, n_kernels: int, itemsize: int, memory_budget: int) -> int:
    """Examples per tile side: as given, or the largest side whose tile (its kernels, their host copies and a
    float64 copy when solving) fits the budget, at most ``_MAX_TILE``."""
    largest = max(n1, n2)
    if tile_size is not None:
        if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 1:
            raise InvalidArgumentError(f"tile_size must be a positive integer (examples per side), got {tile_size!r}.")
        return min(tile_size, largest)
    side = math.isqrt(memory_budget // (2 * n_kernels * itemsize + 8))
    return max(1, min(side, _MAX_TILE, largest))
