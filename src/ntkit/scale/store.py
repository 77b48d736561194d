"""``KernelStore``: a kernel (N1, N2) kept in a zarr store, one chunk per tile, with done-markers per tile.

Layout of the zarr (v3) group at the store's location:

- ``nngp``, ``ntk`` (the kernels asked for): arrays (N1, N2) in the kernel's dtype, chunks (tile, tile),
  uncompressed (kernel values do not compress, and compression cost more than the writes); entries of tiles
  not yet written read as NaN. A symmetric store (x2 was x1) writes only the tiles on and above the diagonal.
- On a local disk the kernels' chunk files are written past the page cache (``O_DIRECT``) where the file
  system allows it, byte for byte as zarr writes them (:mod:`ntkit.scale.direct`).
- ``tiles_done``: uint8 (T1, T2), one chunk per tile: 1 once every kernel's chunk of that tile is written
  (and, on a local disk, flushed by fsync; several tiles may be flushed together, :mod:`ntkit.scale.writer`).
  A tile without its marker is computed again on resume, so a crash in the middle of writing can never leave a
  half-written tile marked done.
- attributes: ``format``, ``n1``, ``n2``, ``symmetric``, ``dtype``, ``tile_size``, ``kernels`` and the
  ``fingerprint`` (:mod:`ntkit.scale.fingerprint`) of everything that determines the values.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._memory import check_fits, resolve_budget
from ..errors import InvalidArgumentError, StoreError, StoreMismatchError
from .deps import require
from .direct import DirectChunkWriter
from .fingerprint import differences
from .grid import TileGrid

__all__ = ["KernelStore", "StoreSpec", "ntkit_version"]

FORMAT = "ntkit.scale.KernelStore/1"
KERNELS = ("nngp", "ntk")
_DONE = "tiles_done"

StoreLike = Any  # a path, a URL, or a zarr Store


@dataclass(frozen=True)
class StoreSpec:
    """What a store holds: its tiling, dtype, kernels, and the fingerprint of the computation."""

    grid: TileGrid
    dtype: torch.dtype
    kernels: tuple[str, ...]
    fingerprint: dict[str, str]

    def attributes(self) -> dict[str, Any]:
        g = self.grid
        return {
            "format": FORMAT,
            "n1": g.n1,
            "n2": g.n2,
            "symmetric": g.symmetric,
            "tile_size": g.tile,
            "dtype": str(self.dtype).removeprefix("torch."),
            "kernels": list(self.kernels),
            "fingerprint": dict(self.fingerprint),
        }

    @classmethod
    def from_attributes(cls, attrs: dict[str, Any], location: str) -> StoreSpec:
        if attrs.get("format") != FORMAT:
            raise StoreError(
                f"{location} is a zarr group but not an ntkit kernel store (format {attrs.get('format')!r}); "
                "choose another location, or delete it if it is not needed."
            )
        grid = TileGrid(int(attrs["n1"]), int(attrs["n2"]), int(attrs["tile_size"]), bool(attrs["symmetric"]))
        return cls(grid, getattr(torch, attrs["dtype"]), tuple(attrs["kernels"]), dict(attrs["fingerprint"]))


def zarr_store(store: StoreLike) -> Any:
    """A zarr Store for a local path (``LocalStore``), an fsspec URL (``FsspecStore``), or a Store as it is."""
    zarr = require("zarr", "nk.scale kernel stores")
    if isinstance(store, str | os.PathLike):
        text = os.fspath(store)
        if "://" in text and not text.startswith("file://"):
            return zarr.storage.FsspecStore.from_url(text)
        return zarr.storage.LocalStore(os.path.abspath(text.removeprefix("file://")))
    if not isinstance(store, zarr.abc.store.Store):
        raise InvalidArgumentError(f"store must be a path, a URL or a zarr Store, got {type(store).__name__}.")
    return store


def describe(store: Any) -> str:
    root = getattr(store, "root", None)
    return str(root) if root is not None else str(store)


@contextlib.contextmanager
def store_errors(location: str, action: str) -> Iterator[None]:
    """Turn the OS errors of writing or reading a store into :class:`StoreError` saying what to do."""
    try:
        yield
    except StoreError:
        raise
    except PermissionError as exc:
        raise StoreError(
            f"cannot write {location} while {action}: permission denied ({exc}). Choose a writable location, "
            "or fix its permissions; tiles already done are kept."
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreError(
                f"the disk of {location} is full while {action} ({exc}); the tiles being written were not marked "
                "done. Free space and call nk.scale.kernel again with the same store: it resumes with the missing "
                "tiles."
            ) from None
        raise StoreError(f"cannot access {location} while {action}: {exc}.") from None


class KernelStore:
    """A kernel (N1, N2) stored tile by tile in zarr (module docs), possibly still incomplete.

    Made by :func:`ntkit.scale.kernel` / :func:`ntkit.scale.empirical_ntk` or reopened with
    :meth:`KernelStore.open`.

    Attributes:
        location: where it is (a path or URL).
        shape: (N1, N2); ``symmetric``: x2 was x1; ``tile_size``: examples per tile side; ``dtype``;
        kernels: the kernels it holds ("nngp", "ntk");
        fingerprint: the digests of the computation (:mod:`ntkit.scale.fingerprint`);
        tiles_computed: tiles computed by the call that returned this object (0 for :meth:`open`).
    """

    def __init__(self, store: Any, spec: StoreSpec, group: Any, tiles_computed: int = 0):
        self._store = store
        self._group = group
        self.spec = spec
        self.tiles_computed = tiles_computed
        self._arrays: dict[str, Any] = {}
        self._direct = DirectChunkWriter()

    # --- opening and creating -------------------------------------------------------------------------------
    @classmethod
    def open(cls, store: StoreLike, *, allow_other_version: bool = False) -> KernelStore:
        """Open an existing store for reading (a path, URL or zarr Store).

        Raises :class:`StoreError` if there is no kernel store there, and :class:`StoreMismatchError` if it was
        written by another ntkit version, unless ``allow_other_version``.
        """
        zstore = zarr_store(store)
        location = describe(zstore)
        group = _open_group(zstore, location)
        if group is None:
            raise StoreError(f"there is no ntkit kernel store at {location}; make one with nk.scale.kernel(...).")
        spec = StoreSpec.from_attributes(dict(group.attrs), location)
        _check_version(spec.fingerprint, location, allow_other_version)
        return cls(zstore, spec, group)

    @classmethod
    def create_or_resume(
        cls, store: StoreLike, spec: StoreSpec, *, tile_given: bool, allow_other_version: bool
    ) -> KernelStore:
        """The store at ``store`` for ``spec``: created if absent, else checked to hold the same computation
        (:class:`StoreMismatchError` naming what differs otherwise; nothing is written then). An existing
        store keeps its tile size unless ``tile_given`` asks for another one (an error)."""
        zarr = require("zarr", "nk.scale kernel stores")
        zstore = zarr_store(store)
        location = describe(zstore)
        group = _open_group(zstore, location)
        if group is None:
            if zstore.read_only:
                raise StoreError(f"cannot create a kernel store at {location}: the store is read-only.")
            with store_errors(location, "creating the store"):
                group = zarr.create_group(store=zstore, attributes=spec.attributes(), overwrite=False)
        else:
            stored = StoreSpec.from_attributes(dict(group.attrs), location)
            _check_same(stored, spec, location, tile_given, allow_other_version)
            spec = stored
        out = cls(zstore, spec, group)
        if not out.complete:
            out._ensure_arrays()
        return out

    def _ensure_arrays(self) -> None:
        """Create the arrays that are missing (all of them for a new store, or after a crash right after
        creating the group); write access is checked here, before any tile is computed."""
        g = self.grid
        if self._store.read_only:
            raise StoreError(
                f"the kernel store at {self.location} is read-only and has {self.tiles_total - self.tiles_done} "
                "missing tiles; open it writable (or copy it to a writable location) to finish it."
            )
        existing = set(self._group.array_keys())
        with store_errors(self.location, "preparing the store"):
            for name in self.kernels:
                if name not in existing:
                    self._group.create_array(
                        name,
                        shape=(g.n1, g.n2),
                        chunks=(g.tile, g.tile),
                        dtype=np.dtype(self._numpy_dtype),
                        fill_value=np.nan,
                        compressors=None,
                    )
            if _DONE not in existing:
                self._group.create_array(
                    _DONE, shape=g.shape, chunks=(1, 1), dtype="uint8", fill_value=0, compressors=None
                )
            self._group.attrs.update({"last_run": {"ntkit_version": ntkit_version(), "started": time.time()}})

    # --- description ----------------------------------------------------------------------------------------
    @property
    def location(self) -> str:
        return describe(self._store)

    @property
    def zarr_store(self) -> Any:
        """The zarr Store (picklable: what workers open)."""
        return self._store

    @property
    def grid(self) -> TileGrid:
        return self.spec.grid

    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.n1, self.grid.n2

    @property
    def symmetric(self) -> bool:
        return self.grid.symmetric

    @property
    def tile_size(self) -> int:
        return self.grid.tile

    @property
    def dtype(self) -> torch.dtype:
        return self.spec.dtype

    @property
    def kernels(self) -> tuple[str, ...]:
        return self.spec.kernels

    @property
    def fingerprint(self) -> dict[str, str]:
        return dict(self.spec.fingerprint)

    @property
    def _numpy_dtype(self) -> np.dtype[Any]:
        return np.dtype(str(self.dtype).removeprefix("torch."))

    def __repr__(self) -> str:
        n1, n2 = self.shape
        return (
            f"KernelStore({self.location!r}, {n1} x {n2}{' symmetric' if self.symmetric else ''}, "
            f"{'/'.join(self.kernels)}, {str(self.dtype).removeprefix('torch.')}, tiles {self.tiles_done}/"
            f"{self.tiles_total} of {self.tile_size})"
        )

    # --- tiles ----------------------------------------------------------------------------------------------
    def _array(self, name: str) -> Any:
        if name not in self._arrays:
            with store_errors(self.location, f"opening {name}"):
                self._arrays[name] = self._group[name]
        return self._arrays[name]

    def done_mask(self) -> np.ndarray:
        """(T1, T2) bool: which tiles are done (only the upper triangle is ever done when symmetric)."""
        if _DONE not in set(self._group.array_keys()):
            return np.zeros(self.grid.shape, dtype=bool)
        with store_errors(self.location, "reading the tile markers"):
            markers: np.ndarray = np.asarray(self._array(_DONE)[...]) == 1
        return markers

    def missing_tiles(self) -> list[tuple[int, int]]:
        done = self.done_mask()
        return [(i, j) for i, j in self.grid.tiles() if not done[i, j]]

    @property
    def tiles_total(self) -> int:
        return self.grid.n_tiles

    @property
    def tiles_done(self) -> int:
        return int(self.done_mask().sum())

    @property
    def complete(self) -> bool:
        return self.tiles_done == self.tiles_total

    def write_tile(self, i: int, j: int, values: dict[str, np.ndarray]) -> None:
        """Write tile (i, j) of every kernel, flush it to disk (local disks), then mark it done."""
        self.mark_done([(i, j)], self.write_data(i, j, values))

    def write_data(self, i: int, j: int, values: dict[str, np.ndarray]) -> list[Path]:
        """Write tile (i, j) of every kernel, not yet marked done; returns its chunk files on a local disk (none
        for other stores), to be flushed by :meth:`mark_done`."""
        rows, cols = self.grid.rows(i), self.grid.cols(j)
        local = getattr(self._store, "root", None)
        files = []
        with store_errors(self.location, f"writing tile ({i}, {j})"):
            for name in self.kernels:
                array = self._array(name)
                if not isinstance(local, Path):
                    array[rows, cols] = values[name]
                    continue
                path = local / name / array.metadata.encode_chunk_key((i, j))
                if not self._direct.write(path, values[name], array):  # past the page cache where allowed
                    array[rows, cols] = values[name]
                files.append(path)
        return files

    def mark_done(self, tiles: list[tuple[int, int]], files: list[Path]) -> None:
        """Flush ``files`` (the tiles' chunks, written by :meth:`write_data`) and their directories to disk, then
        mark ``tiles`` done: a crash before the end leaves them not done."""
        with store_errors(self.location, f"flushing tiles {', '.join(map(str, tiles))}"):
            for path in files:
                _fsync(path)
            for directory in sorted({path.parent for path in files}):
                _fsync(directory, directory=True)
            for i, j in tiles:
                self._array(_DONE)[i, j] = 1

    def read_tile(self, name: str, i: int, j: int) -> np.ndarray:
        """Tile (i, j) of kernel ``name`` as stored (i <= j when symmetric)."""
        with store_errors(self.location, f"reading tile ({i}, {j})"):
            tile: np.ndarray = np.asarray(self._array(name)[self.grid.rows(i), self.grid.cols(j)])
            return tile

    def _check_name(self, name: str) -> None:
        if name not in self.kernels:
            raise InvalidArgumentError(
                f"the store at {self.location} holds {', '.join(self.kernels)}, not {name!r}; compute it with "
                f"get=({name!r},) into another store."
            )

    # --- whole kernels --------------------------------------------------------------------------------------
    def _dask(self, name: str) -> Any:
        da = require("dask.array", "KernelStore.nngp / .ntk (lazy dask arrays)")
        self._check_name(name)
        stored = da.from_zarr(self._array(name))
        if not self.symmetric:
            return stored
        t = self.grid.shape[0]
        rows = [[stored.blocks[i, j] if i <= j else stored.blocks[j, i].T for j in range(t)] for i in range(t)]
        return da.block(rows)

    @property
    def nngp(self) -> Any:
        """The NNGP K as a lazy dask array (N1, N2) (entries of missing tiles read as NaN)."""
        return self._dask("nngp")

    @property
    def ntk(self) -> Any:
        """The NTK Θ as a lazy dask array (N1, N2) (entries of missing tiles read as NaN)."""
        return self._dask("ntk")

    def to_torch(
        self, get: str | tuple[str, ...] | None = None, *, memory_budget: int | str | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Load kernels into memory: a tensor (N1, N2) for ``get="ntk"`` (or "nngp"), a dict of them for a tuple
        or None (every stored kernel). Raises :class:`~ntkit.errors.MemoryBudgetError` before reading if they
        do not fit ``memory_budget`` and :class:`StoreError` if tiles are missing."""
        names = self.kernels if get is None else (get,) if isinstance(get, str) else tuple(get)
        for name in names:
            self._check_name(name)
        if not self.complete:
            raise StoreError(
                f"the kernel store at {self.location} has {self.tiles_done} of {self.tiles_total} tiles; call "
                "nk.scale.kernel(...) with the same arguments and store to finish it."
            )
        n1, n2 = self.shape
        itemsize = torch.finfo(self.dtype).bits // 8
        check_fits(
            len(names) * n1 * n2 * itemsize,
            resolve_budget(memory_budget),
            f"loading {len(names)} kernel(s) of {n1} x {n2}",
            "Use the dask arrays (.nngp, .ntk) or nk.scale.gp_inference, which stream tiles.",
        )
        out = {}
        for name in names:
            full = torch.empty((n1, n2), dtype=self.dtype)
            for rows, cols, tile in self.iter_tiles(name):
                full[rows, cols] = torch.from_numpy(tile)
                if self.symmetric and rows != cols:
                    full[cols, rows] = torch.from_numpy(tile).T
            out[name] = full
        return out[get] if isinstance(get, str) else out

    def iter_tiles(self, name: str) -> Iterator[tuple[slice, slice, np.ndarray]]:
        """(rows, cols, values) of every stored tile of kernel ``name`` (upper triangle when symmetric)."""
        self._check_name(name)
        for i, j in self.grid.tiles():
            yield self.grid.rows(i), self.grid.cols(j), self.read_tile(name, i, j)


def _open_group(zstore: Any, location: str) -> Any | None:
    """The zarr group at the store, or None if there is nothing there (an empty directory counts as nothing)."""
    zarr = require("zarr", "nk.scale kernel stores")
    try:
        return zarr.open_group(store=zstore, mode="r+" if not zstore.read_only else "r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeNotFoundError):
        pass
    except zarr.errors.ContainsArrayError:
        raise StoreError(f"{location} holds a zarr array, not an ntkit kernel store; use another location.") from None
    root = getattr(zstore, "root", None)
    if isinstance(root, Path) and root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise StoreError(
            f"{location} exists and is not an ntkit kernel store; choose another location (nothing was written)."
        )
    return None


def _check_version(fingerprint: dict[str, str], location: str, allow_other_version: bool) -> None:
    stored, current = fingerprint.get("ntkit_version"), ntkit_version()
    if stored != current and not allow_other_version:
        raise StoreMismatchError(
            f"the kernel store at {location} was written by ntkit {stored}, this is ntkit {current}: its values "
            "may differ from what this version computes. Pass allow_other_version=True to use it anyway (missing "
            "tiles are then computed by this version), or use another store."
        )


def _check_same(
    stored: StoreSpec, wanted: StoreSpec, location: str, tile_given: bool, allow_other_version: bool
) -> None:
    """Raise :class:`StoreMismatchError` naming what differs between a stored computation and this call's."""
    version = "ntkit_version"
    diff = differences(
        {k: v for k, v in stored.fingerprint.items() if k != version},
        {k: v for k, v in wanted.fingerprint.items() if k != version},
    )
    if diff:
        raise StoreMismatchError(
            f"the kernel store at {location} holds another computation: {', '.join(diff)} differ(s). Use another "
            "store for this one (the existing store was left as it is)."
        )
    if tile_given and wanted.grid.tile != stored.grid.tile:
        raise StoreMismatchError(
            f"the kernel store at {location} has tiles of {stored.grid.tile}, not {wanted.grid.tile}; pass "
            f"tile_size=None (or {stored.grid.tile}) to resume it."
        )
    _check_version(stored.fingerprint, location, allow_other_version)


def ntkit_version() -> str:
    from .. import __version__  # not at import time: ntkit/__init__ imports this package before defining it

    return __version__


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush a written file (or a directory's entries) to disk."""
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
