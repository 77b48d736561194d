"""E1 (kernel convergence): the empirical NTK and NNGP of finite networks approach the analytic infinite-width
kernels as the width grows, with a relative error ∝ n^{-1/2}.

Paper: Lee et al. 2019, SM I, Figs. S9/S10 (ReLU networks with 1 and 3 hidden layers, widths 2^3..2^12, M = 1..256
Monte Carlo samples; S10 is a heat map over (log2 n, log2 M) for one hidden layer): ‖Θ̂^(n) − Θ‖_F = O(n^{-1/2})
and ‖K̂^(n) − K‖_F = O(n^{-1/2}), the central-limit rate of Daniely et al. Averaging M independent networks
shrinks the fluctuation further, like (nM)^{-1/2}, down to the finite-width bias of the mean kernel, O(1/n).

Here: ReLU networks in the NTK parameterization (``mlp``: σ_w² = 2, σ_b² = 0.1, one output) with ``depths``
hidden layers of every width in ``widths``, ``samples`` independent initializations per width, on ``n_points``
inputs of the run's data set (standardised, rescaled to norm √d, so x·x'/n_0 is 1 on the diagonal, as the paper's
N(0, 1) inputs). Θ̂ is ``nk.empirical_ntk`` of the network; K̂ is the tangent kernel of its readout layer alone
(``params=`` the last layer), which is exactly the empirical NNGP x̄ x̄ᵀ of the last hidden layer (theory.md §3.3),
the kernel whose fluctuation is the CLT one (the outputs' own outer product f fᵀ would add the O(1) noise of one
Gaussian draw at every width). The analytic Θ and K are ``nk.kernel`` of the same network (the width plays no
role). The error is ‖K̂ − K‖_F / ‖K‖_F on the (N, N) kernels. For the first depth, ``mc_samples`` networks per
width give the S10 heat map: the error of the mean of the first M kernels, for M = 1, 2, 4, …

Fit: least-squares slope of log(error) on log(width) over every network (M = 1), with its 95% confidence interval,
per depth and kernel. Verdict rule, per fit, with the interval widened by ``TOLERANCE`` on each side for
finite-width curvature (at the smallest widths the error is of order 1 and the O(1/n) bias adds to the
fluctuation): *consistent* when the widened interval contains -1/2 and the plain interval lies below 0,
*undecided* when the widened interval contains -1/2 but the plain one reaches 0 (the error does not fall
significantly), *inconsistent* when the widened interval misses -1/2. Supported if every fit is consistent, not
supported if any is inconsistent, inconclusive otherwise. The slope of the M-sample means (where the O(1/n) bias
can show) is reported, not judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..empirical import empirical_ntk
from ..infinite.compute import kernel
from ..report import ExperimentResult, Figure, Table, new_figure, plot_style
from .context import RunContext, run_config
from .models import mlp, readout_parameters
from .registry import register
from .stats import SlopeFit, fit_loglog_slope, relative_change

__all__ = ["FULL", "KERNELS", "QUICK", "KernelConvergenceConfig", "kernel_convergence", "monte_carlo_counts"]

TOLERANCE = 0.15
EXPECTED_SLOPE = -0.5
KERNELS = {"ntk": "NTK Θ̂", "nngp": "NNGP K̂"}

TITLE = "Kernel convergence with width"
CLAIM = (
    "The empirical NTK Θ̂ and NNGP K̂ of a randomly initialized finite network converge to the analytic "
    "infinite-width kernels as the width n grows, with relative Frobenius error ∝ n^-1/2, for 1 and 3 hidden "
    "layers; averaging M networks lowers it further (Lee et al. 2019, SM I, Figs. S9, S10)."
)


@dataclass(frozen=True)
class KernelConvergenceConfig:
    """E1's settings: ReLU networks with each of ``depths`` hidden layers and every width in ``widths``,
    ``samples`` networks per (depth, width) for the slope fits, kernels on ``n_points`` inputs; for the first depth
    ``mc_samples`` networks per width for the Monte Carlo heat map (Fig. S10); σ_w = ``W_std``, σ_b = ``b_std``."""

    depths: tuple[int, ...] = (1, 3)
    widths: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    samples: int = 6
    mc_samples: int = 32
    n_points: int = 16
    W_std: float = math.sqrt(2.0)
    b_std: float = math.sqrt(0.1)
    dtype: str = "float64"


QUICK = KernelConvergenceConfig()
FULL = KernelConvergenceConfig(widths=tuple(2**k for k in range(3, 13)), samples=8, mc_samples=64, n_points=32)


def monte_carlo_counts(n: int) -> list[int]:
    """The sample counts M of the heat map: 1, 2, 4, … up to ``n`` (``n`` itself included)."""
    counts = [2**k for k in range(int(math.log2(n)) + 1)]
    return counts if counts[-1] == n else [*counts, n]


def _network(
    cfg: KernelConvergenceConfig, ctx: RunContext, depth: int, width: int, sample: int, x: torch.Tensor
) -> nn.Sequential:
    return mlp(
        x.shape[1], [width] * depth, 1, W_std=cfg.W_std, b_std=cfg.b_std,
        seed=ctx.derive_seed("E1", depth, width, sample), dtype=x.dtype, device=x.device,
    )  # fmt: skip


def _empirical(model: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Θ̂ (all parameters) and K̂ (the readout layer's tangent kernel = x̄ x̄ᵀ) on ``x``: (N, N) each."""
    return {"ntk": empirical_ntk(model, x), "nngp": empirical_ntk(model, x, params=readout_parameters(model))}


