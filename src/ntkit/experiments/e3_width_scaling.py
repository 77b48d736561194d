"""E3 (width scaling): how much training moves each layer's weights, Θ̂ and K̂, and how far the network ends from
its linearization, against width.

Paper: Lee et al. 2019, Fig. 1 (3 hidden ReLU layers, MNIST, |D| = 128, η = 1, T = 2^17 steps) and Fig. S6.
After T steps of full-batch gradient descent on the MSE, for networks of width n in the NTK parameterization:

- relative weight change ‖θ^l_T − θ^l_0‖_F / ‖θ^l_0‖_F ∝ n^{-1/2} for the input and output layers and ∝ n^{-1} for
  the hidden-to-hidden layers (their parameter count grows like n² but each entry moves by O(1/n));
- relative change of the empirical NTK ‖Θ̂_T − Θ̂_0‖_F / ‖Θ̂_0‖_F and of the empirical NNGP K̂ between n^{-1} and
  n^{-1/2} (the theorem bounds it by O(n^{-1/2}); the paper sees "closer to O(1/n)").

and (Fig. S5) the RMSE between the network's and its linearization's outputs on test points after training falls
with width; Theorem 2.1 bounds it by O(n^{-1/2}), and in practice it falls closer to n^{-1} (the kernel moves by
O(1/n)).

Here: the run's data set (two-class, ±1 targets), ReLU, σ_w² = 2, σ_b² = 0.1, ``torch.optim.SGD`` on
``MSELoss(reduction="mean")`` with one learning rate for all widths, as in the paper: η = ``lr_fraction`` × the
smallest η_max = N / λ_max(Θ̂_0) among the networks (``nk.predict.max_learning_rate``; Θ̂_0 on the training set),
so every network trains at most at half its largest stable rate with the default 0.5 (λ_max(Θ̂_0) varies by a
factor of about two between networks, so a rate taken from one network can exceed another's η_max, where the
linearization diverges). Θ̂ is ``nk.empirical_ntk`` on
``n_kernel`` training points; K̂ is the tangent kernel of the readout layer alone (``params=`` the last layer),
which is exactly the empirical NNGP x̄ x̄ᵀ of the last hidden layer (theory.md §3.3). The linearization's outputs
on ``n_test`` test points come from ``nk.predict.gradient_descent_mse`` with each network's own Θ̂_0 on the training
and test points, at the same steps: the closed form equals training ``nk.linearize(model)`` with the same SGD loop
to float64 round-off (for one output the (N, N) kernel is the full one), and it costs one kernel per network
instead of a second, three times more expensive training run (a forward-mode product and its backward per
step). The networks are E3's own: nothing is trained twice. Slopes are least-squares fits on log-log axes with 95%
confidence intervals over widths (and repeats).

Verdict rule, per quantity, with the 95% interval of the slope widened by ``TOLERANCE`` on each side for
finite-width curvature: a layer is *inconsistent* when the widened interval misses its exponent, *undecided* when
the (plain) interval also contains the other exponent (-1 for input/output, -1/2 for hidden layers), *consistent*
otherwise; a kernel is *inconsistent* when the widened interval misses [-1, -1/2], *undecided* when the interval
reaches 0 (no significant fall with width), *consistent* otherwise; the RMSE is *inconsistent* when the widened
interval lies above -1/2 (it falls more slowly than the theorem's bound), *undecided* when the interval reaches 0,
*consistent* otherwise (a fall faster than n^{-1} does not contradict a bound). Not supported if any quantity is
inconsistent, inconclusive if any is undecided, supported otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from ..empirical import empirical_ntk
from ..predict import max_learning_rate
from ..report import ExperimentResult, Figure, Table, new_figure, plot_style
from .context import RunContext, run_config
from .kernels import blocked_ntk, linearized_outputs
from .models import config_mlp, dense_layers, readout_parameters
from .registry import register
from .stats import SlopeFit, fit_loglog_slope, relative_change, rmse
from .training import log_spaced_steps, train_full_batch

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["FULL", "QUICK", "WidthScalingConfig", "width_scaling"]

TOLERANCE = 0.15
KERNEL_RANGE = (-1.0, -0.5)
# The expected slope of a quantity: a layer's exponent (a float), or one of these rules (module docstring).
KERNEL_EXPECTED = "[-1, -1/2]"
RMSE_EXPECTED = "<= -1/2"

TITLE = "Weights, kernels and linearization vs width"
CLAIM = (
    "Training moves the input- and output-layer weights by a relative amount ∝ n^-1/2 and the hidden-layer weights "
    "∝ n^-1; the relative change of the empirical NTK Θ̂ and NNGP K̂ lies between n^-1 and n^-1/2 "
    "(Lee et al. 2019, Fig. 1 and S6); the RMSE between the trained network and its linearization on test points "
    "falls with width (Fig. S5), within Theorem 2.1's O(n^-1/2) bound."
)


@dataclass(frozen=True)
class WidthScalingConfig:
    """E3's settings: hidden ``widths`` (all hidden layers of one network share the width), ``depth`` hidden
    layers, ``n_train`` training points, Θ̂ / K̂ measured on the first ``n_kernel`` of them, the linearization
    error on ``n_test`` test points (``None``: the whole test split), ``steps`` of GD, Θ̂_t and the outputs
    recorded at ``n_times`` log-spaced steps, ``repeats`` networks per width. ``kernel_block``: compute Θ̂_0 on
    the train and test points in blocks of that many points (``None``: at once), to bound memory: the Jacobian
    contraction holds N·P numbers for N points and P parameters (2.2 GB for 32 points at width 2048, depth 3)."""

    widths: tuple[int, ...] = (32, 64, 128, 256, 512)
    depth: int = 3
    n_train: int = 64
    n_kernel: int = 32
    n_test: int | None = 32
    kernel_block: int | None = None
    steps: int = 256
    n_times: int = 6
    lr_fraction: float = 0.5
    W_std: float = math.sqrt(2.0)
    b_std: float = math.sqrt(0.1)
    repeats: int = 3
    dtype: str = "float64"


QUICK = WidthScalingConfig()
FULL = WidthScalingConfig(
    widths=tuple(2**k for k in range(5, 12)),
    n_train=128,
    n_kernel=32,
    n_test=32,
    kernel_block=32,
    steps=1024,
    n_times=8,
    repeats=2,
)
KERNEL_NAMES = {"ntk": "Θ̂ (NTK)", "nngp": "K̂ (NNGP)", "rmse": "RMSE(f, f_lin)"}


def _layer_names(n_layers: int) -> list[str]:
    return [
        "layer 1 (input)" if i == 0 else f"layer {i + 1} (readout)" if i == n_layers - 1 else f"layer {i + 1} (hidden)"
        for i in range(n_layers)
    ]


def _expected_layer_slope(i: int, n_layers: int) -> float:
    return -0.5 if i in (0, n_layers - 1) else -1.0


def _network(
    cfg: WidthScalingConfig, ctx: RunContext, width: int, repeat: int, x: torch.Tensor, k: int
) -> nn.Sequential:
    """The network of (``width``, ``repeat``): the same one every time it is built (its seed is derived from both)."""
    return config_mlp(cfg, x, k, ctx.derive_seed("E3", width, repeat), width=width)


@dataclass
class _Initial:
    """A network at initialization: ``ntk`` Θ̂_0 on the train and test points (N + M, N + M), ``nngp`` the readout
    kernel K̂_0 on the first ``n_kernel`` training points, ``outputs`` f_0 on the train and test points (N + M, k)
    and ``max_lr`` = η_max(Θ̂_0), the largest stable SGD learning rate (``nk.predict.max_learning_rate``)."""

    ntk: torch.Tensor
    nngp: torch.Tensor
    outputs: torch.Tensor
    max_lr: float


def _initial(cfg: WidthScalingConfig, model: nn.Module, x: torch.Tensor, x_test: torch.Tensor, k: int) -> _Initial:
    n = x.shape[0]
    ntk = blocked_ntk(model, torch.cat([x, x_test]), cfg.kernel_block)
    with torch.no_grad():
        outputs = model(torch.cat([x, x_test]))
    nngp = empirical_ntk(model, x[: cfg.n_kernel], params=readout_parameters(model))
    return _Initial(ntk, nngp, outputs, max_learning_rate(ntk[:n, :n], n_outputs=k))


def _one_network(
    cfg: WidthScalingConfig, ctx: RunContext, width: int, repeat: int, x: torch.Tensor, y: torch.Tensor,
    x_test: torch.Tensor, lr: float, record: list[int], init: _Initial,
) -> dict[str, Any]:  # fmt: skip
    """Train one network; its relative changes, and its test RMSE against the linearization at the record steps
    (the linearization's outputs by ``gradient_descent_mse`` with the network's Θ̂_0, module docstring)."""
    nk_ = cfg.n_kernel
    _, lin_test = linearized_outputs(init.ntk, init.outputs, y, lr, record)
    model = _network(cfg, ctx, width, repeat, x, y.shape[1])
    xk = x[:nk_]
    weights0 = [cast(torch.Tensor, m.weight).detach().clone() for _, m in dense_layers(model)]
    history = train_full_batch(
        model,
        x,
        y,
        lr=lr,
        steps=cfg.steps,
        record_steps=record,
        x_eval=x_test,
        on_record=lambda step, m: init.ntk[:nk_, :nk_] if step == 0 else empirical_ntk(m, xk),
        progress=lambda steps: ctx.bar(steps, desc=f"E3 n={width} GD", total=cfg.steps + 1),
    )
    if history.diverged:
        raise FloatingPointError(f"training diverged at width {width} (η = {lr:.3g}); lower lr_fraction.")
    ntk = history.records
    rmse_over_time = [rmse(f, f_lin) for f, f_lin in zip(history.eval_outputs, lin_test, strict=True)]
    return {
        "width": width,
        "repeat": repeat,
        "weights": [
            relative_change(cast(torch.Tensor, m.weight).detach(), w0)
            for (_, m), w0 in zip(dense_layers(model), weights0, strict=True)
        ],
        "ntk": relative_change(ntk[-1], ntk[0]),
        "nngp": relative_change(empirical_ntk(model, xk, params=readout_parameters(model)), init.nngp),
        "ntk_over_time": [relative_change(k, ntk[0]) for k in ntk[1:]],
        "rmse": rmse_over_time[-1],
        "rmse_over_time": rmse_over_time[1:],
        "max_lr": init.max_lr,
        "loss_initial": history.loss[0],
        "loss_final": history.loss[-1],
    }


def _judge(fits: dict[str, SlopeFit], expected: dict[str, float | str]) -> tuple[bool | None, str, dict[str, str]]:
    """The verdict from the slopes (module docstring): (supported, sentence, outcome per quantity)."""
    outcome = {}
    for name, fit in fits.items():
        lo, hi = fit.ci_low - TOLERANCE, fit.ci_high + TOLERANCE
        target = expected[name]
        if isinstance(target, str):  # a kernel or the RMSE: it must fall with width, at the rate of its rule
            too_slow = lo > KERNEL_RANGE[1]
            too_fast = target == KERNEL_EXPECTED and hi < KERNEL_RANGE[0]
            if too_slow or too_fast:
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
        f"[-1, -1/2]; the network-versus-linearization RMSE falls with width (slope {fits['rmse'].format()}), "
        f"consistent with the theorem's n^-1/2 within the ±{TOLERANCE} allowance.",
        outcome,
    )


def _guides(ax: Axes, x: np.ndarray, y0: float) -> None:
    for power, style, label in ((-0.5, ":", r"$\propto n^{-1/2}$"), (-1.0, "--", r"$\propto n^{-1}$")):
        ax.plot(x, y0 * (x / x[0]) ** power, style, color="0.5", lw=1, label=label)


def _width_axis(ax: Axes, widths: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.minorticks_off()
    ax.set_xlabel("width n")


def _plot_series(
    ax: Axes,
    widths: list[int],
    xs: list[int],
    values: list[float],
    mean: list[float],
    fit: SlopeFit,
    color: str,
    label: str,
) -> None:
    """Individual networks (dots), their mean per width (line) and the fitted power law (thick, pale)."""
    w = np.asarray(widths, dtype=float)
    ax.plot(xs, values, ".", color=color, alpha=0.35, ms=5)
    ax.plot(w, mean, "o-", color=color, label=f"{label}: slope {fit.format()}")
    ax.plot(w, fit.predict(w), color=color, alpha=0.3, lw=4)


def _figures(
    cfg: WidthScalingConfig,
    widths: list[int],
    layer_names: list[str],
    series: dict[str, list[float]],
    xs: list[int],
    per_width: dict[str, list[float]],
    fits: dict[str, SlopeFit],
    runs: list[dict[str, Any]],
    record: list[int],
) -> list[Figure]:
    from matplotlib import colormaps
    from matplotlib.ticker import FormatStrFormatter, LogLocator

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

        fig, axes = new_figure(ncols=2, panel_size=(4.6, 3.6))
        ax = axes[0]
        _plot_series(ax, widths, xs, series["rmse"], per_width["rmse"], fits["rmse"], "C3", "fit")
        _guides(ax, w, per_width["rmse"][0])
        _width_axis(ax, widths)
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.set_ylabel(r"RMSE$(f_T, f^{lin}_T)$ on test points")
        ax.set_title("Network versus linearization after training")
        ax.legend(loc="lower left")
        ax = axes[1]
        for j, width in enumerate(widths):
            curve = np.mean([r["rmse_over_time"] for r in runs if r["width"] == width], axis=0)
            ax.plot(record[1:], curve, color=cmap(0.9 * j / max(1, len(widths) - 1)), label=f"n = {width}")
        ax.set(xscale="log", yscale="log", xlabel="GD step t", ylabel=r"RMSE$(f_t, f^{lin}_t)$")
        ax.set_title("during training")
        ax.legend(ncol=2)
        figs.append(
            Figure.from_matplotlib(
                "E3-rmse",
                fig,
                f"RMSE between each network's outputs and its linearization's on {cfg.n_test or 'all'} test points "
                f"after {cfg.steps} GD steps against width (left; dots, line and fit as in E3-weights) and during "
                "training for each width (right, mean over networks). The linearization's outputs are the closed form "
                "of nk.predict.gradient_descent_mse with the network's own Θ̂_0 (equal to training nk.linearize). "
                "Paper (Fig. S5): the error decreases with width; the theorem bounds it by O(n^-1/2).",
            )
        )
    return figs


@register("E3", title=TITLE, claim=CLAIM, quick=QUICK, full=FULL)
def width_scaling(cfg: WidthScalingConfig, ctx: RunContext) -> ExperimentResult:
    """Run E3 (module docstring) and return its result with figures E3-weights, E3-kernels and E3-rmse."""
    data, x, y, x_test = ctx.binary_task(cfg)
    record = log_spaced_steps(cfg.steps, cfg.n_times)
    jobs = list(product(cfg.widths, range(cfg.repeats)))
    k = y.shape[1]
    inits = {
        job: _initial(cfg, _network(cfg, ctx, *job, x, k), x, x_test, k)
        for job in ctx.bar(jobs, desc="E3 kernels at init", total=len(jobs))
    }
    lr = cfg.lr_fraction * min(i.max_lr for i in inits.values())
    runs = [
        _one_network(cfg, ctx, width, rep, x, y, x_test, lr, record, inits[width, rep])
        for width, rep in ctx.bar(jobs, desc="E3 networks", total=len(jobs))
    ]

    n_layers = cfg.depth + 1
    layer_names = _layer_names(n_layers)
    xs = [r["width"] for r in runs]
    series = {name: [r["weights"][i] for r in runs] for i, name in enumerate(layer_names)}
    series.update(ntk=[r["ntk"] for r in runs], nngp=[r["nngp"] for r in runs], rmse=[r["rmse"] for r in runs])
    fits = {name: fit_loglog_slope(xs, vals) for name, vals in series.items()}
    expected: dict[str, float | str] = {n: _expected_layer_slope(i, n_layers) for i, n in enumerate(layer_names)}
    expected.update(ntk=KERNEL_EXPECTED, nngp=KERNEL_EXPECTED, rmse=RMSE_EXPECTED)
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
        + f"; Θ̂ {fits['ntk'].format()}, K̂ {fits['nngp'].format()}; RMSE(network, linearization) on "
        f"{x_test.shape[0]} test points {fits['rmse'].format()} (from {per_width['rmse'][0]:.3g} at n = {widths[0]} "
        f"to {per_width['rmse'][-1]:.3g} at n = {widths[-1]})."
    )
    slope_rows = [
        [KERNEL_NAMES.get(name, name), expected[name], f.slope, f.ci_low, f.ci_high, f.r2, outcome[name]]
        for name, f in fits.items()
    ]
    width_rows = [
        [
            w,
            *(per_width[n][j] for n in layer_names),
            per_width["ntk"][j],
            per_width["nngp"][j],
            per_width["rmse"][j],
            float(np.mean(losses[w])),
        ]
        for j, w in enumerate(widths)
    ]
    tables = [
        Table(
            "Fitted slopes",
            ["quantity", "expected", "slope", "CI low", "CI high", "R²", "outcome"],
            slope_rows,
            f"Least-squares slope of log(relative change or RMSE) on log(width), 95% confidence interval; the "
            f"outcome allows ±{TOLERANCE} for finite-width curvature (rule in the text).",
        ),
        Table(
            "Relative changes and linearization error per width",
            ["width", *layer_names, "Θ̂", "K̂", "RMSE(f, f_lin)", "final train MSE"],
            width_rows,
            f"Mean over {cfg.repeats} network(s) per width; one learning rate for all, η = {lr:.4g} = "
            f"{cfg.lr_fraction:g} × the smallest η_max(Θ̂_0) = N/λ_max(Θ̂_0) of the networks (N = {x.shape[0]}).",
        ),
    ]
    metrics = {
        "learning_rate": lr,
        "min_max_lr": min(i.max_lr for i in inits.values()),
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
        measured=measured,
        supported=supported,
        verdict=verdict,
        metrics=metrics,
        tables=tables,
        figures=_figures(cfg, widths, layer_names, series, xs, per_width, fits, runs, record),
        config=run_config(cfg, data),
    )
