"""ntkit.scale: stored, distributed kernels and their solvers, against baselines measured in the same run.

Cases (``--case``; each prints its ratio, the machine's load average next to every time):
  workers    a compute-bound pooled CNN kernel (NTK, float32: 3x3 conv + ReLU twice, global average pooling,
             ``--n`` images 3x8x8, default 96) into a store on a Dask LocalCluster of 1 worker and of
             ``--workers`` workers (default 2), one thread each. Target: 2 workers >= 1.8x one worker.
  overhead   an MLP kernel (NNGP and NTK, float32, 2 hidden ReLU layers, ``--n`` inputs of dimension 784,
             default 20,000) with in-memory nk.kernel and with nk.scale.kernel into a local store (client=None).
             Target: store time <= 1.3x in-memory time, best of ``--repeat`` (default 3) interleaved runs of
             each. Also prints how long the disk alone takes to write and flush as many bytes as the store
             holds, through the page cache and past it (O_DIRECT, as the store writes on a local disk): the
             store cannot take less than the larger of the latter and the computation (its floor).
  cg         an MLP NTK (float64, ``--n`` default 10,000) into a store; 10 outputs solved by Cholesky and by
             CG (tol 1e-10) with the Nyström and with the pivoted-Cholesky preconditioner (rank 256); max
             difference of the test means (target <= 1e-6 relative), times, iterations.
  big        the MNIST-sized case: the MLP NTK (float32) at ``--n`` default 60,000 into a store, then CG for 10
             outputs (tol 1e-6, diag_reg 1e-3, Nyström rank ``--rank`` default 2048, the stored tiles (7.7 GB)
             kept in memory: memory_budget 12G); times, iterations, residual and the peak resident memory of
             this process and its children (target < 16 GB); the time of each product with the kernel as it
             runs. Runs only if >= 12 GB are available (``--force`` overrides).

Inputs are synthetic (784 features of a 20-dimensional latent Gaussian plus noise, so the kernel's spectrum
decays like that of image data); targets are 10 one-hot classes of a random linear readout. Stores go to
``--dir`` (default a temporary directory, removed at the end).

    PYTHONPATH=src python benchmarks/scale.py --case overhead --n 20000
    PYTHONPATH=src python benchmarks/scale.py --case workers --workers 2
    PYTHONPATH=src python benchmarks/scale.py --case big --n 60000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import ntkit as nk
from ntkit import nn as N

DEFAULT_N = {"workers": 96, "overhead": 20_000, "cg": 10_000, "big": 60_000}


def load() -> str:
    return "load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg())


def peak_rss_gib() -> float:
    """Peak resident memory of this process or of its largest waited-for child (Linux: ru_maxrss in KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 2**20


def available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def features(n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, 784): a 20-dimensional latent Gaussian mapped linearly, plus 10% noise, scaled to unit variance."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(20, 784, generator=torch.Generator().manual_seed(1234)) / 20**0.5
    x = torch.randn(n, 20, generator=g) @ mixing + 0.3 * torch.randn(n, 784, generator=g)
    return (x / x.std()).to(dtype)


def labels(x: torch.Tensor) -> torch.Tensor:
    """10 one-hot classes of a fixed random linear readout, centred (float64)."""
    readout = torch.randn(x.shape[1], 10, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    classes = (x.double() @ readout).argmax(1)
    return torch.nn.functional.one_hot(classes, 10).double() - 0.1


def mlp() -> torch.nn.Module:
    return N.Sequential(
        N.Linear(784, 512, W_std=1.5, b_std=0.05),
        N.ReLU(),
        N.Linear(512, 512, W_std=1.5, b_std=0.05),
        N.ReLU(),
        N.Linear(512, 10, W_std=1.5, b_std=0.05),
    )


def cnn() -> torch.nn.Module:
    return N.Sequential(
        N.Conv2d(3, 64, 3, padding="same", W_std=1.4, b_std=0.1),
        N.ReLU(),
        N.Conv2d(64, 64, 3, padding="same", W_std=1.4, b_std=0.1),
        N.ReLU(),
        N.GlobalAvgPool(),
        N.Linear(64, 1, W_std=1.4),
    )


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def warm_worker() -> None:
    """On each worker: one core (whatever the machine has), ntkit imported, one small kernel computed."""
    torch.set_num_threads(1)
    nk.kernel(cnn(), images(2, seed=1), get="ntk")


def case_workers(n: int, workers: int, root: Path) -> None:
    from dask.distributed import Client, LocalCluster

    x = images(n)
    times = {}
    for count in (1, workers):
        with (
            LocalCluster(n_workers=count, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            client.run(warm_worker)
            seconds, k = timed(
                lambda c=client, m=count: nk.scale.kernel(
                    cnn(), x, store=root / f"cnn-{m}.zarr", client=c, get="ntk", tile_size=8
                )
            )
            times[count] = seconds
            print(f"  {count} worker(s): {seconds:.1f} s for {k.tiles_computed} tiles of 8 x 8 ({load()})")
    a = nk.scale.KernelStore.open(root / "cnn-1.zarr").to_torch("ntk")
    b = nk.scale.KernelStore.open(root / f"cnn-{workers}.zarr").to_torch("ntk")
    print(f"  same values: max difference {float((a - b).abs().max()):.2g}")
    print(f"workers: {workers} workers are {times[1] / times[workers]:.2f}x one worker (target >= 1.8x)")


def case_overhead(n: int, root: Path, repeat: int) -> None:
    x = features(n)
    nk.kernel(mlp(), x[:500])  # warm-up (thread pool, first allocations)
    t_mem, t_store = [], []
    for _ in range(repeat):  # interleaved, best of each: load from other processes hits both sides alike
        seconds, k = timed(lambda: nk.kernel(mlp(), x, memory_budget="12G"))  # the whole result must fit
        t_mem.append(seconds)
        print(f"  in-memory nk.kernel: {seconds:.1f} s ({load()})", flush=True)
        del k
        shutil.rmtree(root / "mlp.zarr", ignore_errors=True)  # a store left from the last repetition would resume
        seconds, s = timed(lambda: nk.scale.kernel(mlp(), x, store=root / "mlp.zarr"))
        t_store.append(seconds)
        print(
            f"  nk.scale.kernel into a store: {seconds:.1f} s, {s.tiles_total} tiles of {s.tile_size} ({load()})",
            flush=True,
        )
    written = sum(p.stat().st_size for p in (root / "mlp.zarr").rglob("*") if p.is_file())
    best_mem, best_store = min(t_mem), min(t_store)
    for direct in (False, True):
        t_disk = disk_write_seconds(root, written, direct)
        print(
            f"  the disk alone, {'past' if direct else 'through'} the page cache: writing and flushing the store's "
            f"{written / 1e9:.2f} GB takes {t_disk:.1f} s ({written / t_disk / 1e6:.0f} MB/s), "
            f"{t_disk / best_mem:.2f}x the in-memory time ({load()})"
        )
    print(
        f"  floor on this disk: the store takes at least max(computing, writing past the page cache) = "
        f"{max(1.0, t_disk / best_mem):.2f}x the in-memory time"
    )
    print(f"overhead: store / in-memory = {best_store / best_mem:.2f}x, best of {repeat} each (target <= 1.3x)")


def disk_write_seconds(root: Path, total: int, direct: bool) -> float:
    """Seconds to write ``total`` bytes of random data into 64 MiB files under ``root`` and flush them once:
    past the page cache (O_DIRECT, as the store writes its chunks on a local disk) or through it."""
    import mmap

    block = mmap.mmap(-1, 64 * 2**20)  # page-aligned, as O_DIRECT needs
    block.write(np.random.default_rng(0).bytes(len(block)))
    flags = os.O_WRONLY | os.O_CREAT | (getattr(os, "O_DIRECT", 0) if direct else 0)
    paths = []
    start = time.perf_counter()
    for k in range(-(-total // len(block))):
        paths.append(root / f"disk-{k}")
        fd = os.open(paths[-1], flags, 0o644)
        try:
            os.write(fd, memoryview(block))
        finally:
            os.close(fd)
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    seconds = time.perf_counter() - start
    for path in paths:
        path.unlink()
    return seconds


def case_cg(n: int, root: Path) -> None:
    x, t = features(n, dtype=torch.float64), features(1000, seed=5, dtype=torch.float64)
    y = labels(x)
    t_k, k = timed(lambda: nk.scale.kernel(mlp(), x, store=root / "train.zarr", get="ntk"))
    kt = nk.scale.kernel(mlp(), t, x, store=root / "test.zarr", get="ntk")
    print(f"  kernels into stores: {t_k:.1f} s ({load()})")
    t_chol, chol = timed(lambda: nk.scale.gp_inference(k, y, diag_reg=1e-3, method="cholesky"))
    print(f"  Cholesky {t_chol:.1f} s ({load()})")
    a = chol(kt)
    for preconditioner in ("nystrom", "pivoted_cholesky"):
        t_cg, cg = timed(
            lambda p=preconditioner: nk.scale.gp_inference(
                k, y, diag_reg=1e-3, method="cg", tol=1e-10, preconditioner=p
            )
        )
        diff = float((a - cg(kt)).abs().max() / a.abs().max())
        print(
            f"  CG ({preconditioner}, rank 256) {t_cg:.1f} s, {cg.iterations} iterations, residual "
            f"{cg.residual:.2g} ({load()})"
        )
        print(
            f"cg: CG ({preconditioner}) vs Cholesky max relative difference of the test means {diff:.2g} "
            "(target <= 1e-6)"
        )


def case_big(n: int, root: Path, force: bool, rank: int) -> None:
    if available_gib() < 12 and not force:
        print(f"big: skipped, {available_gib():.1f} GB available (< 12 GB; --force to run anyway)")
        return
    print(f"  inputs: synthetic (N, 784) (MNIST's shape; no real MNIST offline), {available_gib():.1f} GB available")
    x = features(n)
    y = labels(x)
    t_k, k = timed(lambda: nk.scale.kernel(mlp(), x, store=root / "big.zarr", get="ntk", progress=True))
    print(f"  NTK {n} x {n} into a store: {t_k:.0f} s, {k.tiles_total} tiles of {k.tile_size} ({load()})", flush=True)
    # memory_budget 12G: the stored tiles (7.7 GB in float32 at N = 60,000) are kept in memory for the products
    with logged_products():
        t_cg, fit = timed(
            lambda: nk.scale.gp_inference(k, y, diag_reg=1e-3, method="cg", tol=1e-6, rank=rank, memory_budget="12G")
        )
    print(f"  CG: {t_cg:.0f} s, {fit.iterations} iterations, residual {fit.residual:.2g} ({load()})", flush=True)
    train_accuracy = float((fit(k).argmax(1) == y.argmax(1)).double().mean())
    print(
        f"big: N = {n}, kernel {t_k:.0f} s + CG {t_cg:.0f} s (Nyström rank {rank}), {fit.iterations} iterations, "
        f"residual {fit.residual:.2g}, peak RSS {peak_rss_gib():.1f} GiB (target < 16 GB), train accuracy "
        f"{train_accuracy:.3f} ({load()})"
    )


@contextlib.contextmanager
def logged_products():
    """Print the time of each product with the training kernel during gp_inference (the Nyström sketch with
    ``rank`` columns, then one per CG iteration), the resident memory and the load: the per-iteration time
    from which the CG time extrapolates if a run is cut short."""
    from ntkit.scale.matrix import KernelMatrix

    plain = KernelMatrix.matmul
    count = 0

    def matmul(self, v, **kwargs):
        nonlocal count
        seconds, out = timed(lambda: plain(self, v, **kwargs))
        count += 1
        if count <= 3 or count % 10 == 0:
            print(
                f"    product {count} with {v.shape[1]} columns: {seconds:.1f} s, resident {rss_gib():.1f} GiB "
                f"({load()})",
                flush=True,
            )
        return out

    KernelMatrix.matmul = matmul
    try:
        yield
    finally:
        KernelMatrix.matmul = plain


def rss_gib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=[*DEFAULT_N, "all"], default="all", help="'all': every case but big")
    parser.add_argument("--n", type=int, default=None, help=f"examples (default per case: {DEFAULT_N})")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="where stores go (default: a temporary directory)")
    parser.add_argument("--force", action="store_true", help="run big whatever memory is available")
    parser.add_argument("--repeat", type=int, default=3, help="overhead: repetitions of each side (best taken)")
    parser.add_argument("--rank", type=int, default=2048, help="big: rank of CG's Nyström preconditioner")
    args = parser.parse_args()
    cases = [c for c in DEFAULT_N if c != "big"] if args.case == "all" else [args.case]
    root = Path(tempfile.mkdtemp(prefix="ntkit-scale-", dir=args.dir))
    try:
        for case in cases:
            n = args.n or DEFAULT_N[case]
            print(f"{case} (N = {n}, torch threads {torch.get_num_threads()}, {load()})")
            if case == "workers":
                case_workers(n, args.workers, root)
            elif case == "overhead":
                case_overhead(n, root, args.repeat)
            elif case == "cg":
                case_cg(n, root)
            else:
                case_big(n, root, args.force, args.rank)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
