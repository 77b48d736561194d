"""E3 (kernel and weight changes): how much training moves each layer's weights, Θ̂ and K̂, against width.

Paper: Lee et al. 2019, Fig. 1 (3 hidden ReLU layers, MNIST, |D| = 128, η = 1, T = 2^17 steps) and Fig. S6.
After T steps of full-batch gradient descent on the MSE, for networks of width n in the NTK parameterization:

- relative weight change ‖θ^l_T − θ^l_0‖_F / ‖θ^l_0‖_F ∝ n^{-1/2} for the input and output layers and ∝ n^{-1} for
  the hidden-to-hidden layers (their parameter count grows like n² but each entry moves by O(1/n));
- relative change of the empirical NTK ‖Θ̂_T − Θ̂_0‖_F / ‖Θ̂_0‖_F and of the empirical NNGP K̂ between n^{-1} and
  n^{-1/2} (the theorem bounds it by O(n^{-1/2}); the paper sees "closer to O(1/n)").

The network-versus-linearization RMSE of Fig. S5, the other half of E3 in the plan, is added once
``ntkit.linearize`` is available.

Here: the run's data set (two-class, ±1 targets), ReLU, σ_w² = 2, σ_b² = 0.1, ``torch.optim.SGD`` on
``MSELoss(reduction="mean")`` with η = ``lr_fraction`` · N / λ_max(Θ̂_0) (half the largest stable rate with the
default 0.5; Θ̂_0 of a reference network of the middle width on the training set). Θ̂ is ``nk.empirical_ntk`` on
``n_kernel`` training points; K̂ is the tangent kernel of the readout layer alone (``params=`` the last layer),
which is exactly the empirical NNGP x̄ x̄ᵀ of the last hidden layer (theory.md 3.3). Slopes are least-squares fits
on log-log axes with 95% confidence intervals over widths (and repeats).

Verdict rule, per quantity, with the 95% interval of the slope widened by ``TOLERANCE`` on each side for
finite-width curvature: a layer is *inconsistent* when the widened interval misses its exponent, *undecided* when
the (plain) interval also contains the other exponent (-1 for input/output, -1/2 for hidden layers), *consistent*
otherwise; a kernel is *inconsistent* when the widened interval misses [-1, -1/2], *undecided* when the interval
reaches 0 (no significant fall with width), *consistent* otherwise. Not supported if any quantity is inconsistent,
inconclusive if any is undecided, supported otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np
import torch

from ..empirical import empirical_ntk
from ..report import ExperimentResult, Figure, Table, new_figure, plot_style
from .context import RunContext
from .models import dense_layers, mlp, readout_parameters
from .registry import register
from .stats import SlopeFit, fit_loglog_slope, relative_change
from .training import log_spaced_steps, train_full_batch

__all__ = ["FULL", "QUICK", "WidthScalingConfig", "width_scaling"]

TOLERANCE = 0.15
KERNEL_RANGE = (-1.0, -0.5)

TITLE = "Weight and kernel change versus width"
CLAIM = (
    "Training moves the input- and output-layer weights by a relative amount ∝ n^-1/2 and the hidden-layer weights "
    "∝ n^-1; the relative change of the empirical NTK Θ̂ and NNGP K̂ lies between n^-1 and n^-1/2 "
    "(Lee et al. 2019, Fig. 1 and S6)."
)


@dataclass(frozen=True)
class WidthScalingConfig:
    """E3's settings: hidden ``widths`` (all hidden layers of one network share the width), ``depth`` hidden
    layers, ``n_train`` training points, Θ̂ / K̂ measured on the first ``n_kernel`` of them, ``steps`` of GD,
    Θ̂_t recorded at ``n_times`` log-spaced steps, ``repeats`` networks per width."""

    widths: tuple[int, ...] = (32, 64, 128, 256, 512)
    depth: int = 3
    n_train: int = 64
    n_kernel: int = 32
    steps: int = 256
    n_times: int = 6
    lr_fraction: float = 0.5
    W_std: float = math.sqrt(2.0)
    b_std: float = math.sqrt(0.1)
    repeats: int = 3
    dtype: str = "float64"


QUICK = WidthScalingConfig()
FULL = WidthScalingConfig(
    widths=tuple(2**k for k in range(5, 12)), n_train=128, n_kernel=32, steps=1024, n_times=8, repeats=2
)
KERNEL_NAMES = {"ntk": "Θ̂ (NTK)", "nngp": "K̂ (NNGP)"}


def _layer_names(n_layers: int) -> list[str]:
    return [
        "layer 1 (input)" if i == 0 else f"layer {i + 1} (readout)" if i == n_layers - 1 else f"layer {i + 1} (hidden)"
        for i in range(n_layers)
    ]


def _expected_layer_slope(i: int, n_layers: int) -> float:
    return -0.5 if i in (0, n_layers - 1) else -1.0


def _learning_rate(cfg: WidthScalingConfig, ctx: RunContext, x: torch.Tensor, k: int) -> tuple[float, float]:
    """(η, λ_max): η = lr_fraction · N k / λ_max(Θ̂_0) for a reference network of the middle width."""
    width = cfg.widths[len(cfg.widths) // 2]
    ref = mlp(
        x.shape[1], [width] * cfg.depth, k, W_std=cfg.W_std, b_std=cfg.b_std,
        seed=ctx.derive_seed("E3", "lr"), dtype=x.dtype, device=x.device,
    )  # fmt: skip
    lam_max = float(torch.linalg.eigvalsh(empirical_ntk(ref, x).double())[-1])
    return cfg.lr_fraction * x.shape[0] * k / lam_max, lam_max


def _one_network(
    cfg: WidthScalingConfig, ctx: RunContext, width: int, repeat: int, x, y, lr: float, record: list[int]
) -> dict[str, Any]:
    model = mlp(
        x.shape[1], [width] * cfg.depth, y.shape[1], W_std=cfg.W_std, b_std=cfg.b_std,
        seed=ctx.derive_seed("E3", width, repeat), dtype=x.dtype, device=x.device,
    )  # fmt: skip
    xk = x[: cfg.n_kernel]
    readout = readout_parameters(model)
    weights0 = [m.weight.detach().clone() for _, m in dense_layers(model)]
    nngp0 = empirical_ntk(model, xk, params=readout)
    history = train_full_batch(
        model,
        x,
        y,
        lr=lr,
        steps=cfg.steps,
        record_steps=record,
        on_record=lambda _, m: empirical_ntk(m, xk),
        progress=lambda steps: ctx.bar(steps, desc=f"E3 n={width} GD", total=cfg.steps + 1),
    )
    if history.diverged:
        raise FloatingPointError(f"training diverged at width {width} (η = {lr:.3g}); lower lr_fraction.")
    ntk = history.records
    return {
        "width": width,
        "repeat": repeat,
        "weights": [
            relative_change(m.weight.detach(), w0) for (_, m), w0 in zip(dense_layers(model), weights0, strict=True)
        ],
        "ntk": relative_change(ntk[-1], ntk[0]),
        "nngp": relative_change(empirical_ntk(model, xk, params=readout), nngp0),
        "ntk_over_time": [relative_change(k, ntk[0]) for k in ntk[1:]],
        "loss_initial": history.loss[0],
        "loss_final": history.loss[-1],
    }


def _judge(fits: dict[str, SlopeFit], expected: dict[str, float | None]) -> tuple[bool | None, str, dict[str, str]]:
    """The verdict from the slopes (module docstring): (supported, sentence, outcome per quantity)."""
    outcome = {}
    for name, fit in fits.items():
        lo, hi = fit.ci_low - TOLERANCE, fit.ci_high + TOLERANCE
        target = expected[name]
        if target is None:  # a kernel: the change must fall with width, at a rate within [-1, -1/2]
            if hi < KERNEL_RANGE[0] or lo > KERNEL_RANGE[1]:
                outcome[name] = "inconsistent"
            else:
                outcome[name] = "consistent" if fit.ci_high < 0 else "undecided"
        elif not lo <= target <= hi:
            outcome[name] = "inconsistent"
        else:  # the data must also tell the expected exponent from the other one
            other = -1.0 if target == -0.5 else -0.5
            outcome[name] = "undecided" if fit.ci_low <= other <= fit.ci_high else "consistent"
    bad = [n for n, o in outcome.items() if o == "inconsistent"]
    undecided = [n for n, o in outcome.items() if o == "undecided"]
    if bad:
        detail = "; ".join(f"{KERNEL_NAMES.get(n, n)} {fits[n].format()}" for n in bad)
        return False, f"Not supported: slopes outside the expected range (±{TOLERANCE} allowance): {detail}.", outcome
    if undecided:
        detail = "; ".join(f"{KERNEL_NAMES.get(n, n)} {fits[n].format()}" for n in undecided)
        return None, f"Inconclusive: the confidence intervals are too wide to decide for {detail}.", outcome
    return (
        True,
        f"Supported: each layer's 95% slope interval (±{TOLERANCE} allowance for finite width) contains its exponent "
        "(-1/2 input/output, -1 hidden) and excludes the other one; the Θ̂ and K̂ slopes are negative and within "
        "[-1, -1/2].",
        outcome,
    )


def _guides(ax, x: np.ndarray, y0: float) -> None:
    for power, style, label in ((-0.5, ":", r"$\propto n^{-1/2}$"), (-1.0, "--", r"$\propto n^{-1}$")):
        ax.plot(x, y0 * (x / x[0]) ** power, style, color="0.5", lw=1, label=label)


def _width_axis(ax, widths: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.minorticks_off()
    ax.set_xlabel("width n")


def _plot_series(ax, widths, xs, values, mean, fit: SlopeFit, color: str, label: str) -> None:
    """Individual networks (dots), their mean per width (line) and the fitted power law (thick, pale)."""
    w = np.asarray(widths, dtype=float)
    ax.plot(xs, values, ".", color=color, alpha=0.35, ms=5)
    ax.plot(w, mean, "o-", color=color, label=f"{label}: slope {fit.format()}")
    ax.plot(w, fit.predict(w), color=color, alpha=0.3, lw=4)


def _figures(cfg, widths, layer_names, series, xs, per_width, fits, runs, record) -> list[Figure]:
    from matplotlib import colormaps

    w = np.asarray(widths, dtype=float)
    figs = []
    with plot_style():
        fig, (ax,) = new_figure(panel_size=(7.6, 4.0))
        for i, name in enumerate(layer_names):
            _plot_series(ax, widths, xs, series[name], per_width[name], fits[name], f"C{i % 10}", name)
        _guides(ax, w, max(per_width[n][0] for n in layer_names) * 1.6)
        _width_axis(ax, widths)
        ax.set_ylabel(r"$\|W_T - W_0\|_F \,/\, \|W_0\|_F$")
        ax.set_title("Relative weight change per layer")
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        figs.append(
            Figure.from_matplotlib(
                "E3-weights",
                fig,
                f"Relative Frobenius change of each layer's weights after {cfg.steps} GD steps against width "
                f"(log-log; dots: the {cfg.repeats} network(s) per width, line: their mean, pale: least-squares "
                "fit with the slope's 95% interval in the legend; grey: n^-1/2 and n^-1 guides). "
                "Paper (Fig. 1b): input and output layers ∝ n^-1/2, hidden layers ∝ n^-1.",
            )
        )

        fig, axes = new_figure(ncols=3, panel_size=(3.8, 3.4))
        for ax, key in ((axes[0], "ntk"), (axes[1], "nngp")):
            _plot_series(ax, widths, xs, series[key], per_width[key], fits[key], "C0", "fit")
            _guides(ax, w, per_width[key][0])
            _width_axis(ax, widths)
            ax.set_title(f"relative change of {KERNEL_NAMES[key]}")
            ax.legend(loc="lower left")
        ax = axes[2]
        cmap = colormaps["viridis"]
        for j, width in enumerate(widths):
            curve = np.mean([r["ntk_over_time"] for r in runs if r["width"] == width], axis=0)
            ax.plot(record[1:], curve, color=cmap(0.9 * j / max(1, len(widths) - 1)), label=f"n = {width}")
        ax.set(xscale="log", yscale="log", xlabel="GD step t")
        ax.set_title(r"$\|\hat\Theta_t - \hat\Theta_0\|_F \,/\, \|\hat\Theta_0\|_F$ during training")
        ax.legend(ncol=2)
        figs.append(
            Figure.from_matplotlib(
                "E3-kernels",
                fig,
                f"Relative Frobenius change of the empirical NTK Θ̂ and NNGP K̂ on {cfg.n_kernel} training points "
                f"after {cfg.steps} steps against width (left, middle; dots, line and fit as in E3-weights) and of "
                "Θ̂ over training for each width (right, mean over networks). Paper (Fig. 1a, c, d): the change "
                "is between n^-1 and n^-1/2 and falls with width at all times.",
            )
        )
    return figs


@register("E3", title=TITLE, claim=CLAIM, quick=QUICK, full=FULL)
def width_scaling(cfg: WidthScalingConfig, ctx: RunContext) -> ExperimentResult:
    """Run E3 (module docstring) and return its result with figures E3-weights and E3-kernels."""
    dtype = getattr(torch, cfg.dtype)
    data = ctx.load_data(task="binary", n_train=cfg.n_train, n_test=1, dtype=dtype)
    x, y = data.x_train, data.targets()[0]
    lr, lam_max = _learning_rate(cfg, ctx, x, y.shape[1])
    record = log_spaced_steps(cfg.steps, cfg.n_times)
    jobs = list(product(cfg.widths, range(cfg.repeats)))
    runs = [
        _one_network(cfg, ctx, width, rep, x, y, lr, record)
        for width, rep in ctx.bar(jobs, desc="E3 networks", total=len(jobs))
    ]

    n_layers = cfg.depth + 1
    layer_names = _layer_names(n_layers)
    xs = [r["width"] for r in runs]
    series = {name: [r["weights"][i] for r in runs] for i, name in enumerate(layer_names)}
    series.update(ntk=[r["ntk"] for r in runs], nngp=[r["nngp"] for r in runs])
    fits = {name: fit_loglog_slope(xs, vals) for name, vals in series.items()}
    expected: dict[str, float | None] = {n: _expected_layer_slope(i, n_layers) for i, n in enumerate(layer_names)}
    expected.update(ntk=None, nngp=None)
    supported, verdict, outcome = _judge(fits, expected)

    widths = list(cfg.widths)
    per_width = {
        k: [float(np.mean([v for x_, v in zip(xs, vals, strict=True) if x_ == w])) for w in widths]
        for k, vals in series.items()
    }
    losses = {w: [r["loss_final"] for r in runs if r["width"] == w] for w in widths}
    measured = (
        f"Fitted log-log slopes over widths {widths[0]}–{widths[-1]} (95% CI) after {cfg.steps} GD steps: "
        + ", ".join(f"{n.split(' (')[0]} {fits[n].format()}" for n in layer_names)
        + f"; Θ̂ {fits['ntk'].format()}, K̂ {fits['nngp'].format()}."
    )
    slope_rows = [
        [KERNEL_NAMES.get(name, name), "[-1, -0.5]" if expected[name] is None else expected[name], f.slope, f.ci_low,
         f.ci_high, f.r2, outcome[name]]
        for name, f in fits.items()
    ]  # fmt: skip
    width_rows = [
        [
            w,
            *(per_width[n][j] for n in layer_names),
            per_width["ntk"][j],
            per_width["nngp"][j],
            float(np.mean(losses[w])),
        ]
        for j, w in enumerate(widths)
    ]
    tables = [
        Table(
            "Fitted slopes",
            ["quantity", "expected", "slope", "CI low", "CI high", "R²", "outcome"],
            slope_rows,
            f"Least-squares slope of log(relative change) on log(width), 95% confidence interval; the outcome "
            f"allows ±{TOLERANCE} for finite-width curvature (rule in the text).",
        ),
        Table(
            "Relative changes per width",
            ["width", *layer_names, "Θ̂", "K̂", "final train MSE"],
            width_rows,
            f"Mean over {cfg.repeats} network(s) per width; learning rate η = {lr:.4g} (λ_max(Θ̂_0) = {lam_max:.4g}, "
            f"N = {x.shape[0]}).",
        ),
    ]
    metrics = {
        "learning_rate": lr,
        "lambda_max_ntk0": lam_max,
        "slopes": {
            n: {"slope": f.slope, "ci_low": f.ci_low, "ci_high": f.ci_high, "r2": f.r2} for n, f in fits.items()
        },
        "expected_slopes": expected,
        "outcome": outcome,
        "per_width": {"widths": widths, **per_width},
        "final_train_loss": {str(w): v for w, v in losses.items()},
        "record_steps": record,
        "runs": runs,
    }
    return ExperimentResult(
        id="E3",
        title=TITLE,
        claim=CLAIM,
        measured=measured,
        supported=supported,
        verdict=verdict,
        metrics=metrics,
        tables=tables,
        figures=_figures(cfg, widths, layer_names, series, xs, per_width, fits, runs, record),
        config={**cfg.__dict__, "dataset": data.name, "classes": data.info.get("classes"), "n_train": data.n_train},
    )
