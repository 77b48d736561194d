"""Convolutional infinite-width kernels (issue 16): Myrtle and CNTK with global average pooling.

CPU rows (default): NNGP + NTK, float32, x2 = None, inputs 3x32x32 (random, seed 0), ntkit's ``nk.kernel``
side by side with neural-tangents' ``kernel_fn`` (jit-compiled and warm: its first call compiles and is not
timed; for N > 8 it runs under ``nt.batch`` in blocks of 8, as one would for memory):

  myrtle5    conv-ReLU x2, pool, conv-ReLU, pool, conv-ReLU, pool x3, Flatten, Dense (Shankar et al. 2020)
  cntk-gap   conv-ReLU x3, global average pooling, Dense (Arora et al. 2019, depth 3)

at N = 8 and 32 (``--quick``: N = 8 only, one run each). Each measurement runs in its own process (time of the
second identical call); implementations run in turn ``--repeats`` times and the fastest run counts, so a busy
spell on the machine hits both. Values are compared (max relative difference). Target: ntkit >= 5x
neural-tangents on every CPU row.

GPU rows (``--device cuda``): ms per kernel entry (N x N pairs, symmetric) for Myrtle-5, Myrtle-10 and a depth-11
CNTK-GAP in float32 and float64 at N = 256 (``--quick``: 64), next to a roofline measured in the same run: the
device's copy bandwidth, and the time one read and one write of K and Θ per layer would take at that bandwidth
(a lower bound for any implementation that keeps each layer's covariances in device memory).

Every row also prints the extrapolated hours of the full CIFAR-10 kernel (60,000 x 60,000, symmetric: 1.8e9
pairs) on k devices with ``ntkit.scale`` (one block per worker; the time per pair measured here, divided by k).

    PYTHONPATH=src python benchmarks/conv.py [--quick] [--device cuda] [--nt-python PATH] [--k 1 8]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nt_python import add_nt_python_option, nt_env, nt_python

W_STD, B_STD = 2.0**0.5, 0.05
CIFAR_PAIRS = 60_000 * 60_001 // 2
TARGET_VS_NT = 5.0
MYRTLE_FACTORS = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}


def _net_spec(name: str) -> list[tuple]:
    """The architecture as a list of (kind, ...) shared by the ntkit and neural-tangents builders."""
    if name.startswith("myrtle"):
        a, b, c = MYRTLE_FACTORS[int(name[len("myrtle") :])]
        return (
            [("conv",), ("relu",)] * a
            + [("pool",)]
            + [("conv",), ("relu",)] * b
            + [("pool",)]
            + [("conv",), ("relu",)] * c
            + [("pool",)] * 3
            + [("flatten",), ("dense",)]
        )
    depth = int(name.split("-")[-1]) if name.count("-") > 1 else 3
    return [("conv",), ("relu",)] * depth + [("gap",), ("dense",)]


def _ntkit_net(spec: list[tuple], channels: int):
    from ntkit import nn as N

    layers, c = [], channels
    for (kind,) in spec:
        if kind == "conv":
            layers.append(N.Conv2d(c, 16, 3, W_std=W_STD, b_std=B_STD))
            c = 16
        elif kind == "relu":
            layers.append(N.ReLU())
        elif kind == "pool":
            layers.append(N.AvgPool2d(2))
        elif kind == "flatten":
            layers.append(N.Flatten())
        elif kind == "gap":
            layers.append(N.GlobalAvgPool())
        else:
            layers.append(N.Linear(c, 1, W_std=W_STD, b_std=B_STD))
    return N.Sequential(*layers)


# ----- workers (each runs in its own process) -------------------------------------------------------------------


def _ntkit_worker(name: str, x_path: str, out_path: str, device: str, dtype: str) -> dict:
    import numpy as np
    import torch

    import ntkit as nk

    x = torch.from_numpy(np.load(x_path)).to(device=device, dtype=getattr(torch, dtype))
    net = _ntkit_net(_net_spec(name), x.shape[1])

    def run():
        k = nk.kernel(net, x)
        _sync(device)
        return k

    run()
    start = time.perf_counter()
    k = run()
    seconds = time.perf_counter() - start
    np.save(out_path, np.stack([k.nngp.double().cpu().numpy(), k.ntk.double().cpu().numpy()]))
    return {"seconds": seconds, "entries_per_pair": _entries_per_pair(net, x)}


def _nt_worker(name: str, x_path: str, out_path: str, device: str, dtype: str) -> dict:
    import jax
    import neural_tangents as nt
    import numpy as np
    from neural_tangents import stax

    x = np.load(x_path).transpose(0, 2, 3, 1)  # NHWC
    layers = []
    for (kind,) in _net_spec(name):
        if kind == "conv":
            layers.append(stax.Conv(16, (3, 3), padding="SAME", W_std=W_STD, b_std=B_STD))
        elif kind == "relu":
            layers.append(stax.Relu())
        elif kind == "pool":
            layers.append(stax.AvgPool((2, 2), strides=(2, 2)))
        elif kind == "flatten":
            layers.append(stax.Flatten())
        elif kind == "gap":
            layers.append(stax.GlobalAvgPool())
        else:
            layers.append(stax.Dense(1, W_STD, B_STD))
    _, _, kernel_fn = stax.serial(*layers)
    if x.shape[0] > 8:
        kernel_fn = nt.batch(kernel_fn, batch_size=8, store_on_device=False)
    else:
        kernel_fn = jax.jit(kernel_fn, static_argnames="get")

    def run():
        k = kernel_fn(x, None, ("nngp", "ntk"))
        return np.asarray(k.nngp), np.asarray(k.ntk)

    run()  # compiles
    start = time.perf_counter()
    nngp, ntk = run()
    seconds = time.perf_counter() - start
    np.save(out_path, np.stack([nngp, ntk]))
    return {"seconds": seconds}


def _roofline_worker(name: str, x_path: str, out_path: str, device: str, dtype: str) -> dict:
    """The device's copy bandwidth (bytes/s, best of 5 copies of 1 GiB, read + write counted)."""
    import torch

    big = torch.empty(2**28, dtype=torch.float32, device=device)
    other = torch.empty_like(big)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        start = time.perf_counter()
        other.copy_(big)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return {"bandwidth": 2 * big.numel() * big.element_size() / best}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _entries_per_pair(net, x) -> int:
    """Kernel entries (per tensor) that the layers of the fast path write for one pair: the sum over its steps
    of the size of their output covariance."""
    import torch

    from ntkit.infinite.planning import plan

    p = plan(net, x[:1], None, dtype=torch.float32, ntk=True, diagonal_spatial=None)
    if p.conv_chain is None:
        raise RuntimeError("the network did not take the convolutional fast path")
    outputs = [*p.conv_chain.shapes[1:], ()]  # the spatial shape after each step
    return sum(math.prod(s) ** 2 for s in outputs)


