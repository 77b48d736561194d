"""nk.approx against exact kernel regression: accuracy for F = 2^10..2^14, and speed and memory at large N.

Parts (``--part``, default all), each printing a markdown table:

- accuracy: the NTK of a ReLU MLP (d -> 512 -> 512 -> outputs, W_std = 1.4, b_std = 0.1, NTK parameterization)
  on digits (1348 train / 449 test, 10 classes, centred one-hot targets, test accuracy) and on a synthetic
  regression task (10,000 train / 2,000 test, d = 16, y = sin(2 x·u) + cos(x·v) with unit u, v, test MSE):
  ``nk.approx.ridge`` with random features and with the sketch for F = 2^10..2^14, against exact kernel
  regression (``nk.kernel`` + ``nk.predict.gp_inference``, float64), all with diag_reg = 1e-4 (relative).
  ``--plot PATH`` draws the figure (matplotlib).
  Run in one process (times without start-up; no memory column).
- speed: N = 50,000 (MLP, synthetic, 10,000 test points): approximate fit + predict (F = 4096, random features,
  float32 features) timed, peak memory measured (ru_maxrss of a fresh process); the exact side is timed at
  N = 2,500, 5,000 and 10,000 and EXTRAPOLATED to 50,000 (kernels ∝ N², Cholesky ∝ N³; the 20 GB train kernel
  does not fit this machine), its memory computed (N² + N·N_test float64 entries); and MEASURED at 50,000 with
  ``ntkit.scale``: float32 kernel stores on disk (temporary directory) and CG (tol 1e-6, rank-2048 Nyström).
- million: N = 10^6 (MLP, synthetic): fit + predict with F = 1024 random features, time and peak memory.
- cnn: the NTK of a CNN on digits as 8 x 8 images (Conv2d 3x3 -> ReLU -> AvgPool2d(2) -> Conv2d 3x3 -> ReLU ->
  GlobalAvgPool -> Linear, W_std = 1.4, b_std = 0.1): exact CNTK regression (``nk.kernel`` + ``gp_inference``,
  float64) against ``nk.approx.ridge`` with the CNTK sketch and CNN random features for F = 2^10..2^14 (random
  features up to ``--cnn-rf-max``) on the first ``--cnn-train`` (default 300) training images and all 449 test
  images: test accuracy and the time of fit + predict (features of train and test included) against the exact
  CNTK's, in one process; ``--plot-cnn PATH`` draws the figure. Runs with F >= 2^13 need several GB: use
  ``flock /work/coord/bigmem.lock`` on shared machines.
- diagnose: why the approximate fit on the synthetic task stays above the exact one. On the same 10,000 / 2,000
  split: the exact kernel's test MSE for diag_reg in {1e-4, 1e-3, 1e-2, 1e-1}; random features for F = 2^10,
  2^12: the relative Frobenius error of ΦΦᵀ against K (first 2,000 training examples) and the test MSE over
  the same diag_reg grid; Nyström features from F random landmarks of the exact kernel (the rank-F approximation
  without random error) over the same grid. Solves are dense in float64 (primal for features).

``--case '{"kind": "approx", "task": "synthetic", "method": "random_features", "F": 8192, "threads": 2,
"diag_reg": 1e-2}'`` runs one case (the kinds above: "exact", "approx", "exact_speed", "approx_speed",
"exact_scale").

Each speed case runs in its own process on ``--threads`` threads (default 2). Absolute times on a shared machine are
noisy: the load average (``uptime``) is printed next to them.

    PYTHONPATH=src python benchmarks/approx.py [--part accuracy|speed|million|cnn|diagnose|all]
        [--plot docs/images/approx-accuracy.png] [--plot-cnn docs/images/approx-accuracy-cnn.png]
        [--cnn-rf-max 8192]
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

import torch

import ntkit as nk
from ntkit import nn as N
from ntkit.data import load_digits

DIAG_REG = 1e-4
FEATURES = [2**k for k in range(10, 15)]
CNN_FEATURES = FEATURES  # the CNN's features cost ~0.1-0.3 s per image at 2^12 (8 x 8 images), ∝ F


def mlp(d: int, outputs: int) -> N.Sequential:
    return N.Sequential(
        N.Linear(d, 512, W_std=1.4, b_std=0.1),
        N.ReLU(),
        N.Linear(512, 512, W_std=1.4, b_std=0.1),
        N.ReLU(),
        N.Linear(512, outputs, W_std=1.4, b_std=0.1),
    )


def cnn(outputs: int) -> N.Sequential:
    """For (N, 1, 8, 8) images: two 3x3 convolutions, average pooling between them, global average pooling."""
    return N.Sequential(
        N.Conv2d(1, 64, 3, W_std=1.4, b_std=0.1),
        N.ReLU(),
        N.AvgPool2d(2),
        N.Conv2d(64, 64, 3, W_std=1.4, b_std=0.1),
        N.ReLU(),
        N.GlobalAvgPool(),
        N.Linear(64, outputs, W_std=1.4, b_std=0.1),
    )


def synthetic(n_train: int, n_test: int, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, d, generator=g)
    u, v = torch.randn(2, d, generator=g)
    y = torch.sin(2 * x @ (u / u.norm())) + torch.cos(x @ (v / v.norm()))
    return x[:n_train], y[:n_train, None], x[n_train:], y[n_train:, None]


def digits(images: bool = False):
    data = load_digits(dtype=torch.float32, flatten=not images)
    one_hot = torch.nn.functional.one_hot(data.y_train, 10).float() - 0.1
    return data.x_train, one_hot, data.x_test, data.y_test


def score(task: str, mean: torch.Tensor, y_test: torch.Tensor) -> float:
    if task == "digits":
        return float((mean.argmax(1) == y_test).float().mean())
    return float(((mean - y_test) ** 2).mean())


def load(task: str, arch: str = "mlp"):
    return digits(images=arch == "cnn") if task == "digits" else synthetic(10_000, 2_000)


def run_case(case: dict) -> dict:
    """One measurement in this process: returns time, score and peak memory."""
    torch.set_num_threads(case["threads"])
    kind = case["kind"]
    arch = case.get("arch", "mlp")
    if kind in ("exact", "approx"):
        x, y, x_test, y_test = load(case["task"], arch)
    else:  # speed runs
        x, y, x_test, y_test = synthetic(case["n"], case["n_test"])
    net = cnn(y.shape[1]) if arch == "cnn" else mlp(x.shape[1], y.shape[1])
    start = time.perf_counter()
    if kind in ("exact", "exact_speed"):
        x, x_test, y = x.double(), x_test.double(), y.double()
        k_train = nk.kernel(net, x, get="ntk")
        k_test = nk.kernel(net, x_test, x, get="ntk")
        kernel_s = time.perf_counter() - start
        mean = nk.predict.gp_inference(k_train, y, diag_reg=case.get("diag_reg", DIAG_REG))("ntk", k_test)
        out = {"kernel_s": kernel_s, "solve_s": time.perf_counter() - start - kernel_s}
    elif kind == "exact_scale":  # the exact kernels in float32 stores on disk, solved by CG (ntkit.scale)
        with tempfile.TemporaryDirectory() as tmp:
            k_train = nk.scale.kernel(net, x, store=os.path.join(tmp, "train.zarr"), get="ntk")
            k_test = nk.scale.kernel(net, x_test, x, store=os.path.join(tmp, "test.zarr"), get="ntk")
            kernel_s = time.perf_counter() - start
            fit = nk.scale.gp_inference(k_train, y, get="ntk", diag_reg=DIAG_REG, method="cg", tol=1e-6, rank=2048)
            mean = fit(k_test)
            out = {
                "kernel_s": kernel_s,
                "solve_s": time.perf_counter() - start - kernel_s,
                "iterations": fit.iterations,
            }
    else:
        feats = nk.approx.features(net, case["F"], get="ntk", method=case["method"], seed=0)
        out = {}
        fit = nk.approx.ridge(feats, x, y, diag_reg=case.get("diag_reg", DIAG_REG))
        mean = fit(x_test)
    out["seconds"] = time.perf_counter() - start
    out["score"] = score(case.get("task", "synthetic"), mean.float(), y_test)
    out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def measure(case: dict) -> dict:
    """``run_case`` in a fresh process (its own peak memory); prints the load average next to the time."""
    cmd = [sys.executable, __file__, "--case", json.dumps(case)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"case {case} failed:\n{result.stderr[-3000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    out["load"] = os.getloadavg()[0]
    print(f"  {case} -> {out}", file=sys.stderr, flush=True)
    return out


def accuracy(threads: int, plot: str | None) -> None:
    """In this process (peak memory is not reported here)."""
    results: dict[str, dict] = {}
    for task in ("digits", "synthetic"):
        exact = run_case({"kind": "exact", "task": task, "threads": threads})
        print(f"  {task} exact -> {exact}", file=sys.stderr, flush=True)
        rows = {}
        for method in ("random_features", "sketch"):
            for f in FEATURES:
                rows[(method, f)] = run_case(
                    {"kind": "approx", "task": task, "method": method, "F": f, "threads": threads}
                )
                print(f"  {task} {method} {f} -> {rows[(method, f)]}", file=sys.stderr, flush=True)
        results[task] = {"exact": exact, "rows": rows}
    metric = {"digits": "test accuracy", "synthetic": "test MSE"}
    print("\n| task | F | random features | sketch | exact kernel regression |")
    print("|---|---|---|---|---|")
    for task, r in results.items():
        for f in FEATURES:
            rf, sk = r["rows"][("random_features", f)], r["rows"][("sketch", f)]
            print(
                f"| {task} ({metric[task]}) | 2^{int(math.log2(f))} | {rf['score']:.4f} ({rf['seconds']:.0f} s) | "
                f"{sk['score']:.4f} ({sk['seconds']:.0f} s) | {r['exact']['score']:.4f} "
                f"({r['exact']['seconds']:.0f} s) |"
            )
    print(f"\nload average during the runs: {[round(x, 1) for x in os.getloadavg()]}")
    if plot:
        panels = [
            (
                f"{task}: NTK of a 2-hidden-layer ReLU MLP",
                metric[task],
                {m: [r["rows"][(m, f)]["score"] for f in FEATURES] for m in ("random_features", "sketch")},
                r["exact"]["score"],
            )
            for task, r in results.items()
        ]
        draw(panels, FEATURES, "exact NTK regression", plot)


def draw(panels: list[tuple[str, str, dict[str, list[float]], float]], sizes: list[int], exact: str, path: str) -> None:
    """One panel per (title, y label, {method: scores at ``sizes``}, exact score), side by side, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (title, ylabel, curves, exact_score) in zip(axes[0], panels, strict=True):
        for (method, scores), marker, size in zip(curves.items(), "os", (9, 5), strict=True):
            ax.plot(sizes, scores, marker=marker, markersize=size, label=method)  # equal scores stay visible
        ax.axhline(exact_score, color="k", ls="--", label=exact)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("n_features F")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


