"""E5 (learning rate): where a wide network stops following its linearization, as the learning rate grows.

Paper: Lee et al. 2019, §2.4 and Theorem 2.1 (theory.md §2.7, §5.1). For a learning rate below
η_critical = 2/(λ_min + λ_max) (λ the eigenvalues of the NTK on the training set) a wide network stays
O(n^{-1/2}) close to its linearization during gradient descent; the linearized model itself converges iff
η < η_max = 2/λ_max (exactly: its residual along an eigenvector of Θ̂_0 is multiplied by 1 − cλ at each step).
Above η_max the linearization diverges and the network cannot follow it: it diverges too, or (Lewkowycz et al.
2020, the "catapult" phase, up to a few η_max for ReLU) its loss spikes, its kernel's λ_max falls until η is
stable for it, and it converges far from the linearization.

Here: one ReLU network in the NTK parameterization (σ_w² = 2, σ_b² = 0.1), the run's data set as a two-class task
with ±1 targets, ``torch.optim.SGD`` (full batch) on ``MSELoss(reduction="mean")``. From its Θ̂_0 on the
training set: λ_min, λ_max, η_max = ``nk.predict.max_learning_rate`` = N/λ_max and η_critical =
``nk.predict.critical_learning_rate`` = N/(λ_min + λ_max) (the paper's 2/λ_max and 2/(λ_min + λ_max) in the
loop's units). For each η of the grid (``ratios`` × η_max, plus η_critical) the same initial network is trained
for ``steps`` steps, and its linearization's outputs come from ``nk.predict.gradient_descent_mse`` with Θ̂_0 at the
same steps (exact for ``nk.linearize`` trained by the same loop; theory.md §2.3). Per η: final and peak train loss
of the network, final train loss of the linearization, RMSE between the two on ``n_test`` test points (largest
over the recorded steps), λ_max(Θ̂_T) and the relative change ‖Θ̂_T − Θ̂_0‖_F/‖Θ̂_0‖_F at the end.

Outcomes: a run *diverged* when its loss became non-finite or ended at or above the initial loss, *converged*
when it ended below ``converged_fraction`` × the initial loss, and *stalled* otherwise. The network *tracks* its
linearization when the largest RMSE over time between the two on the test points is at most ``rmse_threshold``
(10%) of the RMS distance the linearization's test outputs travelled from f_0 (the linear model accounts for at
least 90% of the change of the outputs; for ±1 targets that is about twice neural-tangents' rule of thumb, an RMSE
of 0.05 at width 512).

The edge of the stable range. With λ_min ≪ λ_max (typical for real data: 1/200 here), η_critical lies within a
fraction λ_min/λ_max of η_max. There the linearization's top eigenmode contracts by only q = |1 − 2η/η_max| per
step, so a small drift of the network's λ_max accumulates over ~1/(1 − q) steps into a deviation that grows like
1/(1 − q)²; Theorem 2.1's O(n^{-1/2}) bound is asymptotic, and its constant grows there without limit. So the
tracking claim is judged on the rates below both η_critical and ``(1 − edge_band)`` η_max (q ≤ 0.8 for the default
0.1); the rates in the band up to η_critical are measured and reported, and decide only between "supported" and
"inconclusive".

Verdict rule:

1. the linearization diverges at every η > η_max and at no η < η_max (theory: exactly);
2. the network tracks its linearization at every η below η_critical and (1 − edge_band) η_max;
3. at every η > η_max the network leaves the linear regime: it diverges or stalls, or it converges with
   η < η_max(Θ̂_T), i.e. only after its kernel's largest eigenvalue fell below the value at which η is stable
   (the catapult).

Any failure of 1-3 is "not supported". Otherwise the verdict is "supported" when the network also tracks at the
band's rates up to η_critical, and "inconclusive" when it does not (the width does not resolve the edge). A grid
without a judged rate or without a rate above η_max is "inconclusive".
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..empirical import empirical_ntk
from ..errors import NumericalWarning
from ..predict import critical_learning_rate, max_learning_rate
from ..report import ExperimentResult, Figure, Table, new_figure, plot_style
from .context import RunContext, run_config
from .kernels import linearized_outputs
from .models import config_mlp
from .registry import register
from .stats import relative_change, rmse
from .training import log_spaced_steps, train_full_batch

__all__ = ["FULL", "QUICK", "LearningRateConfig", "learning_rate_sweep"]

TITLE = "Learning rate: linear regime below η_critical, departure above η_max"
CLAIM = (
    "Below η_critical = 2/(λ_min + λ_max) of the NTK a wide network trained by gradient descent tracks its "
    "linearization; the linearized model converges iff η < η_max = 2/λ_max; above η_max the network cannot follow "
    "it and diverges or, in the catapult phase, converges after its kernel's λ_max has fallen (Lee et al. 2019, "
    "§2.4 and Theorem 2.1; Lewkowycz et al. 2020)."
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@dataclass(frozen=True)
class LearningRateConfig:
    """E5's settings: a ReLU network of ``depth`` hidden layers of ``width``, ``n_train`` training and ``n_test``
    test points (``None``: the whole test split), learning rates ``ratios`` × η_max (η_critical is added), ``steps``
    of full-batch GD with outputs recorded at ``n_times`` log-spaced steps, and the verdict's thresholds."""

    width: int = 512
    depth: int = 2
    n_train: int = 32
    n_test: int | None = 64
    steps: int = 256
    ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 1.05, 1.5, 3.0, 6.0)
    n_times: int = 12
    W_std: float = math.sqrt(2.0)
    b_std: float = math.sqrt(0.1)
    rmse_threshold: float = 0.1
    edge_band: float = 0.1
    converged_fraction: float = 0.1
    dtype: str = "float64"


