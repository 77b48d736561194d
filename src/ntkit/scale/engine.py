"""Fill a store's missing tiles: in this process, on a Dask cluster, or in one local process per device.

Every way ships the :class:`~ntkit.scale.tiles.Payload` (tile function and inputs) to each worker once and runs
:func:`~ntkit.scale.tiles.run_tile` per missing tile; the worker writes the tile into the store and marks it done
itself, so the driving process only counts. Killing the driver loses at most the tiles in flight.
"""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from ..errors import InvalidArgumentError, UnsupportedError, WorkerError
from .deps import require
from .store import KernelStore
from .tiles import Payload, prepared, run_tile
from .writer import TileWriter

__all__ = ["PROCESS_RESTARTS", "fill", "parse_devices"]

Progress = bool | Callable[[int, int], object] | None

#: How often the local processes of ``devices=`` are restarted after one of them died (Dask's default
#: ``distributed.scheduler.allowed-failures`` is 3 as well).
PROCESS_RESTARTS = 3


def fill(
    store: KernelStore,
    payload: Payload,
    *,
    client: Any = None,
    devices: Sequence[torch.device] | None = None,
    progress: Progress = False,
) -> int:
    """Compute and write the tiles of ``store`` that are not done; returns how many were computed."""
    missing = store.missing_tiles()
    if not missing:
        return 0
    report = _progress(progress, store.tiles_total, store.tiles_total - len(missing))
    if client is not None:
        finished = _on_dask(client, payload.to(torch.device("cpu")), missing)
    elif devices:
        finished = _on_processes(payload.to(torch.device("cpu")), missing, devices)
    else:
        finished = _in_process(payload, missing)
    count = 0
    try:
        for _ in finished:
            count += 1
            report(count)
    finally:
        report(None)
    return count


def _in_process(payload: Payload, missing: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Tiles one after the other on the inputs' device; a writer thread writes each tile while the next one is
    computed, and a committer thread flushes the written tiles to disk in groups (:mod:`ntkit.scale.writer`)."""
    local, store = prepared(payload, payload.x1.device)
    with TileWriter(store) as writer:
        for i, j in missing:
            writer.put(i, j, local.compute(i, j))
            yield from writer.done()
        yield from writer.finish()


def _on_dask(client: Any, payload: Payload, missing: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Tiles as Dask tasks; the payload is scattered to every worker once. Dask reschedules the tasks of a worker
    that dies (up to ``distributed.scheduler.allowed-failures`` times)."""
    distributed = require("distributed", "nk.scale with a Dask client")
    if not isinstance(client, distributed.Client):
        raise InvalidArgumentError(f"client must be a dask.distributed.Client or None, got {type(client).__name__}.")
    [remote] = client.scatter([payload], broadcast=True, hash=False)
    run = uuid.uuid4().hex[:12]
    futures = [client.submit(run_tile, remote, i, j, key=f"ntkit-tile-{run}-{i}-{j}", pure=False) for i, j in missing]
    try:
        for future in distributed.as_completed(futures):
            yield future.result()
    finally:
        client.cancel(futures)
        client.cancel([remote])


_DEVICE: dict[str, Any] = {}


def _start_device_worker(payload: Payload, devices: list[str], counter: Any) -> None:
    """Initializer of each local process: take the next device, and keep the payload."""
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    device = devices[index % len(devices)]
    if torch.device(device).type == "cpu":  # processes on CPU share its cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // len(devices)))
    _DEVICE.update(payload=payload, device=device)


def _run_on_device(i: int, j: int) -> tuple[int, int]:
    return run_tile(_DEVICE["payload"], i, j, _DEVICE["device"])


def _on_processes(payload: Payload, missing: list[tuple[int, int]], devices: Sequence[torch.device]) -> Iterator[Any]:
    """Tiles in one spawned process per device (the payload is pickled to each process once). When a process
    dies (killed, out of memory), the pool breaks: its tiles and those not yet started run again in a fresh
    pool, up to ``PROCESS_RESTARTS`` times (as Dask retries a dead worker's tasks); then :class:`WorkerError`."""
    context = multiprocessing.get_context("spawn")
    names = [str(d) for d in devices]
    remaining = list(missing)
    for _ in range(PROCESS_RESTARTS + 1):
        counter = context.Value("i", 0)
        with ProcessPoolExecutor(
            len(names), mp_context=context, initializer=_start_device_worker, initargs=(payload, names, counter)
        ) as pool:
            futures = {pool.submit(_run_on_device, i, j): (i, j) for i, j in remaining}
            try:
                for future in as_completed(futures):
                    if isinstance(future.exception(), BrokenProcessPool):
                        break
                    remaining.remove(future.result())
                    yield futures[future]
                else:
                    return
            finally:
                for future in futures:
                    future.cancel()
        for future, tile in futures.items():  # finished before the pool broke, not yet counted
            if tile in remaining and future.done() and not future.cancelled() and future.exception() is None:
                remaining.remove(tile)
                yield tile
        if not remaining:
            return
    raise WorkerError(
        f"the processes computing tiles on {', '.join(names)} died {PROCESS_RESTARTS + 1} times (killed, or out of "
        f"memory: try a smaller tile_size); {len(remaining)} tiles are not done. The tiles done are kept: call "
        "nk.scale.kernel again with the same arguments and store to resume."
    )


def parse_devices(devices: Sequence[str | torch.device] | None, client: Any) -> list[torch.device] | None:
    """Checked ``devices=``: a non-empty list of torch devices, not together with a Dask client."""
    if devices is None:
        return None
    if client is not None:
        raise InvalidArgumentError("pass either client= (Dask) or devices= (local processes), not both.")
    if isinstance(devices, str | torch.device) or not devices:
        raise InvalidArgumentError(f"devices must be a non-empty list such as ['cuda:0', 'cuda:1'], got {devices!r}.")
    out = [torch.device(d) for d in devices]
    for d in out:
        if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
            raise UnsupportedError(f"device {d} is not available here ({torch.cuda.device_count()} CUDA devices).")
    return out


def _progress(progress: Progress, total: int, initial: int) -> Callable[[int | None], None]:
    """report(computed) after each tile, report(None) at the end: a tqdm bar (tiles done of all, ETA) for True,
    ``progress(done, total)`` for a callback."""
    if progress is None or progress is False:
        return lambda done: None
    if progress is True:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise UnsupportedError(
                "progress=True needs tqdm (pip install 'ntkit[scale]'); or pass a callback progress(done, total)."
            ) from None
        bar = tqdm(total=total, initial=initial, desc="kernel tiles", unit="tile")

        def advance(done: int | None) -> None:
            bar.close() if done is None else bar.update(1)

        return advance
    if callable(progress):
        callback = progress

        def call(done: int | None) -> None:
            if done is not None:
                callback(initial + done, total)

        return call
    raise InvalidArgumentError(f"progress must be True, False or a callback progress(done, total), got {progress!r}.")
