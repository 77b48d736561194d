"""nk.scale.kernel / empirical_ntk into stores without Dask (client=None), checked against the in-memory
nk.kernel / nk.empirical_ntk; resume, fingerprints and store errors.

Tolerance 1e-12 in float64 (the issue's): each tile is the in-memory computation on a subset of the examples,
so the two differ only by the order of round-off (~1e-15 on kernels of size ~1).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

zarr = pytest.importorskip("zarr")

from scale_helpers import files, finite_model, inputs, mlp, pooled_cnn, reference  # noqa: E402

import ntkit as nk  # noqa: E402
from ntkit.errors import InvalidArgumentError, StoreError, StoreMismatchError, UnsupportedError  # noqa: E402
from ntkit.scale import store as store_module  # noqa: E402

TOL = 1e-12


def assert_store_equals(k: nk.scale.KernelStore, ref: dict[str, torch.Tensor]) -> None:
    loaded = k.to_torch()
    for name, value in ref.items():
        assert float((loaded[name] - value).abs().max()) <= TOL, name
        lazy = torch.from_numpy(getattr(k, name).compute())  # the dask view, with transposed lower tiles
        assert float((lazy - value).abs().max()) <= TOL, name


@pytest.mark.parametrize("symmetric", [True, False])
def test_mlp_store_equals_in_memory_kernel_with_ragged_tiles(tmp_path, symmetric):
    x1, x2 = inputs(23, 5), (None if symmetric else inputs(17, 5, seed=1))
    k = nk.scale.kernel(mlp(), x1, x2, store=tmp_path / "k.zarr", tile_size=7)  # 7 divides neither 23 nor 17
    assert k.complete and k.tiles_computed == k.tiles_total == (10 if symmetric else 12)
    assert_store_equals(k, reference(mlp(), x1, x2))
    again = nk.scale.kernel(mlp(), x1, x2, store=tmp_path / "k.zarr")
    assert again.tiles_computed == 0


@pytest.mark.parametrize("symmetric", [True, False])
def test_pooled_cnn_store_equals_in_memory_kernel(tmp_path, symmetric):
    x1, x2 = inputs(7, 2, 5, 5), (None if symmetric else inputs(5, 2, 5, 5, seed=1))
    k = nk.scale.kernel(pooled_cnn(), x1, x2, store=tmp_path / "k.zarr", get="ntk", tile_size=3)
    assert k.kernels == ("ntk",)
    assert_store_equals(k, {"ntk": reference(pooled_cnn(), x1, x2)["ntk"]})


@pytest.mark.parametrize("symmetric", [True, False])
def test_empirical_ntk_store_equals_in_memory(tmp_path, symmetric):
    model = finite_model()
    x1, x2 = inputs(19, 5), (None if symmetric else inputs(11, 5, seed=1))
    k = nk.scale.empirical_ntk(model, x1, x2, store=tmp_path / "e.zarr", tile_size=6)
    assert_store_equals(k, {"ntk": nk.empirical_ntk(model, x1, x2)})


def test_open_reads_the_store_and_progress_counts_tiles(tmp_path):
    seen = []
    x = inputs(10, 5)
    nk.scale.kernel(
        mlp(),
        x,
        store=tmp_path / "k.zarr",
        get="nngp",
        tile_size=4,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(i, 6) for i in range(1, 7)]
    k = nk.scale.KernelStore.open(tmp_path / "k.zarr")
    assert (k.shape, k.tile_size, k.kernels, k.dtype, k.tiles_computed) == ((10, 10), 4, ("nngp",), torch.float64, 0)
    assert k.complete and k.tiles_done == 6
    assert float((k.to_torch("nngp") - reference(mlp(), x)["nngp"]).abs().max()) <= TOL
    with pytest.raises(InvalidArgumentError, match="holds nngp, not 'ntk'"):
        k.ntk  # noqa: B018


def test_default_tile_size_follows_the_memory_budget(tmp_path):
    # 2 kernels x 8 bytes x 2 copies + 8 per entry = 40 bytes: a 40 KB budget gives tiles of sqrt(1000) -> 31.
    k = nk.scale.kernel(mlp(), inputs(40, 5), store=tmp_path / "k.zarr", memory_budget=40_000)
    assert k.tile_size == 31 and k.tiles_total == 3


@pytest.mark.slow  # two spawned processes import torch: ~20 s on the shared 2-core machine
def test_local_processes_per_device_equal_in_memory(tmp_path):
    """devices= (one spawned process per device) on two CPU 'devices'; on GPUs see test_cuda_devices."""
    x = inputs(13, 5)
    k = nk.scale.kernel(mlp(), x, store=tmp_path / "k.zarr", tile_size=4, devices=["cpu", "cpu"])
    assert k.tiles_computed == 10
    assert_store_equals(k, reference(mlp(), x))


@pytest.mark.slow  # spawned processes import torch, tiles slowed down to be killed mid-run: ~40 s
def test_a_device_process_killed_mid_run_has_its_tiles_retried(tmp_path):
    """devices=: SIGKILL one of the two local processes while tiles run; the pool is restarted with the tiles
    not done (those in flight included), the call completes, and the store equals the in-memory kernel."""
    import multiprocessing

    from scale_helpers import SlowTiles, start_until_done

    from ntkit.scale import tiles
    from ntkit.scale.kernels import _compute

    x, path = inputs(30, 5), tmp_path / "k.zarr"
    slow = SlowTiles(tiles.InfiniteTiles(mlp(), ("nngp", "ntk"), torch.float64, 2**30), 0.5)
    fingerprint = {"kind": "test", "architecture": "slow", "dtype": "float64", "kernels": "nngp,ntk"}
    result = {}

    def run() -> None:  # nk.scale.kernel's own path with the slow tile function
        result["store"] = _compute(
            slow,
            x,
            None,
            fingerprint,
            ("nngp", "ntk"),
            torch.float64,
            path,
            None,
            ["cpu", "cpu"],
            5,
            False,
            2**30,
            False,
        )

    driver = start_until_done(run, path, 3, timeout=180)
    workers = multiprocessing.active_children()
    assert len(workers) == 2
    os.kill(workers[0].pid, signal.SIGKILL)
    driver.join(timeout=300)
    assert not driver.is_alive()
    k = result["store"]
    assert k.complete and k.tiles_computed == k.tiles_total == 21
    assert_store_equals(k, reference(mlp(), x))


def test_device_processes_that_keep_dying_end_the_call_cleanly(tmp_path, monkeypatch):
    """Every pool breaks (as if each process were killed): after PROCESS_RESTARTS restarts a WorkerError says
    how many tiles are missing, and the tiles done stay done for the next call."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from ntkit.errors import WorkerError
    from ntkit.scale import engine

    pools = []

    class BreakingPool:  # stands in for ProcessPoolExecutor: computes the first tile of each pool, then breaks
        def __init__(self, *args, initargs, **kwargs):
            pools.append(self)
            self.payload, self.submitted = initargs[0], 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, i, j):
            future = Future()
            if self.submitted == 0:
                future.set_result(engine.run_tile(self.payload, i, j, "cpu"))
            else:
                future.set_exception(BrokenProcessPool("a process died"))
            self.submitted += 1
            return future

    monkeypatch.setattr(engine, "ProcessPoolExecutor", BreakingPool)
    seen, x, path = [], inputs(16, 5), tmp_path / "k.zarr"
    with pytest.raises(WorkerError, match=r"died 4 times .* 6 tiles are not done.*resume"):
        nk.scale.kernel(
            mlp(), x, store=path, tile_size=4, devices=["cpu", "cpu"], progress=lambda done, total: seen.append(done)
        )
    assert len(pools) == engine.PROCESS_RESTARTS + 1 and seen == [1, 2, 3, 4]
    assert nk.scale.KernelStore.open(path).tiles_done == 4
    monkeypatch.undo()
    k = nk.scale.kernel(mlp(), x, store=path)
    assert k.tiles_computed == 6
    assert_store_equals(k, reference(mlp(), x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_devices(tmp_path):
    x = inputs(13, 5)
    devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    k = nk.scale.kernel(mlp(), x, store=tmp_path / "k.zarr", tile_size=4, devices=devices)
    assert_store_equals(k, reference(mlp(), x))  # float64 on the GPU: same formulas, round-off only


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("x1", "x1"),
        ("W_std", "architecture"),
        ("dtype", "dtype (float64 stored, float32 now)"),
        ("get", "kernels (nngp,ntk stored, ntk now)"),
    ],
)
def test_a_store_of_another_computation_is_an_error_and_is_left_alone(tmp_path, change, named):
    x = inputs(9, 5)
    path = tmp_path / "k.zarr"
    nk.scale.kernel(mlp(), x, store=path, tile_size=4)
    before = files(path)
    net, kwargs = mlp(), {}
    if change == "x1":
        x = x.clone()
        x[3, 1] += 1e-9
    elif change == "W_std":
        net[2].W_std = 1.31
    elif change == "dtype":
        kwargs["dtype"] = torch.float32
    else:
        kwargs["get"] = "ntk"
    with pytest.raises(StoreMismatchError, match="holds another computation: " + re.escape(named)) as err:
        nk.scale.kernel(net, x, store=path, **kwargs)
    assert "left as it is" in str(err.value)
    assert files(path) == before