QUICK = LearningRateConfig()
FULL = LearningRateConfig(
    width=1024,
    n_train=64,
    n_test=None,
    steps=700,
    ratios=(0.1, 0.25, 0.5, 0.75, 0.9, 0.98, 1.02, 1.1, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0),
    n_times=16,
)


def _outcome(loss_curve: list[float], fraction: float) -> str:
    """'diverged', 'converged' or 'stalled' for a loss curve (module docstring)."""
    final, initial = loss_curve[-1], loss_curve[0]
    if not all(math.isfinite(v) for v in loss_curve) or final >= initial:
        return "diverged"
    return "converged" if final <= fraction * initial else "stalled"


def _linearization(
    ntk0: torch.Tensor, f0: torch.Tensor, y: torch.Tensor, lr: float, steps: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) outputs of the linearization after each of ``steps``, (T, N, k) and (T, M, k), from the closed
    form with Θ̂_0 on train and test points (N + M, N + M); above η_max they grow without bound (and may overflow)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumericalWarning)  # "gradient descent diverges": that is what E5 measures
        return linearized_outputs(ntk0, f0, y, lr, steps)


def _one_rate(
    cfg: LearningRateConfig,
    ctx: RunContext,
    lr: float,
    x: torch.Tensor,
    y: torch.Tensor,
    x_test: torch.Tensor,
    ntk0: torch.Tensor,
    f0: torch.Tensor,
) -> dict[str, Any]:
    """Train the network at ``lr`` and compare it with its linearization (module docstring)."""
    model = config_mlp(cfg, x, y.shape[1], ctx.derive_seed("E5"))
    record = log_spaced_steps(cfg.steps, cfg.n_times)
    history = train_full_batch(model, x, y, lr=lr, steps=cfg.steps, record_steps=record, x_eval=x_test)
    lin_train, lin_test = _linearization(ntk0, f0, y, lr, record)
    lin_loss = [float(((f - y) ** 2).mean()) for f in lin_train]
    n = x.shape[0]
    moved = rmse(lin_test[-1], f0[n:]) if torch.isfinite(lin_test[-1]).all() else math.inf
    gap = [
        rmse(f, g) if torch.isfinite(g).all() else math.inf for f, g in zip(history.eval_outputs, lin_test, strict=True)
    ]
    run: dict[str, Any] = {
        "lr": lr,
        "loss_curve": history.loss_curve,
        "loss_initial": history.loss_curve[0],
        "loss_final": history.loss_curve[-1],
        "loss_peak": max(history.loss_curve),
        "outcome": _outcome(history.loss_curve, cfg.converged_fraction),
        "linear_loss": lin_loss,
        "linear_loss_final": lin_loss[-1],
        "linear_diverged": _outcome(lin_loss, cfg.converged_fraction) == "diverged",
        "rmse_over_time": gap,
        "rmse_sup": max(gap),
        "rmse_relative": max(gap) / moved if math.isfinite(moved) and moved > 0 else math.inf,
        "record_steps": history.steps,
        "lambda_max_final": math.nan,
        "max_lr_final": math.nan,
        "ntk_change": math.nan,
    }
    if math.isfinite(run["loss_final"]):
        ntk_t = empirical_ntk(model, x)
        run["lambda_max_final"] = float(torch.linalg.eigvalsh(ntk_t)[-1])
        run["max_lr_final"] = max_learning_rate(ntk_t, n_outputs=y.shape[1])
        run["ntk_change"] = relative_change(ntk_t, ntk0[:n, :n])
    return run


