"""Closed-form training dynamics at 50 times: ntkit.predict versus a naive implementation and neural-tangents.

Work (float64, N_train = 2000, N_test = 500, 10 outputs, 50 log-spaced times, gradient flow so that all three
compute the same thing): a synthetic PSD kernel pair, the NNGP and NTK of a two-hidden-layer ReLU network
(arc-cosine closed forms, computed in numpy here so that the benchmark depends on no other module), on random
inputs. Rows (each timed with one eigh of the same kernel right before it, best of 2 pairs, so that load on a
shared machine hits both):

- eigh: one float64 eigendecomposition of the 2000x2000 train NTK, the unit of the target;
- gd_mse: one network's train and test predictions at the 50 times (gradient_descent_mse, from scratch);
- ensemble ntk / nngp: mean and test covariance (500x500) of the infinite ensemble at the 50 times;
- t=inf: gp_inference "ntk" mean and covariance (neural-tangents also on 1 output, its quoted 2.0 s anchor).

Naive: a matrix exponential and dense solves per time, timed on 5 of the 50 times and scaled by 10 (each time
costs the same). neural-tangents 0.6.5 runs in the ``--nt-python`` interpreter (default ``$NT_PYTHON``; skipped without
one; benchmarks/README.md) with JAX on CPU, x64, in a subprocess on the same
kernels saved to .npy; its results are checked against ntkit's. Each system's time is the best of 2 runs,
each from scratch (the eigendecomposition included). Both run on ``--threads`` threads (default 1: on a
shared, loaded machine two OpenMP threads can make one eigh 10x slower, which would make every ratio noise).
Targets: every 50-time row within 2x one eigh, and at least as fast as neural-tangents.

    PYTHONPATH=src python benchmarks/predict.py [--nt-python PATH]
        [--n-train 2000 --n-test 500] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from nt_python import add_nt_python_option, nt_python

import ntkit as nk

N_OUT, N_TIMES, D_IN = 10, 50, 32
LR = 1.0  # ntkit / torch units (MSELoss(reduction="mean")); neural-tangents' loss is ½·mean, so its lr is 2·LR
NAIVE_TIMES = 5


def relu_kernels(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NNGP and NTK (NTK parameterization, σ_w² = 2, σ_b² = 0.1, two ReLU hidden layers) of all pairs of rows."""
    nngp = x @ x.T / x.shape[1] + 0.1
    ntk = nngp.copy()
    for _ in range(2):
        diag = np.sqrt(np.diag(nngp))
        cos = np.clip(nngp / np.outer(diag, diag), -1.0, 1.0)
        theta = np.arccos(cos)
        t = np.outer(diag, diag) / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * cos)
        t_dot = (np.pi - theta) / (2 * np.pi)
        nngp = 2 * t + 0.1
        ntk = nngp + 2 * ntk * t_dot
    return nngp, ntk


def best_of(fn, runs: int = 2) -> tuple[float, object]:
    best, out = math.inf, None
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def paired(fn, unit, runs: int = 2) -> tuple[float, float, object]:
    """Best times of ``fn`` and of ``unit`` (one eigh), each run right after the other ``runs`` times."""
    best_fn, best_unit, out = math.inf, math.inf, None
    for _ in range(runs):
        best_unit = min(best_unit, best_of(unit, 1)[0])
        start = time.perf_counter()
        out = fn()
        best_fn = min(best_fn, time.perf_counter() - start)
    return best_fn, best_unit, out


def naive_gd(ntk, ntk_test, y, f0, f0_test, times):
    """Per time: E = exp(−cΘt), train y + E r0, test f0 − Θ_TX Θ⁻¹ (r0 − E r0)."""
    c = 2 * LR / y.numel()
    r0 = f0 - y
    out = []
    for t in times:
        e = torch.linalg.matrix_exp(-c * t * ntk)
        out.append((y + e @ r0, f0_test - ntk_test @ torch.linalg.solve(ntk, r0 - e @ r0)))
    return out


def naive_ensemble(k, k_test, k_tt, y, times, get):
    """Per time: G = Θ_TX Θ⁻¹ (I − exp(−cΘt)), mean G y, cov K_TT + G K Gᵀ − G K_XT − K_TX Gᵀ (Θ = K for nngp)."""
    c = 2 * LR / y.numel()
    theta, theta_test = (k["nngp"], k_test["nngp"]) if get == "nngp" else (k["ntk"], k_test["ntk"])
    eye = torch.eye(theta.shape[0], dtype=theta.dtype)
    out = []
    for t in times:
        gain = theta_test @ torch.linalg.solve(theta, eye - torch.linalg.matrix_exp(-c * t * theta))
        cross = gain @ k_test["nngp"].T
        out.append((gain @ y, k_tt + gain @ k["nngp"] @ gain.T - cross - cross.T))
    return out