def test_a_trained_model_is_another_empirical_computation(tmp_path):
    model, x = finite_model(), inputs(6, 5)
    nk.scale.empirical_ntk(model, x, store=tmp_path / "e.zarr")
    with torch.no_grad():
        model[0].bias.add_(1e-6)
    with pytest.raises(StoreMismatchError, match="parameters"):
        nk.scale.empirical_ntk(model, x, store=tmp_path / "e.zarr")


def test_a_store_of_another_ntkit_version_needs_to_be_accepted(tmp_path):
    x, path = inputs(9, 5), tmp_path / "k.zarr"
    nk.scale.kernel(mlp(), x, store=path, tile_size=4)
    group = zarr.open_group(path, mode="r+")
    fingerprint = dict(group.attrs["fingerprint"], ntkit_version="0.0.1")
    group.attrs["fingerprint"] = fingerprint
    before = files(path)
    with pytest.raises(StoreMismatchError, match=r"written by ntkit 0\.0\.1, this is ntkit"):
        nk.scale.kernel(mlp(), x, store=path)
    with pytest.raises(StoreMismatchError, match="allow_other_version=True"):
        nk.scale.KernelStore.open(path)
    assert files(path) == before
    k = nk.scale.kernel(mlp(), x, store=path, allow_other_version=True)
    assert k.tiles_computed == 0 and nk.scale.KernelStore.open(path, allow_other_version=True).complete