def _judge(
    runs: list[dict[str, Any]], lr_max: float, lr_crit: float, cfg: LearningRateConfig
) -> tuple[bool | None, str]:
    """The verdict from the runs (module docstring, rules 1-3 and the edge band): (supported, sentence)."""
    judged, edge, above = _groups(runs, lr_max, lr_crit, cfg.edge_band)
    if not judged or not above:
        return None, "Inconclusive: the grid needs learning rates well below η_critical and above η_max."
    threshold = cfg.rmse_threshold
    wrong_linear = [r["ratio"] for r in runs if r["linear_diverged"] != (r["lr"] > lr_max)]
    far = [r for r in judged if not r["rmse_relative"] <= threshold]
    stayed = [r["ratio"] for r in above if r["outcome"] == "converged" and not r["lr"] < r["max_lr_final"]]
    problems = []
    if wrong_linear:
        problems.append(
            "the linearization's divergence does not follow η > η_max at η/η_max = "
            + ", ".join(f"{v:.3g}" for v in wrong_linear)
        )
    if far:
        problems.append(
            f"the network leaves its linearization (relative RMSE above {threshold:g}) at "
            + ", ".join(f"η/η_max = {r['ratio']:.3g} ({r['rmse_relative']:.3g})" for r in far)
        )
    if stayed:
        problems.append(
            "above η_max the network converged without η falling below η_max(Θ̂_T) at η/η_max = "
            + ", ".join(f"{v:.3g}" for v in stayed)
        )
    if problems:
        return False, "Not supported: " + "; ".join(problems) + "."
    worst = max(r["rmse_relative"] for r in judged)
    caught = sum(r["outcome"] == "converged" for r in above)
    text = (
        f"the linearization diverges exactly at the {len(above)} learning rates above η_max; up to "
        f"{max(r['ratio'] for r in judged):.3g} η_max the network stays within {worst:.3g} (relative RMSE, threshold "
        f"{threshold:g}) of its linearization; above η_max it diverged or stalled at {len(above) - caught} rate(s) "
        f"and converged at {caught} only after its kernel's λ_max fell until η < η_max(Θ̂_T) (catapult)"
    )
    edge_far = [r for r in edge if not r["rmse_relative"] <= threshold]
    if edge_far:
        detail = ", ".join(f"{r['ratio']:.3g} η_max ({r['rmse_relative']:.3g})" for r in edge_far)
        return None, (
            f"Inconclusive: {text}; but within {cfg.edge_band:g} η_max of η_max, below η_critical, it does not track "
            f"it at this width ({detail}): there the top eigenmode barely contracts and the asymptotic bound needs "
            "more width."
        )
    edge_note = f"; it also tracks at the {len(edge)} rate(s) up to η_critical near η_max" if edge else ""
    return True, f"Supported: {text}{edge_note}."


