"""``TileWriter``: tiles computed in this process are written by one thread and made durable by another, in
groups, while the caller computes the next tile.

Three stages run at once (for ``client=None``, where one process computes every tile):

1. the caller computes tile k+1;
2. the *writer* thread writes tile k's chunks into the store (on a local disk: into the page cache,
   :meth:`KernelStore.write_data`);
3. the *committer* thread makes the tiles written so far durable as one group (fsync of every chunk file, then
   of their directories) and only then marks that group done (:meth:`KernelStore.mark_done`).

Group commit (as databases do with their logs): each commit takes every tile written since the previous one
began, so commits are per tile while the disk keeps up and grow when it does not, and the disk always has the
next group to write while a tile is computed. An fsync per file as it is written forces a flush of the disk's
cache each time; flushed together, the files go faster (benchmarks/README.md, "Tuning notes"). The durability rule is
unchanged: a tile is marked done only after its data is on disk, and a crash loses the tiles written since the
last commit (they are computed again on resume), never marks a half-written one done.

Memory: the tile being computed and the tile being written (the caller waits for the writer before handing it
the next one); the committer holds only file names.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .store import KernelStore

__all__ = ["TileWriter"]

Tile = tuple[int, int]
_END = None


class TileWriter:
    """Write and commit tiles of ``store`` in background threads (module docs).

    Use as a context manager: ``put(i, j, values)`` for each computed tile, ``done()`` for the tiles marked
    done since the last call, ``finish()`` at the end (the rest written, committed and returned). Leaving the
    block by an exception still commits the tiles already written. An error of either thread (a full disk)
    is raised by the next ``put``, ``done`` or ``finish``.
    """

    def __init__(self, store: KernelStore):
        self._store = store
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ntkit-tile-writer")
        self._written: Future[tuple[Tile, list[Path]]] | None = None
        self._to_commit: queue.Queue[tuple[Tile, list[Path]] | None] = queue.Queue()
        self._committed: list[Tile] = []
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._committer = threading.Thread(target=self._commit_loop, name="ntkit-tile-committer", daemon=True)
        self._committer.start()
        self._closed = False

    def __enter__(self) -> TileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def put(self, i: int, j: int, values: dict[str, np.ndarray]) -> None:
        """Hand tile (i, j) to the writer, once it has written the previous tile."""
        self._hand_over_written()
        self._raise()
        self._written = self._writer.submit(self._write, i, j, values)

    def done(self) -> list[Tile]:
        """The tiles marked done since the last call."""
        self._raise()
        with self._lock:
            out, self._committed = self._committed, []
        return out

    def finish(self) -> Iterator[Tile]:
        """Write and commit the remaining tiles; yields those marked done since the last ``done()``."""
        self._close()
        self._raise()
        yield from self.done()

    def _write(self, i: int, j: int, values: dict[str, np.ndarray]) -> tuple[Tile, list[Path]]:
        return (i, j), self._store.write_data(i, j, values)

    def _hand_over_written(self) -> None:
        """Wait for the writer's current tile and queue it for the committer (a write error is kept)."""
        if self._written is None:
            return
        future, self._written = self._written, None
        try:
            self._to_commit.put(future.result())
        except BaseException as exc:  # raised by the caller's next call; nothing of this tile is marked done
            self._fail(exc)

    def _commit_loop(self) -> None:
        """Commit, as one group, every tile queued since the previous commit began; stop at _END."""
        while True:
            group = [self._to_commit.get()]
            while not self._to_commit.empty():
                group.append(self._to_commit.get_nowait())
            end = _END in group
            written = [item for item in group if item is not _END]
            if written and self._error is None:
                try:
                    self._store.mark_done([tile for tile, _ in written], [f for _, files in written for f in files])
                except BaseException as exc:
                    self._fail(exc)
                else:
                    with self._lock:
                        self._committed.extend(tile for tile, _ in written)
            if end:
                return

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hand_over_written()
        self._writer.shutdown()
        self._to_commit.put(_END)
        self._committer.join()