def test_read_only_stores(tmp_path):
    x, path = inputs(9, 5), tmp_path / "k.zarr"
    nk.scale.kernel(mlp(), x, store=path, tile_size=4)
    read_only = zarr.storage.LocalStore(path, read_only=True)
    assert nk.scale.kernel(mlp(), x, store=read_only).tiles_computed == 0  # complete: nothing to write
    zarr.open_array(path / "tiles_done", mode="r+")[0, 1] = 0  # one tile not done
    before = files(path)
    with pytest.raises(StoreError, match="read-only and has 1 missing tiles"):
        nk.scale.kernel(mlp(), x, store=zarr.storage.LocalStore(path, read_only=True))
    with pytest.raises(StoreError, match="read-only"):
        nk.scale.kernel(mlp(), x, store=zarr.storage.LocalStore(tmp_path / "new.zarr", read_only=True))
    assert files(path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="permission denied"):
            nk.scale.kernel(mlp(), inputs(9, 5), store=tmp_path / "k.zarr")
    finally:
        tmp_path.chmod(0o700)


def test_a_full_disk_leaves_the_tile_not_done_and_the_call_resumes(tmp_path, monkeypatch):
    x, path = inputs(13, 5), tmp_path / "k.zarr"
    flush = store_module._fsync

    def full_at_tile_1_2(p, directory=False):
        if p.parts[-2:] == ("1", "2"):  # the chunk files of tile (1, 2) cannot be flushed
            raise OSError(errno.ENOSPC, "No space left on device")
        flush(p, directory)

    monkeypatch.setattr(store_module, "_fsync", full_at_tile_1_2)
    with pytest.raises(StoreError, match=r"disk of .* is full .* not marked done"):
        nk.scale.kernel(mlp(), x, store=path, tile_size=4)
    k = nk.scale.KernelStore.open(path)
    assert not k.done_mask()[1, 2] and k.tiles_done < 10  # (1, 2) and the tiles committed with it are not done
    done = k.tiles_done
    monkeypatch.undo()
    k = nk.scale.kernel(mlp(), x, store=path)
    assert k.tiles_computed == 10 - done
    assert_store_equals(k, reference(mlp(), x))