def _groups(
    runs: list[dict[str, Any]], lr_max: float, lr_crit: float, band: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(judged, edge, above): runs below η_critical and (1 − band) η_max; in the band up to η_critical; above η_max."""
    judged = [r for r in runs if r["lr"] <= lr_crit and r["lr"] < (1 - band) * lr_max]
    edge = [r for r in runs if (1 - band) * lr_max <= r["lr"] <= lr_crit]
    return judged, edge, [r for r in runs if r["lr"] > lr_max]


def _measured(
    runs: list[dict[str, Any]], lam_min: float, lam_max: float, lr_max: float, lr_crit: float, steps: int
) -> str:
    below = [r for r in runs if r["lr"] <= lr_crit]
    above = [r for r in runs if r["lr"] > lr_max]
    lin_div = [f"{r['ratio']:.3g}" for r in runs if r["linear_diverged"]]
    text = (
        f"λ_min = {lam_min:.4g}, λ_max = {lam_max:.4g}, η_max = {lr_max:.4g}, η_critical = {lr_crit:.4g} "
        f"({lr_crit / lr_max:.4g} η_max). {len(runs)} learning rates, {runs[0]['ratio']:.3g}–{runs[-1]['ratio']:.3g} "
        f"η_max, {steps} steps each. The linearization diverged at η/η_max = {', '.join(lin_div) or 'none'}."
    )
    if below:
        gaps = ", ".join(f"{r['ratio']:.3g}: {r['rmse_relative']:.3g}" for r in below)
        text += f" Relative RMSE(network, linearization) up to η_critical (η/η_max: value): {gaps}."
    if above:
        outcomes = ", ".join(f"{r['ratio']:.3g}: {r['outcome']}" for r in above)
        peak = max(r["loss_peak"] / r["loss_initial"] for r in above)
        text += f" Network above η_max ({outcomes}); peak loss up to {peak:.3g}× the initial loss."
    return text


def _rate_axis(ax: Axes, ratios: np.ndarray, crit: float, band: float, *, labels: bool = False) -> None:
    """Log η/η_max axis with η_critical and η_max marked, the edge band shaded grey, the divergent range red
    (named in the legend when ``labels``)."""
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullLocator

    ax.set_xscale("log")
    lo, hi = ratios.min() / 1.25, ratios.max() * 1.25
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(FixedLocator([t for t in (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0) if lo <= t <= hi]))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_locator(NullLocator())
    names = (
        ("edge band (not judged)", "η > η_max: linearization diverges", f"η_critical = {crit:.3g} η_max", "η_max")
        if labels
        else (None,) * 4
    )
    if crit >= 1 - band:
        ax.axvspan(1 - band, crit, color="0.85", lw=0, label=names[0])
    ax.axvspan(1.0, hi, color="C3", alpha=0.07, lw=0, label=names[1])
    ax.axvline(crit, color="C2", ls="--", lw=1, label=names[2])
    ax.axvline(1.0, color="C3", ls=":", lw=1.2, label=names[3])
    ax.set_xlabel("η / η_max")


def _legend_below(ax: Axes) -> None:
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=7, frameon=False)


def _figures(cfg: LearningRateConfig, runs: list[dict[str, Any]], lr_max: float, lr_crit: float) -> list[Figure]:
    from matplotlib import colormaps
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ratios = np.array([r["ratio"] for r in runs])
    crit = lr_crit / lr_max
    ceiling = 1e3 * max(r["loss_initial"] for r in runs)  # larger (or non-finite) losses are drawn here, as ▲
    figs = []
    with plot_style():
        fig, axes = new_figure(ncols=3, panel_size=(4.0, 4.3))
        ax = axes[0]
        for key, label, marker, color, face in (
            ("loss_final", "network", "o", "C0", None),
            ("linear_loss_final", "linearization", "s", "C1", "none"),
        ):
            vals = np.array([r[key] for r in runs], dtype=float)
            clipped = ~np.isfinite(vals) | (vals > ceiling)
            ax.plot(ratios[~clipped], vals[~clipped], marker, color=color, mfc=face, label=label)
            ax.plot(ratios[clipped], np.full(clipped.sum(), ceiling), "^", color=color, mfc=face)
        ax.axhline(runs[0]["loss_initial"], color="0.5", lw=0.8, label="initial loss")
        ax.set(yscale="log", ylabel="train loss (MSE)", title=f"Final train loss after {cfg.steps} steps")
        _rate_axis(ax, ratios, crit, cfg.edge_band, labels=True)
        _legend_below(ax)

        ax = axes[1]
        stable = ratios <= 1.0
        rel = np.array([r["rmse_relative"] for r in runs], dtype=float)
        ax.plot(ratios[stable], rel[stable], "o-", color="C4", label="network vs linearization")
        ax.axhline(cfg.rmse_threshold, color="0.4", lw=1, ls="-.", label=f"threshold {cfg.rmse_threshold:g}")
        ax.set(yscale="log", ylabel=r"$\sup_t$ RMSE$(f_t, f^{lin}_t)$ / RMS$(f^{lin}_T - f_0)$")
        ax.set_title("Network vs linearization (test points)")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        _rate_axis(ax, ratios, crit, cfg.edge_band)
        _legend_below(ax)

        ax = axes[2]
        lam = np.array([r["lambda_max_final"] for r in runs], dtype=float) / runs[0]["lambda_max_initial"]
        change = np.array([r["ntk_change"] for r in runs], dtype=float)
        ax.plot(ratios, lam, "o-", color="C0", label=r"$\lambda_{max}(\hat\Theta_T) / \lambda_{max}(\hat\Theta_0)$")
        ax.plot(
            ratios, change, "s-", color="C1", mfc="none", label=r"$\|\hat\Theta_T - \hat\Theta_0\| / \|\hat\Theta_0\|$"
        )
        grid = np.geomspace(1.0, ratios.max() * 1.25, 50)
        ax.plot(grid, 1 / grid, color="0.3", lw=1, label="stability edge η_max/η")
        ax.set(yscale="log", title="Kernel at the end of training")
        _rate_axis(ax, ratios, crit, cfg.edge_band)
        _legend_below(ax)
        figs.append(
            Figure.from_matplotlib(
                "E5-sweep",
                fig,
                f"Full-batch GD on MSE of one ReLU network (width {cfg.width}, depth {cfg.depth}) and of its "
                "linearization (closed form with Θ̂_0) at learning rates around η_max = N/λ_max(Θ̂_0) (dotted) and "
                "η_critical = N/(λ_min + λ_max) (dashed). Left: final train loss (▲: diverged, drawn at the top). "
                "Middle: largest RMSE over time between the two on test points, relative to how far the "
                "linearization's outputs moved, where the linearization converges. Right: λ_max and relative "
                "change of Θ̂ at the end. Theory: the linearization converges iff η < η_max; below η_critical the "
                "network tracks it (Theorem 2.1, asymptotically in width; grey: the edge band, where this width "
                "cannot resolve it); above η_max the network diverges, or its λ_max falls below the stability edge "
                "η_max/η (catapult) and it converges far from the linearization.",
            )
        )

        fig, (ax,) = new_figure(panel_size=(7.6, 3.8))
        below, above = ratios[ratios <= 1], ratios[ratios > 1]
        for r, ratio in zip(runs, ratios, strict=True):  # blues below η_max, reds above, darker further from it
            group, cmap = (below, colormaps["Blues_r"]) if ratio <= 1 else (above, colormaps["Reds"])
            shade = cmap(0.15 + 0.65 * float(np.searchsorted(group, ratio)) / max(len(group) - 1, 1))
            curve = np.array(r["loss_curve"], dtype=float)
            ax.plot(np.arange(1, len(curve) + 1), np.clip(curve, None, ceiling), color=shade, label=f"{ratio:.3g}")
            if not r["linear_diverged"]:
                ax.plot(np.asarray(r["record_steps"]) + 1, r["linear_loss"], "o", color=shade, ms=3, mfc="none")
        ax.set(xscale="log", yscale="log", xlabel="GD step t + 1", ylabel="train loss (MSE)")
        ax.set_title("Network (lines) and linearization (circles, where it converges) during training")
        ax.legend(
            title="η / η_max", loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, ncol=1 + len(runs) // 13
        )
        figs.append(
            Figure.from_matplotlib(
                "E5-curves",
                fig,
                "Train loss of the network at every step for each learning rate (blues: below η_max, reds: above, "
                "darker further from η_max; losses above "
                f"{ceiling:.3g} are drawn at that value) and of its linearization at the recorded steps where it "
                "converges (η < η_max). Above η_max the network's loss first grows (the catapult spike) and then "
                "falls, or it diverges.",
            )
        )
    return figs


@register("E5", title=TITLE, claim=CLAIM, quick=QUICK, full=FULL)
def learning_rate_sweep(cfg: LearningRateConfig, ctx: RunContext) -> ExperimentResult:
    """Run E5 (module docstring) and return its result with figures E5-sweep and E5-curves."""
    data, x, y, x_test = ctx.binary_task(cfg)
    n, k = x.shape[0], y.shape[1]
    model = config_mlp(cfg, x, k, ctx.derive_seed("E5"))
    x_all = torch.cat([x, x_test])
    ntk0 = empirical_ntk(model, x_all)
    with torch.no_grad():
        f0 = model(x_all)
    eig = torch.linalg.eigvalsh(ntk0[:n, :n])
    lam_min, lam_max = float(eig[0]), float(eig[-1])
    lr_max = max_learning_rate(ntk0[:n, :n], n_outputs=k)
    lr_crit = critical_learning_rate(ntk0[:n, :n], n_outputs=k)
    rates = sorted({lr_crit, *(r * lr_max for r in cfg.ratios)})
    runs = [
        _one_rate(cfg, ctx, lr, x, y, x_test, ntk0, f0)
        for lr in ctx.bar(rates, desc="E5 learning rates", total=len(rates))
    ]
    for r in runs:
        r["ratio"] = r["lr"] / lr_max
        r["lambda_max_initial"] = lam_max
    supported, verdict = _judge(runs, lr_max, lr_crit, cfg)

    rows = [
        [r["ratio"], r["lr"], r["outcome"], r["loss_final"], r["loss_peak"] / r["loss_initial"],
         "diverged" if r["linear_diverged"] else "converged", r["linear_loss_final"], r["rmse_sup"],
         r["rmse_relative"], r["lambda_max_final"] / lam_max, r["ntk_change"]]
        for r in runs
    ]  # fmt: skip
    measured = _measured(runs, lam_min, lam_max, lr_max, lr_crit, cfg.steps)
    header = ["η/η_max", "η", "network", "final loss", "peak/initial loss", "linearization", "lin. final loss",
              "sup RMSE", "relative RMSE", "λ_max(Θ̂_T)/λ_max(Θ̂_0)", "Θ̂ change"]  # fmt: skip
    caption = (
        f"Network: outcome of {cfg.steps} full-batch GD steps (converged: final loss ≤ {cfg.converged_fraction:g} "
        "× initial; diverged: non-finite or final ≥ initial; stalled otherwise). RMSE between network and "
        f"linearization on {x_test.shape[0]} test points, largest over {len(runs[0]['record_steps'])} recorded "
        "steps; relative: divided by the RMS change of the linearization's test outputs. Θ̂ change: "
        "‖Θ̂_T − Θ̂_0‖_F / ‖Θ̂_0‖_F on the training set."
    )
    tables = [Table("Runs by learning rate", header, rows, caption)]
    metrics = {
        "lambda_min": lam_min,
        "lambda_max": lam_max,
        "max_learning_rate": lr_max,
        "critical_learning_rate": lr_crit,
        "critical_over_max": lr_crit / lr_max,
        "runs": runs,
    }
    return ExperimentResult(
        measured=measured,
        supported=supported,
        verdict=verdict,
        metrics=metrics,
        tables=tables,
        figures=_figures(cfg, runs, lr_max, lr_crit),
        config=run_config(cfg, data),
    )