def speed(threads: int) -> None:
    n, n_test, f = 50_000, 10_000, 4096
    approx = measure(
        {"kind": "approx_speed", "n": n, "n_test": n_test, "F": f, "method": "random_features", "threads": threads}
    )
    print("\n| exact N | kernels (s) | solve (s) | total (s) | peak MiB |")
    print("|---|---|---|---|---|")
    exact = {}
    for m in (2_500, 5_000, 10_000):
        exact[m] = measure({"kind": "exact_speed", "n": m, "n_test": n_test, "threads": threads})
        e = exact[m]
        print(f"| {m} | {e['kernel_s']:.1f} | {e['solve_s']:.1f} | {e['seconds']:.1f} | {e['peak_mib']:.0f} |")
    base = exact[10_000]
    scale = n / 10_000
    extrapolated = base["kernel_s"] * scale**2 + base["solve_s"] * scale**3
    exact_mib = (n * n + n * n_test) * 8 / 2**20
    print(
        f"\nN = {n} (MLP, {n_test} test points): nk.approx.ridge F = {f}: fit + predict {approx['seconds']:.1f} s, "
        f"peak {approx['peak_mib']:.0f} MiB, test MSE {approx['score']:.4f}"
    )
    print(
        f"exact at N = {n}: EXTRAPOLATED from N = 10,000 (kernels x {scale**2:.0f}, solve x {scale**3:.0f}): "
        f"{extrapolated:.0f} s; its kernels alone hold {exact_mib:,.0f} MiB (computed, not run)"
    )
    print(
        f"ratio exact in memory (extrapolated) / approx: time {extrapolated / approx['seconds']:.0f}x, "
        f"memory {exact_mib / approx['peak_mib']:.0f}x   (load average {approx['load']:.1f})"
    )
    stored = measure({"kind": "exact_scale", "n": n, "n_test": n_test, "threads": threads})
    print(
        f"exact at N = {n}, MEASURED with ntkit.scale (float32 kernel stores on disk, CG to 1e-6 with a rank-2048 "
        f"Nystrom preconditioner): kernels {stored['kernel_s']:.0f} s, solve {stored['solve_s']:.0f} s "
        f"({stored['iterations']} iterations), total {stored['seconds']:.0f} s, peak {stored['peak_mib']:.0f} MiB, "
        f"test MSE {stored['score']:.4f}"
    )
    print(
        f"ratio exact with ntkit.scale / approx: time {stored['seconds'] / approx['seconds']:.1f}x, "
        f"memory {stored['peak_mib'] / approx['peak_mib']:.1f}x   (load average {stored['load']:.1f})"
    )