def _one_width(
    cfg: KernelConvergenceConfig,
    ctx: RunContext,
    depth: int,
    width: int,
    x: torch.Tensor,
    analytic: dict[str, torch.Tensor],
    n_samples: int,
) -> dict[str, Any]:
    """Errors of every network's kernels (M = 1) and of the running means of the first M of them."""
    counts = monte_carlo_counts(n_samples)
    total = {name: torch.zeros_like(k) for name, k in analytic.items()}
    single: dict[str, list[float]] = {name: [] for name in analytic}
    mean_err: dict[str, list[float]] = {name: [] for name in analytic}
    for s in range(n_samples):
        emp = _empirical(_network(cfg, ctx, depth, width, s, x), x)
        for name, k in emp.items():
            single[name].append(relative_change(k, analytic[name]))
            total[name] += k
            if s + 1 in counts:
                mean_err[name].append(relative_change(total[name] / (s + 1), analytic[name]))
    return {"width": width, "single": single, "mean": mean_err, "counts": counts}


def _judge(fits: dict[str, SlopeFit]) -> tuple[bool | None, str, dict[str, str]]:
    """The verdict from the slopes (module docstring): (supported, sentence, outcome per fit)."""
    outcome = {}
    for name, fit in fits.items():
        if not fit.ci_low - TOLERANCE <= EXPECTED_SLOPE <= fit.ci_high + TOLERANCE:
            outcome[name] = "inconsistent"
        else:
            outcome[name] = "consistent" if fit.ci_high < 0 else "undecided"
    bad = [n for n, o in outcome.items() if o == "inconsistent"]
    undecided = [n for n, o in outcome.items() if o == "undecided"]
    detail = "; ".join(f"{n} {fits[n].format()}" for n in (bad or undecided))
    if bad:
        return False, f"Not supported: slope intervals (±{TOLERANCE} allowance) miss -1/2: {detail}.", outcome
    if undecided:
        return None, f"Inconclusive: the error does not fall significantly with width for {detail}.", outcome
    return (
        True,
        f"Supported: every fitted slope's 95% interval, widened by ±{TOLERANCE} for finite-width curvature, contains "
        "-1/2 and lies below 0 (" + "; ".join(f"{n} {f.format()}" for n, f in fits.items()) + ").",
        outcome,
    )


def _fit_name(depth: int, name: str) -> str:
    return f"{KERNELS[name]}, {depth} hidden layer{'s' if depth > 1 else ''}"


