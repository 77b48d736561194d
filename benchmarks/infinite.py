"""Infinite-width kernels: ntkit against neural-tangents (JAX, CPU) and against a plain torch pass.

Cases (NNGP and NTK, float32, x2 = x1):
  mlp-1000, mlp-4000   3 hidden ReLU layers (W_std=1.5, b_std=0.05), N inputs of dimension 64
  cnn-pool-100         two 3x3 conv + ReLU, global average pooling, 100 images 1x8x8 (full spatial covariance)
  cnn-flat-500         the same with Flatten, 500 images 3x16x16 (diagonal spatial covariance)

Each measurement runs in its own process (time of a warm call, peak resident memory above the process's
memory before the timed call); the implementations run in turn, ``--repeats`` times, and the fastest run
counts. Every implementation is timed on its second identical call: neural-tangents runs in the
``--nt-python`` interpreter (default ``$NT_PYTHON``; its columns are skipped without one, benchmarks/README.md)
with JAX_PLATFORMS=cpu, its kernel_fn jit-compiled (the first call compiles), and the torch ones get the same
warm-up (the first call of a process also pays for mapping fresh memory). "plain torch" is the same recursion
written directly with torch operations on whole arrays, with no tiling, checks or symmetry: the memory-bound
elementwise work any implementation must do. Values of all three are compared (max relative difference).

Targets: >= 2x faster than neural-tangents on the MLP cases, >= 5x on the pooled CNN, and at most 3x the
time of the plain torch pass.

GPU mode (``--device cuda``): the same workers with the inputs, the model and the plain recursion on the GPU (every
timed call ends with a synchronisation; peak memory is ``torch.cuda.max_memory_allocated``), default cases mlp-4000,
mlp-20000 and cnn-pool-100, no neural-tangents (CPU only here), and the device's roofline (copy bandwidth, float32
and float64 GEMM; benchmarks/roofline.py) measured first in the same run. Targets there (issue 14): ntkit at least
as fast as the plain pass at N = 4000 and >= 2x faster at N = 20000. Values are compared on a strided subsample of
at most 2000 x 2000 pairs.

    PYTHONPATH=src python benchmarks/infinite.py [--cases mlp-1000 cnn-pool-100 ...] [--nt-python PATH]
    PYTHONPATH=src python benchmarks/infinite.py --device cuda [--cases mlp-4000 mlp-20000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nt_python import add_nt_python_option, nt_env, nt_python

W_STD, B_STD = 1.5, 0.05
CASES = {
    "mlp-1000": {"kind": "mlp", "shape": (1000, 64)},
    "mlp-4000": {"kind": "mlp", "shape": (4000, 64)},
    "mlp-20000": {"kind": "mlp", "shape": (20000, 64)},
    "cnn-pool-100": {"kind": "cnn", "readout": "pool", "shape": (100, 1, 8, 8)},
    "cnn-flat-500": {"kind": "cnn", "readout": "flat", "shape": (500, 3, 16, 16)},
}
TARGET_VS_NT = {"mlp-1000": 2.0, "mlp-4000": 2.0, "cnn-pool-100": 5.0}
TARGET_VS_PLAIN = 3.0
DEFAULT_CASES = {
    "cpu": ["mlp-1000", "mlp-4000", "cnn-pool-100", "cnn-flat-500"],
    "cuda": ["mlp-4000", "mlp-20000", "cnn-pool-100"],
}
SAVED_SIDE = 2000  # values are compared on every s-th row and column, s chosen so that at most this many remain


def _device() -> str:
    return os.environ.get("NTKIT_BENCH_DEVICE", "cpu")


def _save(path: str, a, b) -> None:
    """Both kernels (torch tensors on any device), on a strided subsample of at most SAVED_SIDE per side."""
    import numpy as np

    step = max(1, math.ceil(a.shape[0] / SAVED_SIDE))
    np.save(path, np.stack([t[::step, ::step].float().cpu().numpy() for t in (a, b)]))


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _measure(fn, warmup_fn) -> tuple[float, float, object]:
    """(seconds of a warm call, peak MiB above the memory before it, result); on CUDA synchronised, with the
    allocator's peak."""
    if _device().startswith("cuda"):
        import torch

        warmup_fn()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return seconds, (torch.cuda.max_memory_allocated() - base) / 2**20, out
    warmup_fn()
    before = _rss_kib()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return seconds, max(peak - before, 0) / 1024, out


# ----- workers (each runs in its own process) -------------------------------------------------------------------