def million(threads: int) -> None:
    r = measure(
        {
            "kind": "approx_speed",
            "n": 1_000_000,
            "n_test": 10_000,
            "F": 1024,
            "method": "random_features",
            "threads": threads,
        }
    )
    print(
        f"\nN = 10^6 (MLP, synthetic, 10,000 test points), F = 1024 random features: fit + predict "
        f"{r['seconds']:.0f} s ({r['seconds'] / 60:.1f} min), peak {r['peak_mib']:.0f} MiB, test MSE "
        f"{r['score']:.4f} (load average {r['load']:.1f})"
    )


def cnn_part(threads: int, n_train: int, rf_max: int, plot: str | None) -> None:
    """The CNN on digits images (in this process): exact CNTK regression against ``nk.approx.ridge`` with CNN
    random features (up to F = ``rf_max``) and the CNTK sketch for F = 2^10..2^14, on the first ``n_train`` training
    images (the exact pooled CNTK costs ~1 ms per pair of images on this machine); ``plot``: the figure of accuracy
    against F. Rows not run are NaN."""
    torch.set_num_threads(threads)
    x, y, x_test, y_test = digits(images=True)
    x, y = x[:n_train], y[:n_train]
    net = cnn(10)
    start = time.perf_counter()
    k_train = nk.kernel(net, x.double(), get="ntk")
    k_test = nk.kernel(net, x_test.double(), x.double(), get="ntk")
    kernel_s = time.perf_counter() - start
    mean = nk.predict.gp_inference(k_train, y.double(), diag_reg=DIAG_REG)("ntk", k_test)
    exact_s = time.perf_counter() - start
    exact = score("digits", mean.float(), y_test)
    print(f"\nCNN on digits images ({x.shape[0]} train / {x_test.shape[0]} test), NTK, diag_reg = {DIAG_REG}")
    print(f"exact CNTK regression: accuracy {exact:.4f}, kernels {kernel_s:.1f} s, total {exact_s:.1f} s")
    print("\n| F | random features: accuracy (fit + predict) | sketch: accuracy (fit + predict) | exact CNTK | load |")
    print("|---|---|---|---|---|", flush=True)
    rows: dict[tuple[str, int], tuple[float, float]] = {("random_features", f): (math.nan, math.nan) for f in FEATURES}
    for f in CNN_FEATURES:
        for method in ("sketch", "random_features")[: 1 + (f <= rf_max)]:  # the sketch first: cheaper at large F
            start = time.perf_counter()
            feats = nk.approx.features(net, f, get="ntk", method=method, seed=0)
            mean = nk.approx.ridge(feats, x, y, diag_reg=DIAG_REG)(x_test)  # the features of x, then of x_test
            rows[(method, f)] = (score("digits", mean, y_test), time.perf_counter() - start)
            print(f"  cnn {method} {f} -> {rows[(method, f)]}", file=sys.stderr, flush=True)
        rf, sk = (rows[(m, f)] for m in ("random_features", "sketch"))
        cells = ["not run" if math.isnan(a) else f"{a:.4f} ({s:.0f} s)" for a, s in (rf, sk)]
        print(
            f"| 2^{int(math.log2(f))} | {cells[0]} | {cells[1]} | {exact:.4f} ({exact_s:.0f} s) | "
            f"{os.getloadavg()[0]:.1f} |",
            flush=True,
        )
    n, big = x.shape[0] + x_test.shape[0], 10_000
    sketch_s = rows[("sketch", 2**12)][1]
    print(
        f"\nEXTRAPOLATED to N = {big:,} images (exact kernels ∝ N², features and ΦᵀΦ ∝ N, not run): exact kernels "
        f"{kernel_s * (big / n) ** 2:.0f} s, CNTK sketch F = 2^12 fit + predict {sketch_s * big / n:.0f} s, "
        f"ratio {kernel_s * big / (n * sketch_s):.0f}x. load average {[round(v, 1) for v in os.getloadavg()]}"
    )
    if plot:
        curves = {m: [rows[(m, f)][0] for f in CNN_FEATURES] for m in ("random_features", "sketch")}
        title = f"digits 8x8 images, {x.shape[0]} train: CNTK (2-layer CNN)"
        draw([(title, "test accuracy", curves, exact)], CNN_FEATURES, "exact CNTK regression", plot)