def _convergence_figure(
    cfg: KernelConvergenceConfig,
    runs: dict[int, list[dict[str, Any]]],
    fits: dict[str, SlopeFit],
    mean_fits: dict[str, SlopeFit],
) -> Figure:
    widths = np.asarray(cfg.widths, dtype=float)
    fig, axes = new_figure(ncols=len(cfg.depths), panel_size=(4.6, 4.6))
    for ax, depth in zip(axes, cfg.depths, strict=True):
        for j, name in enumerate(KERNELS):
            color, label = f"C{j}", _fit_name(depth, name)
            rows = runs[depth]
            xs = [r["width"] for r in rows for _ in r["single"][name][: cfg.samples]]
            ys = [v for r in rows for v in r["single"][name][: cfg.samples]]
            ax.plot(xs, ys, ".", color=color, alpha=0.35, ms=5)
            ax.plot(widths, [np.mean(r["single"][name][: cfg.samples]) for r in rows], "o-", color=color,
                    label=f"{KERNELS[name]}, M = 1: slope {fits[label].format()}")  # fmt: skip
            ax.plot(widths, fits[label].predict(widths), color=color, alpha=0.3, lw=4)
            m = rows[0]["counts"][-1]
            ax.plot(widths, [r["mean"][name][-1] for r in rows], "s--", color=color, ms=3, alpha=0.8,
                    label=f"{KERNELS[name]}, mean of M = {m}: slope {mean_fits[label].format()}")  # fmt: skip
        top = max(np.mean(r["single"][n][: cfg.samples]) for r in runs[depth][:1] for n in KERNELS)
        ax.plot(widths, 1.5 * top * (widths / widths[0]) ** -0.5, ":", color="0.4", lw=1.2, label=r"$\propto n^{-1/2}$")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(widths, [str(int(w)) for w in widths])
        ax.minorticks_off()
        ax.set(xlabel="width n", ylabel=r"$\|\hat k - k\|_F / \|k\|_F$")
        ax.set_title(f"ReLU, {depth} hidden layer{'s' if depth > 1 else ''}")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    return Figure.from_matplotlib(
        "E1-convergence",
        fig,
        f"Relative Frobenius error of the empirical NTK Θ̂ and NNGP K̂ (readout tangent kernel) against the analytic "
        f"kernels of nk.kernel on {cfg.n_points} inputs, against width (log-log; dots: {cfg.samples} networks per "
        "width, line: their mean, pale: least-squares fit with the slope's 95% interval in the legend; dashed: the "
        "error of the mean kernel of M networks; dotted: n^-1/2). Paper (Fig. S9): both errors fall as n^-1/2.",
    )


def _heatmap_figure(cfg: KernelConvergenceConfig, depth: int, rows: list[dict[str, Any]]) -> Figure:
    counts = rows[0]["counts"]
    fig, axes = new_figure(ncols=len(KERNELS), panel_size=(4.2, 3.6))
    for ax, name in zip(axes, KERNELS, strict=True):
        grid = np.log10(np.array([r["mean"][name] for r in rows])).T  # (M, widths)
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(rows)), [str(int(math.log2(r["width"]))) for r in rows])
        ax.set_yticks(range(len(counts)), [f"{math.log2(m):g}" for m in counts])
        ax.set(xlabel=r"$\log_2 n$", ylabel=r"$\log_2 M$", title=f"{KERNELS[name]}: log10 relative error")
        ax.grid(False)
        fig.colorbar(im, ax=ax, shrink=0.85)
    return Figure.from_matplotlib(
        "E1-monte-carlo",
        fig,
        f"Relative Frobenius error of the mean of M empirical kernels (M independent networks) against the analytic "
        f"kernel, {depth} hidden layer, over width n and M (log10, colour). Paper (Fig. S10): the error falls with "
        "both n and M, along lines of constant nM while the fluctuation dominates, until the O(1/n) bias of the "
        "mean kernel remains.",
    )