WORKERS = {"ntkit": _ntkit_worker, "nt": _nt_worker, "roofline": _roofline_worker}


# ----- driver ---------------------------------------------------------------------------------------------------


def _run_worker(impl: str, args: list[str], nt: str | None) -> dict:
    python = nt if impl == "nt" else sys.executable
    env = nt_env() if impl == "nt" else dict(os.environ)
    cmd = [python, str(Path(__file__).resolve()), "--worker", impl, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _max_rel_diff(a_path: str, b_path: str) -> float:
    import numpy as np

    a, b = np.load(a_path), np.load(b_path)
    return float(max(np.abs(a[i] - b[i]).max() / np.abs(b[i]).max() for i in range(2)))


def _hours(seconds: float, n: int, k: int) -> float:
    """Hours for the 1.8e9 pairs of full CIFAR-10 on k devices at ``seconds`` for the n(n+1)/2 pairs of n."""
    return seconds / (n * (n + 1) / 2) * CIFAR_PAIRS / k / 3600


def _cpu_rows(args, nt: str | None, tmp: str) -> None:
    import numpy as np

    sizes = [8] if args.quick else [8, 32]
    repeats = 1 if args.quick else args.repeats
    print(
        "| case | N | ntkit s | neural-tangents s | speed-up (target >= 5x) | max rel diff | CIFAR-10 CPU-hours "
        + " | ".join(f"k = {k}" for k in args.k)
        + " |"
    )
    print("|" + "---|" * (6 + len(args.k)))
    for name in ("myrtle5", "cntk-gap"):
        for n in sizes:
            x = np.random.default_rng(0).standard_normal((n, 3, 32, 32)).astype(np.float32)
            x_path = os.path.join(tmp, f"{name}-{n}-x.npy")
            np.save(x_path, x)
            res: dict[str, dict] = {}
            impls = ["ntkit"] + (["nt"] if nt else [])
            for _ in range(repeats):
                for impl in impls:
                    out = os.path.join(tmp, f"{name}-{n}-{impl}.npy")
                    r = _run_worker(impl, [name, x_path, out, "cpu", "float32"], nt)
                    if impl not in res or "error" in r or r["seconds"] < res[impl].get("seconds", float("inf")):
                        res[impl] = r
            a, b = res["ntkit"], res.get("nt", {"error": "skipped"})
            ok = "error" not in a and "error" not in b
            speedup = b["seconds"] / a["seconds"] if ok else float("nan")
            diff = (
                _max_rel_diff(os.path.join(tmp, f"{name}-{n}-ntkit.npy"), os.path.join(tmp, f"{name}-{n}-nt.npy"))
                if ok
                else float("nan")
            )
            hours = " | ".join(f"{_hours(a['seconds'], n, k):.0f}" if "error" not in a else "error" for k in args.k)
            print(
                f"| {name} | {n} | {a.get('seconds', float('nan')):.2f} | {b.get('seconds', float('nan')):.2f} "
                f"| {speedup:.1f}x | {diff:.1e} | {hours} |",
                flush=True,
            )
            for impl, r in res.items():
                if "error" in r:
                    print(f"  {name} N={n} {impl}: {r['error']}")


def _gpu_rows(args, tmp: str) -> None:
    import numpy as np

    n = args.n or (64 if args.quick else 256)
    print(
        "| case | dtype | N | s | ms per entry | roofline ms per entry | fraction of roofline | CIFAR-10 "
        + " | ".join(f"k = {k} GPU-hours" for k in args.k)
        + " |"
    )
    print("|" + "---|" * (7 + len(args.k)))
    x = np.random.default_rng(0).standard_normal((n, 3, 32, 32)).astype(np.float32)
    x_path = os.path.join(tmp, "gpu-x.npy")
    np.save(x_path, x)
    roof = _run_worker("roofline", ["-", x_path, "-", args.device, "float32"], None)
    for name in ("myrtle5", "myrtle10", "cntk-gap-11"):
        for dtype, itemsize in (("float32", 4), ("float64", 8)):
            r = _run_worker("ntkit", [name, x_path, os.path.join(tmp, "gpu.npy"), args.device, dtype], None)
            if "error" in r or "error" in roof:
                print(f"| {name} | {dtype} | {n} | error: {r.get('error') or roof.get('error')} |")
                continue
            entries = n * n
            ms = r["seconds"] * 1e3 / entries
            # one read and one write of K and Θ per layer, for the n(n+1)/2 distinct pairs
            roof_ms = 4 * itemsize * r["entries_per_pair"] * (n * (n + 1) / 2) / roof["bandwidth"] * 1e3 / entries
            hours = " | ".join(f"{_hours(r['seconds'], n, k):.1f}" for k in args.k)
            print(
                f"| {name} | {dtype} | {n} | {r['seconds']:.2f} | {ms:.4f} | {roof_ms:.5f} | {roof_ms / ms:.2f} "
                f"| {hours} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 8 only on CPU (64 on GPU), one run each")
    parser.add_argument("--device", default="cpu", help="cpu (side by side with neural-tangents) or cuda")
    parser.add_argument("--n", type=int, default=None, help="examples of the GPU rows (default 256, --quick 64)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per implementation (CPU)")
    parser.add_argument("--k", type=int, nargs="*", default=[1, 8], help="devices for the CIFAR-10 extrapolation")
    add_nt_python_option(parser)
    parser.add_argument(
        "--worker", nargs=6, metavar=("IMPL", "CASE", "X", "OUT", "DEVICE", "DTYPE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        impl, *rest = args.worker
        print(json.dumps(WORKERS[impl](*rest)))
        return
    print(f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.device == "cpu":
            _cpu_rows(args, nt_python(args), tmp)
        else:
            _gpu_rows(args, tmp)


if __name__ == "__main__":
    main()