NT_SCRIPT = textwrap.dedent(
    """
    import collections, json, sys, time
    import numpy as np
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import neural_tangents as nt

    d = sys.argv[1]
    load = lambda name: jnp.asarray(np.load(f"{d}/{name}.npy"))
    nngp, ntk, y, f0, times = load("nngp"), load("ntk"), load("y"), load("f0"), load("times")
    lr = float(np.load(f"{d}/lr.npy"))
    n = y.shape[0]
    Kernel = collections.namedtuple("Kernel", "nngp ntk")
    full = {"nngp": nngp, "ntk": ntk}

    def kernel_fn(x1, x2, get, **kwargs):  # x are index arrays into the precomputed kernels
        x2 = x1 if x2 is None else x2
        parts = {g: full[g][np.asarray(x1)][:, np.asarray(x2)] for g in (get if isinstance(get, tuple) else (get,))}
        return parts[get] if isinstance(get, str) else Kernel(**{g: parts.get(g) for g in Kernel._fields})

    x_train, x_test = np.arange(n), np.arange(n, nngp.shape[0])
    ready = jax.block_until_ready

    def best(fn, runs=2):
        out, b = None, float("inf")
        for _ in range(runs):
            s = time.perf_counter(); out = ready(fn()); b = min(b, time.perf_counter() - s)
        return b, out

    res, timing = {}, {}
    timing["eigh"], _ = best(lambda: jnp.linalg.eigh(ntk[:n, :n]))
    def gd():
        p = nt.predict.gradient_descent_mse(ntk[:n, :n], y, learning_rate=lr)
        return p(t=times, fx_train_0=f0[:n], fx_test_0=f0[n:], k_test_train=ntk[n:, :n])
    timing["gd_mse"], (res["gd_train"], res["gd_test"]) = best(gd)
    for g in ("ntk", "nngp"):
        def ens(g=g):
            p = nt.predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y, learning_rate=lr)
            return p(t=times, x_test=x_test, get=g, compute_cov=True)
        timing["ensemble_" + g], (res[g + "_mean"], res[g + "_cov"]) = best(ens)
    for outs, name in ((y, "inf"), (y[:, :1], "inf_1")):
        def inf(outs=outs):
            p = nt.predict.gradient_descent_mse_ensemble(kernel_fn, x_train, outs, learning_rate=lr)
            return p(t=None, x_test=x_test, get="ntk", compute_cov=True)
        timing[name], out = best(inf)
        if name == "inf":
            res["inf_mean"], res["inf_cov"] = out
    np.savez(f"{d}/nt_results.npz", **{k: np.asarray(v) for k, v in res.items()})
    print(json.dumps(timing))
    """
)


def thread_env(threads: int) -> dict[str, str]:
    """Environment that limits BLAS/LAPACK and XLA to ``threads`` threads."""
    flags = "" if threads > 1 else "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "XLA_FLAGS": flags,
    }