@register("E1", title=TITLE, claim=CLAIM, quick=QUICK, full=FULL)
def kernel_convergence(cfg: KernelConvergenceConfig, ctx: RunContext) -> ExperimentResult:
    """Run E1 (module docstring) and return its result with figures E1-convergence and E1-monte-carlo."""
    dtype = getattr(torch, cfg.dtype)
    data = ctx.load_data(task="multiclass", n_train=cfg.n_points, n_test=1, dtype=dtype)
    x = data.x_train
    runs: dict[int, list[dict[str, Any]]] = {}
    analytic_kernels: dict[int, dict[str, torch.Tensor]] = {}
    for i, depth in enumerate(cfg.depths):
        k = kernel(_network(cfg, ctx, depth, 1, 0, x), x)
        assert k.ntk is not None and k.nngp is not None  # both were asked for
        analytic = {"ntk": k.ntk, "nngp": k.nngp}
        analytic_kernels[depth] = analytic
        n_samples = max(cfg.samples, cfg.mc_samples) if i == 0 else cfg.samples
        runs[depth] = [
            _one_width(cfg, ctx, depth, w, x, analytic, n_samples)
            for w in ctx.bar(cfg.widths, desc=f"E1 depth {depth}", total=len(cfg.widths))
        ]

    fits, mean_fits, per_width = {}, {}, {}
    for depth in cfg.depths:
        for name in KERNELS:
            label = _fit_name(depth, name)
            rows = runs[depth]
            xs = [r["width"] for r in rows for _ in range(cfg.samples)]
            fits[label] = fit_loglog_slope(xs, [v for r in rows for v in r["single"][name][: cfg.samples]])
            mean_fits[label] = fit_loglog_slope(cfg.widths, [r["mean"][name][-1] for r in rows])
            per_width[label] = [float(np.mean(r["single"][name][: cfg.samples])) for r in rows]
    supported, verdict, outcome = _judge(fits)

    widths = list(cfg.widths)
    labels = list(fits)
    measured = (
        f"Relative Frobenius errors on {x.shape[0]} inputs, widths {widths[0]}–{widths[-1]}, {cfg.samples} networks "
        "per width; fitted log-log slopes (95% CI): "
        + "; ".join(f"{n} {fits[n].format()} (error {per_width[n][0]:.3g} → {per_width[n][-1]:.3g})" for n in labels)
        + "."
    )
    first = cfg.depths[0]
    counts = runs[first][0]["counts"]
    tables = [
        Table(
            "Fitted slopes",
            ["kernel", "expected", "slope (M = 1)", "CI low", "CI high", "R²", "outcome", "slope of mean (M = max)"],
            [
                [n, EXPECTED_SLOPE, f.slope, f.ci_low, f.ci_high, f.r2, outcome[n], mean_fits[n].slope]
                for n, f in fits.items()
            ],
            f"Least-squares slope of log(relative error) on log(width) over every network, 95% confidence interval; "
            f"the outcome allows ±{TOLERANCE} for finite-width curvature (rule in the text). Last column: the slope of "
            f"the error of the mean kernel of {counts[-1]} (depth {first}) or {cfg.samples} networks, reported only.",
        ),
        Table(
            "Mean relative error per width (M = 1)",
            ["width", *labels],
            [[w, *(per_width[n][j] for n in labels)] for j, w in enumerate(widths)],
            f"Mean over {cfg.samples} networks of ‖k̂ − k‖_F / ‖k‖_F.",
        ),
        Table(
            f"Error of the mean of M kernels, {first} hidden layer (Fig. S10)",
            ["width", *(f"{KERNELS[n]}, M = {m}" for n in KERNELS for m in counts)],
            [[r["width"], *(v for n in KERNELS for v in r["mean"][n])] for r in runs[first]],
            "Relative Frobenius error of the mean of the first M empirical kernels.",
        ),
    ]
    metrics = {
        "slopes": {
            n: {"slope": f.slope, "ci_low": f.ci_low, "ci_high": f.ci_high, "r2": f.r2} for n, f in fits.items()
        },
        "mean_kernel_slopes": {
            n: {"slope": f.slope, "ci_low": f.ci_low, "ci_high": f.ci_high} for n, f in mean_fits.items()
        },
        "outcome": outcome,
        "per_width": {"widths": widths, **per_width},
        "monte_carlo_counts": counts,
        "runs": {str(d): rows for d, rows in runs.items()},
        "analytic_diagonal_mean": {
            str(d): {n: float(k.diagonal().mean()) for n, k in a.items()} for d, a in analytic_kernels.items()
        },
    }
    with plot_style():
        figures = [_convergence_figure(cfg, runs, fits, mean_fits), _heatmap_figure(cfg, first, runs[first])]
    return ExperimentResult(
        measured=measured,
        supported=supported,
        verdict=verdict,
        metrics=metrics,
        tables=tables,
        figures=figures,
        config=run_config(cfg, data),
    )
