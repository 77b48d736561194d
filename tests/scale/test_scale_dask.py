"""nk.scale on a Dask LocalCluster (2 worker processes, 1 thread each): stores equal the in-memory kernels, and a
worker killed mid-run changes nothing. Tolerance 1e-12 in float64, as in test_scale_store.py (round-off only)."""

from __future__ import annotations

import os
import signal

import pytest
import torch

pytest.importorskip("zarr")
distributed = pytest.importorskip("distributed")

from scale_helpers import SlowTiles, finite_model, inputs, mlp, pooled_cnn, reference, start_until_done  # noqa: E402
from test_scale_store import assert_store_equals  # noqa: E402

import ntkit as nk  # noqa: E402
from ntkit.scale import tiles  # noqa: E402
from ntkit.scale.kernels import _compute  # noqa: E402


@pytest.fixture(scope="session")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with distributed.Client(cluster) as c:
        c.run(torch.set_num_threads, 1)
        yield c
    cluster.close()


def test_stores_on_a_cluster_equal_in_memory_kernels(client, tmp_path):
    x1, x2 = inputs(23, 5), inputs(9, 5, seed=1)
    k = nk.scale.kernel(mlp(), x1, store=tmp_path / "mlp.zarr", client=client, tile_size=7)
    assert k.tiles_computed == 10
    assert_store_equals(k, reference(mlp(), x1))

    c1, c2 = inputs(6, 2, 5, 5), inputs(5, 2, 5, 5, seed=1)
    k = nk.scale.kernel(pooled_cnn(), c1, c2, store=tmp_path / "cnn.zarr", client=client, tile_size=4)
    assert_store_equals(k, reference(pooled_cnn(), c1, c2))

    model = finite_model()
    e = nk.scale.empirical_ntk(model, x1, x2, store=tmp_path / "e.zarr", client=client, tile_size=5)
    assert_store_equals(e, {"ntk": nk.empirical_ntk(model, x1, x2)})


@pytest.mark.slow  # ~20 s: tiles slowed down to be killed mid-run, then the worker's restart
def test_a_worker_killed_mid_run_gives_the_same_result(client, tmp_path):
    """SIGKILL one worker process while tiles run: Dask reschedules its tiles elsewhere (the nanny restarts
    the worker); every tile is done once the call returns and the store equals the in-memory kernel."""
    x, path, net = inputs(30, 5), tmp_path / "k.zarr", mlp()
    slow = SlowTiles(tiles.InfiniteTiles(net, ("nngp", "ntk"), torch.float64, 2**30), 0.3)  # ~0.3 s per tile
    fingerprint = {"kind": "test", "architecture": "slow", "dtype": "float64", "kernels": "nngp,ntk"}
    result = {}

    def run() -> None:  # nk.scale.kernel's own path with the slow tile function
        result["store"] = _compute(
            slow, x, None, fingerprint, ("nngp", "ntk"), torch.float64, path, client, None, 5, False, 2**30, False
        )

    driver = start_until_done(run, path, 3, timeout=120)
    pids = client.run(os.getpid)
    os.kill(next(iter(pids.values())), signal.SIGKILL)
    driver.join(timeout=300)
    assert not driver.is_alive()
    k = result["store"]
    assert k.complete and k.tiles_computed == k.tiles_total == 21
    assert_store_equals(k, reference(mlp(), x))
    client.wait_for_workers(2, timeout=120)