def run_neural_tangents(python: str, kernels: dict[str, np.ndarray], y, f0, times) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory() as d:
        for name, value in {**kernels, "y": y, "f0": f0, "times": times, "lr": np.array(2 * LR)}.items():
            np.save(f"{d}/{name}.npy", value)
        script = Path(d) / "nt_bench.py"
        script.write_text(NT_SCRIPT)
        env = {**os.environ, "JAX_PLATFORMS": "cpu", **thread_env(torch.get_num_threads())}
        proc = subprocess.run([python, str(script), d], capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise RuntimeError("neural-tangents run failed:\n" + proc.stderr[-3000:])
        timing = json.loads(proc.stdout.strip().splitlines()[-1])
        results = dict(np.load(f"{d}/nt_results.npz"))
    return timing, results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_nt_python_option(parser)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, n_test = args.n_train, args.n_test

    rng = np.random.default_rng(0)
    nngp_np, ntk_np = relu_kernels(rng.standard_normal((n + n_test, D_IN)))
    y_np = rng.standard_normal((n, N_OUT))
    f0_np = rng.standard_normal((n + n_test, N_OUT))
    times_np = np.logspace(0, 5, N_TIMES)
    nngp, ntk = torch.from_numpy(nngp_np), torch.from_numpy(ntk_np)
    y, f0, times = torch.from_numpy(y_np), torch.from_numpy(f0_np), torch.from_numpy(times_np)
    k_train = {"nngp": nngp[:n, :n], "ntk": ntk[:n, :n]}
    k_test = {"nngp": nngp[n:, :n], "ntk": ntk[n:, :n]}
    k_tt = nngp[n:, n:]
    x_train, x_test = torch.arange(n), torch.arange(n, n + n_test)
    lr_steps = 0.5 * nk.predict.max_learning_rate(k_train["ntk"], n_outputs=N_OUT)
    steps = torch.unique(torch.round(times))

    def kernel_fn(a, b):  # lookups into the precomputed kernels: kernel computation is not timed
        return {"nngp": nngp[a][:, b], "ntk": ntk[a][:, b]}

    def eigh():
        return torch.linalg.eigh(k_train["ntk"])

    def gd():
        p = nk.predict.gradient_descent_mse(k_train["ntk"], y, LR, continuous=True)
        return p(times, f0[:n], f0[n:], k_test["ntk"])

    def gd_steps():
        p = nk.predict.gradient_descent_mse(k_train["ntk"], y, lr_steps)
        return p(steps, f0[:n], f0[n:], k_test["ntk"])

    def ensemble(get):
        p = nk.predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y, LR, continuous=True)
        return p(times, x_test, get, compute_cov=True)

    def inf():
        return nk.predict.gp_inference(k_train, y)("ntk", k_test, {"nngp": k_tt})

    print(
        f"train NTK {n}x{n}, {n_test} test points, {N_OUT} outputs, {N_TIMES} times; torch threads "
        f"{torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}"
    )
    rows: dict[str, dict[str, float]] = {}
    ours: dict[str, object] = {}
    for name, fn in [
        ("gd_mse", gd),
        ("gd_mse (whole steps)", gd_steps),
        ("ensemble ntk + cov", lambda: ensemble("ntk")),
        ("ensemble nngp + cov", lambda: ensemble("nngp")),
        ("t=inf ntk + cov", inf),
    ]:
        t_fn, t_eig, ours[name] = paired(fn, eigh)
        rows[name] = {"ntkit": t_fn, "eigh": t_eig}

    scale = N_TIMES / NAIVE_TIMES
    stride = N_TIMES // NAIVE_TIMES
    sub = times[::stride].tolist()
    naive_gd_time = best_of(lambda: naive_gd(k_train["ntk"], k_test["ntk"], y, f0[:n], f0[n:], sub), 1)[0]
    rows["gd_mse"]["naive"] = naive_gd_time * scale
    for get in ("ntk", "nngp"):
        naive_time, naive_out = best_of(lambda get=get: naive_ensemble(k_train, k_test, k_tt, y, sub, get), 1)
        rows[f"ensemble {get} + cov"]["naive"] = naive_time * scale
        mean, cov = ours[f"ensemble {get} + cov"]
        last = stride * (NAIVE_TIMES - 1)  # the index of sub[-1] in times
        print(
            f"ntkit vs naive, ensemble {get} at t = {sub[-1]:.3g}: mean rel diff "
            f"{rel(mean[last], naive_out[-1][0]):.1e}, cov rel diff {rel(cov[last], naive_out[-1][1]):.1e}"
        )

    nt = nt_python(args)
    if nt is not None:
        timing, nt_res = run_neural_tangents(nt, {"nngp": nngp_np, "ntk": ntk_np}, y_np, f0_np, times_np)
        for key, row in [
            ("gd_mse", "gd_mse"),
            ("ensemble_ntk", "ensemble ntk + cov"),
            ("ensemble_nngp", "ensemble nngp + cov"),
            ("inf", "t=inf ntk + cov"),
        ]:
            rows[row]["neural-tangents"] = timing[key]
        rows["t=inf ntk + cov, 1 output"] = {"neural-tangents": timing["inf_1"]}
        checks = {
            "gd_mse test": rel(ours["gd_mse"][1], nt_res["gd_test"]),
            "ensemble ntk mean": rel(ours["ensemble ntk + cov"][0], nt_res["ntk_mean"]),
            "ensemble ntk cov": rel(ours["ensemble ntk + cov"][1], nt_res["ntk_cov"]),
            "ensemble nngp cov": rel(ours["ensemble nngp + cov"][1], nt_res["nngp_cov"]),
            "t=inf ntk cov": rel(ours["t=inf ntk + cov"][1], nt_res["inf_cov"]),
        }
        print("ntkit vs neural-tangents, relative difference: " + ", ".join(f"{k} {v:.1e}" for k, v in checks.items()))
        print(f"neural-tangents: one eigh {timing['eigh']:.3f} s")

    print(f"load average at the end {os.getloadavg()[0]:.1f}\n")
    print(
        "| work (50 times unless t=inf) | ntkit (s) | one eigh (s) | ntkit / eigh | naive (s) | naive / ntkit "
        "| neural-tangents (s) | neural-tangents / ntkit |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        mine = row.get("ntkit")
        cells = [
            f"{mine:.3f}" if mine else "",
            f"{row['eigh']:.3f}" if "eigh" in row else "",
            f"{mine / row['eigh']:.2f}" if mine else "",
            f"{row['naive']:.1f}" if "naive" in row else "",
            f"{row['naive'] / mine:.0f}x" if "naive" in row else "",
            f"{row['neural-tangents']:.3f}" if "neural-tangents" in row else "",
            f"{row['neural-tangents'] / mine:.1f}x" if "neural-tangents" in row and mine else "",
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


def rel(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    return float((a - b).norm() / b.norm())


if __name__ == "__main__":
    sys.exit(main())
