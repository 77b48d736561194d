"""Why the error of the CNTK sketch falls as F^-1/2: the evidence behind tests/approx/test_conv_features.py's rate
test for the two-layer CNN (docs/approx.md, "Error rate").

Network and inputs are the test's: Conv2d(2, 8, 3) → ReLU → AvgPool2d(2, padding=1) → Conv2d(8, 8, 3) → ReLU →
GlobalAvgPool → Linear, 8 random 2 × 6 × 6 images (float64). For get in (nngp, ntk) and the sketch (or
``--method random_features``), the squared relative Frobenius error e² = ‖ΦΦᵀ − K‖²_F / ‖K‖²_F over seeds
0..S-1 (S = ``--seeds``, default 96) for F = 2^7..2^12, and with ``--large`` for F = 2^12..2^15 (``--large-seeds``,
default 16; too few for a precise mean, see docs/approx.md):

- per F: the mean of e² (± its standard error), F times it (constant under a pure 1/F law), its median;
- the weighted least-squares fit E[e²] = a/F + b/F² (b: products of independent sketches) and b/(aF) at the
  smallest F (how far the 1/F term dominates);
- the fitted log-log slopes of the RMS √mean(e²) and of the median's square root;
- the truncation bias of the sketch's degree-q series: its F → ∞ limit, the kernel recursion with each dual T
  replaced by the truncated series T_q (tail in degree q + 1, as ``activation_features`` does), computed exactly
  by factoring Gram matrices, against ``nk.kernel`` (q = ∞ is the closed-form arc-cosine dual: a check of this
  computation, ~1e-11).

    PYTHONPATH=src python benchmarks/approx_rate.py [--large] [--seeds 96] [--method sketch]

Memory: 1.1 GB at F = 2^15 (measured; printed). Time, one thread under load ~10 on 2 cores: ~8 minutes, ~15 more
with ``--large``.
"""

from __future__ import annotations

import argparse
import math
import os
import resource

import numpy as np
import torch

import ntkit as nk
from ntkit import nn as N
from ntkit.approx.hermite import coefficients
from ntkit.approx.steps import ActivationStep, parse
from ntkit.gaussian.activations import ABReLU, Activation


def cnn() -> N.Sequential:
    return N.Sequential(
        N.Conv2d(2, 8, 3, W_std=1.3, b_std=0.2),
        N.ReLU(),
        N.AvgPool2d(2, padding=1),
        N.Conv2d(8, 8, 3, W_std=1.3, b_std=0.1),
        N.ReLU(),
        N.GlobalAvgPool(),
        N.Linear(8, 1, W_std=0.9, b_std=0.1),
    )


def squared_errors(net: N.Sequential, x: torch.Tensor, get: str, method: str, f: int, seeds: int) -> np.ndarray:
    exact = getattr(nk.kernel(net, x), get)
    out = []
    for seed in range(seeds):
        phi = nk.approx.features(net, f, get=get, method=method, seed=seed)(x)
        out.append(float(((phi @ phi.T - exact).norm() / exact.norm()) ** 2))
    return np.array(out)


def truncated_dual(act: Activation, k: torch.Tensor, q: int | None, derivative: bool) -> torch.Tensor:
    """T_q(K) (or Ṫ_q): Σ_{j<=q} c_j(v) c_j(v') ρ^j + √(r(v) r(v')) ρ^{q+1}; q = None: ReLU's closed form."""
    v = k.diagonal().clamp_min(1e-300)
    s = v.sqrt()
    rho = (k / s[:, None] / s[None, :]).clamp(-1, 1)
    if q is None:
        angle = torch.arccos(rho)
        if derivative:
            return (math.pi - angle) / (2 * math.pi)
        return s[:, None] * s[None, :] * (torch.sqrt(1 - rho**2) + (math.pi - angle) * rho) / (2 * math.pi)
    c, second_moment = coefficients(act, v, q, derivative=derivative)
    tail = (second_moment - (c * c).sum(1)).clamp_min(0).sqrt()
    series = sum(c[:, j, None] * c[None, :, j] * rho**j for j in range(q + 1))
    return series + tail[:, None] * tail[None, :] * rho ** (q + 1)