def _ntkit_worker(case: dict, x_path: str, out_path: str) -> dict:
    import numpy as np
    import torch

    import ntkit as nk
    from ntkit import nn as N

    x = torch.from_numpy(np.load(x_path)).to(_device())
    if case["kind"] == "mlp":
        d = x.shape[1]
        net = N.Sequential(
            N.Linear(d, 512, W_std=W_STD, b_std=B_STD),
            N.ReLU(),
            N.Linear(512, 512, W_std=W_STD, b_std=B_STD),
            N.ReLU(),
            N.Linear(512, 512, W_std=W_STD, b_std=B_STD),
            N.ReLU(),
            N.Linear(512, 1, W_std=W_STD, b_std=B_STD),
        )
    else:
        c, h, w = x.shape[1:]
        pool = case["readout"] == "pool"
        net = N.Sequential(
            N.Conv2d(c, 64, 3, W_std=W_STD, b_std=B_STD),
            N.ReLU(),
            N.Conv2d(64, 64, 3, W_std=W_STD, b_std=B_STD),
            N.ReLU(),
            N.GlobalAvgPool() if pool else N.Flatten(),
            N.Linear(64 if pool else 64 * h * w, 1, W_std=W_STD, b_std=B_STD),
        )
    seconds, peak, k = _measure(lambda: nk.kernel(net, x), lambda: nk.kernel(net, x))
    _save(out_path, k.nngp, k.ntk)
    return {"seconds": seconds, "peak_mib": peak}