def test_tiles_are_marked_done_only_after_their_chunks_are_flushed(tmp_path, monkeypatch):
    """Every fsync of a tile's chunk happens while that tile is not yet done, and every done tile had both its
    chunks and their directories flushed (the durability rule, with tiles committed in groups)."""
    x, path = inputs(25, 5), tmp_path / "k.zarr"
    flush, flushed, marked_too_early = store_module._fsync, set(), []

    def checking(p, directory=False):
        if not directory:
            i, j = int(p.parts[-2]), int(p.parts[-1])
            if zarr.open_array(path / "tiles_done", mode="r")[i, j]:
                marked_too_early.append((i, j))
        flushed.add(p)
        flush(p, directory)

    monkeypatch.setattr(store_module, "_fsync", checking)
    k = nk.scale.kernel(mlp(), x, store=path, tile_size=4)
    assert k.complete and not marked_too_early
    for i, j in k.grid.tiles():
        chunks = [path / name / "c" / str(i) / str(j) for name in ("nngp", "ntk")]
        assert all(c in flushed and c.parent in flushed for c in chunks), (i, j)


def test_bad_locations_and_arguments(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="exists and is not an ntkit kernel store"):
        nk.scale.kernel(mlp(), inputs(4, 5), store=tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    with pytest.raises(StoreError, match="no ntkit kernel store"):
        nk.scale.KernelStore.open(tmp_path / "absent.zarr")
    with pytest.raises(InvalidArgumentError, match="tile_size"):
        nk.scale.kernel(mlp(), inputs(4, 5), store=tmp_path / "k.zarr", tile_size=0)
    with pytest.raises(InvalidArgumentError, match="either client"):
        nk.scale.kernel(mlp(), inputs(4, 5), store=tmp_path / "k.zarr", client=object(), devices=["cpu"])
    unpooled = nk.nn.Sequential(nk.nn.Conv2d(2, 4, 3), nk.nn.ReLU())
    with pytest.raises(UnsupportedError, match="pooling or flattening"):
        nk.scale.kernel(unpooled, inputs(4, 2, 5, 5), store=tmp_path / "c.zarr")
    nk.scale.kernel(mlp(), inputs(8, 5), store=tmp_path / "t.zarr", tile_size=4)
    with pytest.raises(StoreMismatchError, match="tile_size=None"):
        nk.scale.kernel(mlp(), inputs(8, 5), store=tmp_path / "t.zarr", tile_size=5)


def test_import_ntkit_does_not_import_the_extra_and_a_missing_extra_is_named():
    code = textwrap.dedent(
        """
        import sys
        import ntkit as nk
        assert not [m for m in sys.modules if m.split(".")[0] in ("zarr", "dask", "distributed")], "imported"
        sys.modules["zarr"] = None  # as if zarr were not installed
        import torch
        try:
            nk.scale.kernel(torch.nn.Linear(2, 1), torch.randn(3, 2), store="unused.zarr")
        except nk.errors.MissingDependencyError as e:
            assert "pip install 'ntkit[scale]'" in str(e), e
            print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


DRIVER = """
import sys, time
import torch
import ntkit as nk
from ntkit.scale import tiles
from scale_helpers import inputs, mlp

compute = tiles.InfiniteTiles.__call__

def slow(self, a, b):  # a slow kernel, so that the test can kill the run half way
    time.sleep(0.15)
    return compute(self, a, b)

tiles.InfiniteTiles.__call__ = slow
nk.scale.kernel(mlp(), inputs(40, 5), store=sys.argv[1], tile_size=5)
"""


def test_resume_after_the_driver_is_killed(tmp_path):
    """SIGKILL the driving process half way; the next call computes exactly the tiles without a done marker
    (those in flight when it died included) and the result equals the in-memory kernel."""
    path = tmp_path / "k.zarr"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(path)], env=env)
    total = 36  # 8 x 8 tiles, upper triangle
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (path / "zarr.json").exists() and nk.scale.KernelStore.open(path).tiles_done >= total // 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the driver ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = nk.scale.KernelStore.open(path).tiles_done
    assert total // 2 <= done < total
    k = nk.scale.kernel(mlp(), inputs(40, 5), store=path)
    assert k.tiles_computed == total - done
    assert_store_equals(k, reference(mlp(), inputs(40, 5)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunks_written_past_the_page_cache_are_the_files_zarr_writes(tmp_path, monkeypatch, dtype):
    """On a local disk that takes O_DIRECT, each chunk file is written directly (ntkit.scale.direct); the files,
    ragged edge tiles padded with NaN included, are byte for byte those that zarr itself writes, and no
    temporary file is left."""
    from ntkit.scale.direct import DirectChunkWriter

    written = []
    direct_write = DirectChunkWriter.write

    def counting(self, path, values, array):
        ok = direct_write(self, path, values, array)
        written.append(ok)
        return ok

    x = inputs(11, 5).to(dtype)  # 11 = 2 x 4 + 3: ragged last tiles
    monkeypatch.setattr(DirectChunkWriter, "write", counting)
    nk.scale.kernel(mlp(), x, store=tmp_path / "direct.zarr", tile_size=4)
    if not any(written):
        pytest.skip("this file system refuses O_DIRECT (zarr wrote every chunk)")
    assert all(written) and len(written) == 2 * 6  # two kernels, 6 tiles on and above the diagonal
    monkeypatch.setattr(DirectChunkWriter, "write", lambda self, path, values, array: False)
    nk.scale.kernel(mlp(), x, store=tmp_path / "zarr.zarr", tile_size=4)
    direct, plain = files(tmp_path / "direct.zarr"), files(tmp_path / "zarr.zarr")
    chunks = [name for name in plain if name.startswith(("nngp/c/", "ntk/c/"))]
    assert len(chunks) == 12 and sorted(n for n in direct if "/c/" in n) == sorted(n for n in plain if "/c/" in n)
    assert all(direct[name] == plain[name] for name in chunks)
    if dtype == torch.float64:  # 1e-12 to the in-memory kernel (float32 tiles differ from it by round-off)
        assert_store_equals(nk.scale.KernelStore.open(tmp_path / "direct.zarr"), reference(mlp(), x))


def test_a_file_system_that_refuses_o_direct_gets_zarrs_writes(tmp_path, monkeypatch):
    """os.open with O_DIRECT failing with EINVAL (tmpfs): the chunk is written by zarr instead, O_DIRECT is not
    tried again in that directory, and the store is right."""
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform (zarr writes every chunk)")
    plain_open, tried = os.open, []

    def refusing(path, flags, *args):
        if flags & os.O_DIRECT:
            tried.append(Path(path).parent)
            raise OSError(errno.EINVAL, "Invalid argument")
        return plain_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing)
    x = inputs(11, 5)
    k = nk.scale.kernel(mlp(), x, store=tmp_path / "k.zarr", tile_size=4)
    monkeypatch.undo()
    assert len(tried) == len(set(tried))  # once per chunk directory
    assert_store_equals(k, reference(mlp(), x))