def limit(net: N.Sequential, x: torch.Tensor, q: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(NNGP, NTK) of the recursion with T_q: the library's exact steps for weights and pooling, the activation
    on Gram matrices over all (example, position) pairs, refactored as K = ΨΨᵀ by an eigendecomposition."""
    steps, _ = parse(net)
    psi_k, psi_t = x.movedim(1, -1) / math.sqrt(x.shape[1]), None
    for step in steps:
        if not isinstance(step, ActivationStep):
            psi_k, psi_t = step(psi_k, psi_t, True)
            continue
        assert psi_t is not None and isinstance(step.act, ABReLU) and (step.act.a, step.act.b) == (0, 1)
        shape = psi_k.shape[:-1]
        flat_k, flat_t = psi_k.reshape(-1, psi_k.shape[-1]), psi_t.reshape(-1, psi_t.shape[-1])
        k = flat_k @ flat_k.T
        psi_k = factor(truncated_dual(step.act, k, q, False), shape)
        psi_t = factor(flat_t @ flat_t.T * truncated_dual(step.act, k, q, True), shape)
    assert psi_t is not None
    return psi_k @ psi_k.T, psi_t @ psi_t.T


def factor(k: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    evals, evecs = torch.linalg.eigh(k)
    return (evecs * evals.clamp_min(0).sqrt()).reshape(*shape, -1)


def report(get: str, sizes: list[int], errors: dict[int, np.ndarray]) -> None:
    f = np.array(sizes, dtype=float)
    mean = np.array([errors[s].mean() for s in sizes])
    stderr = np.array([errors[s].std(ddof=1) / math.sqrt(len(errors[s])) for s in sizes])
    median = np.array([np.median(errors[s]) for s in sizes])
    print(f"\n{get}: | F | seeds | mean e² ± s.e. | F · mean e² | median e² |")
    print("|---|---|---|---|---|")
    for s, m, se, med in zip(sizes, mean, stderr, median, strict=True):
        print(f"| 2^{int(math.log2(s))} | {len(errors[s])} | {m:.2e} ± {se:.1e} | {s * m:.2f} | {med:.2e} |")
    design = np.stack([1 / f, 1 / f**2], axis=1) / stderr[:, None]
    (a, b), *_ = np.linalg.lstsq(design, mean / stderr, rcond=None)
    cov = np.linalg.inv(design.T @ design)
    chi2 = float(((design @ np.array([a, b]) - mean / stderr) ** 2).sum())
    print(
        f"fit E[e²] = a/F + b/F²: a = {a:.3g} ± {math.sqrt(cov[0, 0]):.2g}, b = {b:.3g} ± {math.sqrt(cov[1, 1]):.2g}"
        f" (chi² {chi2:.1f} on {len(sizes) - 2} d.o.f.); b/(aF) at F = 2^{int(math.log2(sizes[0]))}: "
        f"{b / (a * f[0]):.2f} ± {math.sqrt(cov[1, 1]) / (a * f[0]):.2f}"
    )
    rms = np.polyfit(np.log(f), 0.5 * np.log(mean), 1)[0]
    med = np.polyfit(np.log(f), 0.5 * np.log(median), 1)[0]
    print(f"fitted log-log slope: RMS {rms:.3f}, median {med:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=96)
    parser.add_argument("--method", default="sketch")
    parser.add_argument("--large", action="store_true", help="also F = 2^12..2^15")
    parser.add_argument("--large-seeds", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average {[round(v, 1) for v in os.getloadavg()]}")
    net = cnn()
    x = torch.randn(8, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact = nk.kernel(net, x)
    print("\ntruncation bias of the degree-q series (the F → ∞ limit), ‖K_q − K‖_F / ‖K‖_F:")
    print("| q | NNGP | NTK |\n|---|---|---|")
    for q in (None, 2, 4, 6, 8, 12):
        k, t = limit(net, x, q)
        nngp, ntk = (float((a - b).norm() / b.norm()) for a, b in ((k, exact.nngp), (t, exact.ntk)))
        print(f"| {'∞ (closed form)' if q is None else q} | {nngp:.1e} | {ntk:.1e} |", flush=True)
    sizes = [2**k for k in range(7, 13)]
    for get in ("nngp", "ntk"):
        report(get, sizes, {f: squared_errors(net, x, get, args.method, f, args.seeds) for f in sizes})
    if args.large:
        large = [2**k for k in range(12, 16)]
        print(f"\nlarger F, {args.large_seeds} seeds:")
        for get in ("ntk", "nngp"):
            report(get, large, {f: squared_errors(net, x, get, args.method, f, args.large_seeds) for f in large})
    print(f"\npeak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    print(f"\nload average {[round(v, 1) for v in os.getloadavg()]}")


if __name__ == "__main__":
    main()