def diagnose(threads: int) -> None:
    """The synthetic task's gap between approximate and exact kernel regression (module doc)."""
    torch.set_num_threads(threads)
    x, y, x_test, y_test = (t.double() for t in synthetic(10_000, 2_000))
    net = mlp(x.shape[1], 1)
    regs = (1e-4, 1e-3, 1e-2, 1e-1)
    start = time.perf_counter()
    k = nk.kernel(net, x, get="ntk").ntk
    k_test = nk.kernel(net, x_test, x, get="ntk").ntk
    print(f"  exact kernels {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    mean_diag = float(k.diagonal().mean())

    def dual_mse(kk: torch.Tensor, kk_test: torch.Tensor, reg: float) -> float:
        chol = torch.linalg.cholesky(kk + reg * float(kk.diagonal().mean()) * torch.eye(len(kk), dtype=kk.dtype))
        return float(((kk_test @ torch.cholesky_solve(y, chol) - y_test) ** 2).mean())

    def primal_mse(phi: torch.Tensor, phi_test: torch.Tensor, reg: float) -> float:
        gram = phi.T @ phi
        lam = reg * float((phi * phi).sum()) / len(phi)
        w = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), phi.T @ y)
        return float(((phi_test @ w - y_test) ** 2).mean())

    print(
        "\n| model | F | rel. Frobenius error of the train kernel | " + " | ".join(f"MSE λ={r:g}" for r in regs) + " |"
    )
    print("|---|---|---|" + "---|" * len(regs))
    exact = [dual_mse(k, k_test, r) for r in regs]
    print("| exact NTK regression | | 0 | " + " | ".join(f"{m:.3f}" for m in exact) + " |", flush=True)
    sub = slice(0, 2000)
    generator = torch.Generator().manual_seed(0)
    for f in (2**10, 2**12):
        feats = nk.approx.features(net, f, get="ntk", method="random_features", seed=0, memory_budget="2G")
        phi, phi_test = feats(x), feats(x_test)
        err = float((phi[sub] @ phi[sub].T - k[sub, sub]).norm() / k[sub, sub].norm())
        mses = [primal_mse(phi, phi_test, r) for r in regs]
        print(f"| random features | 2^{int(math.log2(f))} | {err:.3f} | " + " | ".join(f"{m:.3f}" for m in mses) + " |")
        landmarks = torch.randperm(len(x), generator=generator)[:f]
        evals, evecs = torch.linalg.eigh(k[landmarks][:, landmarks])
        keep = evals > 1e-10 * float(evals.max())
        proj = evecs[:, keep] / evals[keep].sqrt()
        phi, phi_test = k[:, landmarks] @ proj, k_test[:, landmarks] @ proj
        err = float((phi[sub] @ phi[sub].T - k[sub, sub]).norm() / k[sub, sub].norm())
        mses = [primal_mse(phi, phi_test, r) for r in regs]
        print(
            f"| Nyström, {f} landmarks | 2^{int(math.log2(f))} | {err:.3f} | "
            + " | ".join(f"{m:.3f}" for m in mses)
            + " |",
            flush=True,
        )
    print(f"\nmean diagonal of K: {mean_diag:.3f}; load average {[round(v, 1) for v in os.getloadavg()]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("accuracy", "speed", "million", "cnn", "diagnose", "all"), default="all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cnn-train", type=int, default=300, help="training images of the CNN part")
    parser.add_argument(
        "--cnn-rf-max",
        type=int,
        default=2**14,
        help="the largest F of the CNN's random features (their dense "
        "(9m x m) projection costs ∝ F²: ~25 min at 2^14 under load)",
    )
    parser.add_argument("--plot", default=None, help="PNG path for the accuracy figure (MLP)")
    parser.add_argument("--plot-cnn", default=None, help="PNG path for the CNN's accuracy figure")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    if args.part in ("accuracy", "all"):
        accuracy(args.threads, args.plot)
    if args.part in ("speed", "all"):
        speed(args.threads)
    if args.part in ("million", "all"):
        million(args.threads)
    if args.part in ("cnn", "all"):
        cnn_part(args.threads, args.cnn_train, args.cnn_rf_max, args.plot_cnn)
    if args.part in ("diagnose", "all"):
        diagnose(args.threads)


if __name__ == "__main__":
    main()