def _plain_worker(case: dict, x_path: str, out_path: str) -> dict:
    """The recursions of theory.md §4.1-4.2 written directly on whole arrays (no tiling, checks, symmetry)."""
    import numpy as np
    import torch

    x = torch.from_numpy(np.load(x_path)).to(_device())
    w2, b2 = W_STD**2, B_STD**2

    def relu(K, Th, v1, v2):
        s12 = torch.sqrt(v1 * v2)
        c = (K / s12).clamp_(-1, 1)
        theta = torch.acos(c)
        rest = torch.sqrt(1 - c * c)
        dot = (math.pi - theta) / (2 * math.pi)
        return s12 * (rest / (2 * math.pi) + dot * c), Th * dot

    def conv_diag(t):  # 3x3 SAME, diagonal layout (..., H, W): mean over offsets of the shifted kernel
        t = torch.nn.functional.pad(t, (1, 1, 1, 1))
        h, w = t.shape[-2] - 2, t.shape[-1] - 2
        return sum(t[..., i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9

    def conv_full(t):  # full layout (..., H, H', W, W'): shifts applied jointly to (h, h') and (w, w')
        t = torch.nn.functional.pad(t, (1, 1, 1, 1, 1, 1, 1, 1))
        h, w = t.shape[-4] - 2, t.shape[-2] - 2
        return sum(t[..., i : i + h, i : i + h, j : j + w, j : j + w] for i in range(3) for j in range(3)) / 9

    def run():
        if case["kind"] == "mlp":
            K = w2 * (x @ x.T / x.shape[1]) + b2
            Th = K
            for _ in range(3):
                d = K.diagonal()
                T, Th = relu(K, Th, d[:, None], d[None, :])
                K = w2 * T + b2
                Th = K + w2 * Th
            return K, Th
        c = x.shape[1]
        if case["readout"] == "pool":
            K = torch.einsum("nchw,mcij->nmhiwj", x, x) / c
            # per-example variances K[n, n, h, h, w, w] -> (N, H, W)
            diag = lambda t: torch.einsum("nnhhww->nhw", t)  # noqa: E731
            pair = lambda d: (d[:, None, :, None, :, None], d[None, :, None, :, None, :])  # noqa: E731
            conv = conv_full
        else:
            K = torch.einsum("nchw,mchw->nmhw", x, x) / c
            diag = lambda t: torch.einsum("nnhw->nhw", t)  # noqa: E731
            pair = lambda d: (d[:, None], d[None, :])  # noqa: E731
            conv = conv_diag
        K = w2 * conv(K) + b2
        Th = K
        for layer in range(2):
            T, Th = relu(K, Th, *pair(diag(K)))
            if layer == 0:
                K = w2 * conv(T) + b2
                Th = K + w2 * conv(Th)
            else:
                K, Th = T, Th
        dims = tuple(range(2, K.ndim))
        K = w2 * K.mean(dims) + b2
        Th = K + w2 * Th.mean(dims)
        return K, Th

    with torch.no_grad():
        seconds, peak, (K, Th) = _measure(run, run)
    _save(out_path, K, Th)
    return {"seconds": seconds, "peak_mib": peak}


def _nt_worker(case: dict, x_path: str, out_path: str) -> dict:
    import jax
    import numpy as np
    from neural_tangents import stax

    x = np.load(x_path)
    relu = stax.Relu()
    if case["kind"] == "mlp":
        layers = [stax.Dense(512, W_STD, B_STD), relu] * 3 + [stax.Dense(1, W_STD, B_STD)]
    else:
        x = x.transpose(0, 2, 3, 1)  # NHWC
        conv = stax.Conv(64, (3, 3), padding="SAME", W_std=W_STD, b_std=B_STD)
        readout = stax.GlobalAvgPool() if case["readout"] == "pool" else stax.Flatten()
        layers = [conv, relu, conv, relu, readout, stax.Dense(1, W_STD, B_STD)]
    _, _, kernel_fn = stax.serial(*layers)
    kernel_fn = jax.jit(kernel_fn, static_argnames="get")

    def run():
        k = kernel_fn(x, None, ("nngp", "ntk"))
        return np.asarray(k.nngp), np.asarray(k.ntk)

    seconds, peak, (nngp, ntk) = _measure(run, run)  # the warm-up compiles for this shape
    step = max(1, math.ceil(nngp.shape[0] / SAVED_SIDE))
    np.save(out_path, np.stack([nngp[::step, ::step], ntk[::step, ::step]]))
    return {"seconds": seconds, "peak_mib": peak}


WORKERS = {"ntkit": _ntkit_worker, "plain": _plain_worker, "nt": _nt_worker}


# ----- driver ---------------------------------------------------------------------------------------------------


def _run_worker(impl: str, name: str, x_path: str, out_path: str, nt: str | None, device: str = "cpu") -> dict:
    python = nt if impl == "nt" else sys.executable
    env = nt_env() if impl == "nt" else dict(os.environ, NTKIT_BENCH_DEVICE=device)
    cmd = [python, str(Path(__file__).resolve()), "--worker", impl, name, x_path, out_path]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _max_rel_diff(a_path: str, b_path: str) -> float:
    import numpy as np

    a, b = np.load(a_path).astype(np.float64), np.load(b_path).astype(np.float64)
    return float(max(np.abs(a[i] - b[i]).max() / np.abs(b[i]).max() for i in range(2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", choices=list(CASES), help="default: the device's cases (module docs)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (GPU mode: module docs)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="interleaved runs per implementation; the fastest counts"
    )
    add_nt_python_option(parser)
    parser.add_argument("--worker", nargs=4, metavar=("IMPL", "CASE", "X", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        impl, name, x_path, out_path = args.worker
        print(json.dumps(WORKERS[impl](CASES[name], x_path, out_path)))
        return

    import numpy as np
    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: torch sees no CUDA device here.")
    print(
        f"{args.device}, float32, best of {args.repeats}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    if cuda:
        from roofline import describe

        print(describe(args.device))
    nt = None if cuda else nt_python(args)
    impls = [impl for impl in WORKERS if impl != "nt" or nt is not None]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases or DEFAULT_CASES["cuda" if cuda else "cpu"]:
            x = np.random.default_rng(0).standard_normal(CASES[name]["shape"]).astype(np.float32)
            x_path = os.path.join(tmp, f"{name}-x.npy")
            np.save(x_path, x)
            res: dict[str, dict] = {}
            for _ in range(args.repeats):  # interleaved, so that a busy spell on the machine hits all alike
                for impl in impls:
                    r = _run_worker(impl, name, x_path, os.path.join(tmp, f"{name}-{impl}.npy"), nt, args.device)
                    if impl not in res or "error" in r or r["seconds"] < res[impl].get("seconds", float("inf")):
                        res[impl] = r
            ok = {impl: "error" not in r for impl, r in res.items()}
            row = {"case": name, **{impl: r for impl, r in res.items()}}
            for other in ("nt", "plain"):
                if ok["ntkit"] and ok.get(other):
                    row[f"diff_{other}"] = _max_rel_diff(
                        os.path.join(tmp, f"{name}-ntkit.npy"), os.path.join(tmp, f"{name}-{other}.npy")
                    )
            rows.append(row)
            _print_row(row)
    print()
    _print_table(rows)


def _print_row(row: dict) -> None:
    print(f"{row['case']}: " + json.dumps({k: v for k, v in row.items() if k != "case"}), flush=True)


def _fmt(r: dict, key: str, spec: str) -> str:
    if "error" in r:
        return "skipped" if r["error"] == "skipped" else "error"
    return format(r[key], spec)


def _print_table(rows: list[dict]) -> None:
    header = (
        "| case | ntkit s | neural-tangents s | plain torch s | speed-up vs NT (target) | ntkit / plain (target <= 3) "
        "| ntkit MiB | NT MiB | plain MiB | max rel diff vs NT / plain |"
    )
    print(header)
    print("|" + "|".join("---" for _ in range(10)) + "|")
    for row in rows:
        skipped = {"error": "skipped"}  # neural-tangents without an interpreter
        a, n, p = row["ntkit"], row.get("nt", skipped), row["plain"]
        speedup = n["seconds"] / a["seconds"] if "error" not in a and "error" not in n else float("nan")
        vs_plain = a["seconds"] / p["seconds"] if "error" not in a and "error" not in p else float("nan")
        target = TARGET_VS_NT.get(row["case"])
        print(
            f"| {row['case']} | {_fmt(a, 'seconds', '.3f')} | {_fmt(n, 'seconds', '.3f')} "
            f"| {_fmt(p, 'seconds', '.3f')} "
            f"| {speedup:.1f}x ({f'>= {target:.0f}x' if target else 'none'}) | {vs_plain:.2f} "
            f"| {_fmt(a, 'peak_mib', '.0f')} | {_fmt(n, 'peak_mib', '.0f')} | {_fmt(p, 'peak_mib', '.0f')} "
            f"| {row.get('diff_nt', float('nan')):.1e} / {row.get('diff_plain', float('nan')):.1e} |"
        )
    for row in rows:
        for impl in WORKERS:
            if impl in row and "error" in row[impl]:
                print(f"{row['case']} {impl}: {row[impl]['error']}")


if __name__ == "__main__":
    main()
