"""E7 (parameterizations): the NTK and the standard parameterization, trained with η_std = η_NTK / n.

Paper: Lee et al. 2019, SM F (eqs. S36-S37), Figs. S7 and S8 (theory.md §1.2). The standard parameterization (SP)
trains W = (σ_w/√n_in) ω and b = σ_b β directly; the NTK parameterization trains ω and β. Both compute the same
function at initialization. One gradient step on ω with rate η moves W by η σ_w²/n_in times the step on W, and one
on β moves b by η σ_b² times it; hence (S37) gradient descent in the SP with η_std = η_0/n is *exactly* gradient
descent in the NTK parameterization with per-layer rates η_0 n_in / (n σ_w²) for weights and η_0 / (n σ_b²) for
biases. As n grows those rates go to 0 for the input layer (n_in = n_0 fixed) and for the biases, and to η_0/σ_w² for
the other weights; so the SP with η_0/n approaches the NTK network whose input layer and biases are frozen and whose
other weights train at η_0/σ_w² (the normalized SP NTK of theory.md §4.4, without the input and bias terms). It does
*not* approach the NTK network trained at the uniform rate η_0: that one keeps the input-layer and bias
contributions to its kernel, which are O(1) at every width, and trains its hidden layers σ_w² times faster; the two
trajectories differ at O(1) for all n (they have different infinite-width kernels). What the paper shows is that
with η_std = η_NTK/n both train on the same learning-rate scale whatever the width and reach similar accuracy
(Fig. S7), and that the SP network also follows its linearization (Fig. S8).

Here, dynamics: for each width n in ``widths``, one ReLU network in the NTK parameterization (σ_w² = 2,
σ_b² = 0.1) and its SP copy (:func:`~ntkit.experiments.models.standard_from_ntk`: the same weights, the same
function) trained by full-batch GD on MSE (two-class task, ±1 targets) for ``steps`` steps: (a) NTK at η, (b) SP at
η/n, (c) NTK with S37's per-layer rates (η_0 = η), (d) NTK with the n → ∞ limit of those rates (input layer and
biases frozen, other weights at η/σ_w²). η = ``lr_fraction`` × the smallest η_max(Θ̂_0) of the NTK networks, one
rate for all widths. Recorded: test outputs at log-spaced steps and the train loss at every step.

Accuracy (Fig. S7): for each rate η in ``sweep_lrs``, the NTK network at η and its SP copy at η/n (width
``sweep_width``) trained by full-batch GD on cross-entropy on ``sweep_n_train`` points of the 10-class task for
``sweep_steps`` steps; test accuracy against the normalized rate η = n·η_std.

Verdict rule; all must hold for "supported", else "not supported":

1. exactness (S37): at every width the SP and the NTK network with S37's rates give the same test outputs up to
   ``exact_tol`` (1e-10) relative to the largest output at every recorded step. float64 round-off stays near
   1e-14 over these runs; a wrong rate changes the outputs at O(η) ≈ 1e-2;
2. the SP approaches its n → ∞ NTK description: the RMSE on test points between (b) and (d) after training falls
   with width (95% interval of the log-log slope below 0; S37 predicts O(1/n));
3. accuracy (Fig. S7): the best test accuracies over the sweep of the two parameterizations differ by at most
   ``accuracy_tol`` (0.03: the standard error of an accuracy near 0.9 on the 449 digits test points is 1.4
   points, and the two networks' errors are not the same), and the largest rate at which each trains (final train
   loss below ½ log C, half the cross-entropy of a uniform guess over the C classes) is the same grid point or a
   neighbouring one: the same learning-rate scale, up to the grid's factor (4 by default). The standard network's
   limit is expected somewhat higher: its kernel lacks the input-layer and bias terms and has its hidden terms
   divided by σ_w² (theory.md §4.4), so its largest eigenvalue is smaller.

The RMSE between (a) and (b) is measured and shown too; it is expected not to vanish with width (see above), and
the measured slope is reported, not judged.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from ..empirical import empirical_ntk
from ..errors import InvalidArgumentError
from ..nn.linear import Linear
from ..predict import max_learning_rate
from ..report import ExperimentResult, Figure, Table, new_figure, plot_style
from .context import RunContext, run_config
from .models import config_mlp, dense_layers, standard_from_ntk
from .registry import register
from .stats import SlopeFit, accuracy, fit_loglog_slope, rmse
from .training import log_spaced_steps, train_full_batch

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["FULL", "QUICK", "ParameterizationConfig", "limit_rates", "parameterizations", "s37_rates"]

TITLE = "NTK versus standard parameterization"
CLAIM = (
    "With η_std = η_NTK / n the standard parameterization trains on the same learning-rate scale as the NTK "
    "parameterization at every width and reaches similar accuracy (Fig. S7); its gradient descent is exactly the "
    "NTK parameterization's with per-layer rates (eq. S37), whose input-layer and bias rates vanish as 1/n "
    "(Lee et al. 2019, SM F)."
)
RUNS = ("ntk", "standard", "s37", "limit")
RUN_NAMES = {
    "ntk": "NTK, η",
    "standard": "standard, η/n",
    "s37": "NTK, S37 per-layer rates",
    "limit": "NTK, n→∞ limit of S37 rates",
}


@dataclass(frozen=True)
class ParameterizationConfig:
    """E7's settings: dynamics at ``widths`` (``depth`` hidden layers, ``n_train`` / ``n_test`` points, ``steps``
    of GD, outputs recorded at ``n_times`` log-spaced steps, η = ``lr_fraction`` × the smallest η_max); the
    accuracy sweep (``sweep_*``); the verdict's tolerances."""

    widths: tuple[int, ...] = (64, 128, 256, 512)
    depth: int = 2
    n_train: int = 32
    n_test: int | None = 64
    steps: int = 100
    n_times: int = 10
    lr_fraction: float = 0.5
    sweep_width: int = 256
    sweep_n_train: int = 128
    sweep_steps: int = 150
    sweep_lrs: tuple[float, ...] = (1.0, 4.0, 16.0, 64.0, 256.0)
    W_std: float = math.sqrt(2.0)
    b_std: float = math.sqrt(0.1)
    exact_tol: float = 1e-10
    accuracy_tol: float = 0.03
    dtype: str = "float64"


QUICK = ParameterizationConfig()
FULL = ParameterizationConfig(
    widths=(64, 128, 256, 512, 1024, 2048), n_train=64, n_test=None, steps=300, n_times=14, sweep_width=512,
    sweep_n_train=256, sweep_steps=300, sweep_lrs=(0.25, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0),
)  # fmt: skip


def s37_rates(model: nn.Module, lr0: float, n_max: int) -> dict[str, float]:
    """SM eq. S37: the per-parameter learning rates under which the NTK-parameterized ``model`` trains exactly like
    its standard-parameterization copy at η_std = ``lr0`` / ``n_max``: η_0 n_in / (n_max σ_w²) for each layer's
    weight, η_0 / (n_max σ_b²) for its bias."""
    rates: dict[str, float] = {}
    for name, module in dense_layers(model):
        layer = cast(Linear, module)  # the experiment networks are made of ntkit.nn.Linear layers
        rates[f"{name}.weight"] = lr0 * layer.in_features / (n_max * float(layer.W_std) ** 2)
        if layer.bias is not None and layer.b_std is not None:
            rates[f"{name}.bias"] = lr0 / (n_max * float(layer.b_std) ** 2)
    return rates


def limit_rates(model: nn.Module, lr0: float) -> dict[str, float]:
    """The n_max → ∞ limit of :func:`s37_rates` at a fixed input dimension: 0 for the first layer's weight and for
    every bias, η_0 / σ_w² for the other weights."""
    rates: dict[str, float] = {}
    for i, (name, module) in enumerate(dense_layers(model)):
        layer = cast(Linear, module)
        rates[f"{name}.weight"] = 0.0 if i == 0 else lr0 / float(layer.W_std) ** 2
        if layer.bias is not None:
            rates[f"{name}.bias"] = 0.0
    return rates


def _network(
    cfg: ParameterizationConfig, ctx: RunContext, width: int, x: torch.Tensor, k: int, *parts: object
) -> nn.Sequential:
    return config_mlp(cfg, x, k, ctx.derive_seed("E7", width, *parts), width=width)


def _dynamics(
    cfg: ParameterizationConfig,
    width: int,
    ntk_net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_test: torch.Tensor,
    lr: float,
) -> dict[str, Any]:
    """The four trainings (a)-(d) of one width (module docstring), from the same initial function."""
    record = log_spaced_steps(cfg.steps, cfg.n_times)
    setups = {
        "ntk": (ntk_net, lr, None),
        "standard": (standard_from_ntk(ntk_net), lr / width, None),
        "s37": (ntk_net, lr, s37_rates(ntk_net, lr, width)),
        "limit": (ntk_net, lr, limit_rates(ntk_net, lr)),
    }
    hist = {}
    for name, (net, rate, per_param) in setups.items():
        model = net if name == "standard" else copy.deepcopy(net)
        hist[name] = train_full_batch(
            model, x, y, lr=rate, steps=cfg.steps, record_steps=record, x_eval=x_test, param_lr=per_param
        )
    outputs = {name: torch.stack(h.eval_outputs) for name, h in hist.items()}  # (T, M, 1)
    scale = outputs["standard"].abs().amax(dim=(1, 2))
    return {
        "width": width,
        "steps": record,
        "exact": float(((outputs["standard"] - outputs["s37"]).abs().amax(dim=(1, 2)) / scale).max()),
        "rmse_plain": rmse(outputs["ntk"][-1], outputs["standard"][-1]),
        "rmse_limit": rmse(outputs["standard"][-1], outputs["limit"][-1]),
        "rmse_plain_over_time": [rmse(a, b) for a, b in zip(outputs["ntk"], outputs["standard"], strict=True)],
        "rmse_limit_over_time": [rmse(a, b) for a, b in zip(outputs["standard"], outputs["limit"], strict=True)],
        "loss_curves": {name: h.loss_curve for name, h in hist.items()},
        "watch": {name: o[:, :3, 0].tolist() for name, o in outputs.items()},
        "diverged": {name: h.diverged for name, h in hist.items()},
    }


def _sweep(cfg: ParameterizationConfig, ctx: RunContext) -> dict[str, Any]:
    """Fig. S7: test accuracy of both parameterizations against the normalized learning rate."""
    data = ctx.load_data(task="multiclass", n_train=cfg.sweep_n_train, n_test=None, dtype=getattr(torch, cfg.dtype))
    assert data.n_classes is not None  # a "multiclass" task
    ntk_net = _network(cfg, ctx, cfg.sweep_width, data.x_train, data.n_classes, "sweep")
    nets = {"ntk": ntk_net, "standard": standard_from_ntk(ntk_net)}
    out: dict[str, Any] = {"lrs": list(cfg.sweep_lrs), "n_test": data.n_test}
    for name, net in nets.items():
        acc, trained, final = [], [], []
        for lr in ctx.bar(cfg.sweep_lrs, desc=f"E7 sweep {name}", total=len(cfg.sweep_lrs)):
            model = copy.deepcopy(net)
            rate = lr if name == "ntk" else lr / cfg.sweep_width
            h = train_full_batch(
                model, data.x_train, data.y_train, lr=rate, steps=cfg.sweep_steps, record_steps=[cfg.sweep_steps],
                loss="cross_entropy", x_eval=data.x_test,
            )  # fmt: skip
            ok = not h.diverged and h.loss_curve[-1] < 0.5 * math.log(data.n_classes)
            acc.append(accuracy(h.eval_outputs[-1], data.y_test) if not h.diverged else math.nan)
            trained.append(ok)
            final.append(h.loss_curve[-1])
        out[name] = {"test_acc": acc, "trained": trained, "final_loss": final}
    return out


def _judge(
    cfg: ParameterizationConfig, runs: list[dict[str, Any]], fits: dict[str, SlopeFit], sweep: dict[str, Any]
) -> tuple[bool, str, dict[str, Any]]:
    """The verdict (module docstring, rules 1-3): (supported, sentence, the numbers it used)."""
    best = {name: max((a for a, ok in zip(sweep[name]["test_acc"], sweep[name]["trained"], strict=True) if ok),
                      default=math.nan) for name in ("ntk", "standard")}  # fmt: skip
    last = {name: max((i for i, ok in enumerate(sweep[name]["trained"]) if ok), default=-10) for name in best}
    numbers = {
        "exact": max(r["exact"] for r in runs),
        "limit_slope": fits["limit"].slope,
        "limit_ci_high": fits["limit"].ci_high,
        "best_accuracy": best,
        "best_accuracy_diff": abs(best["ntk"] - best["standard"]),
        "largest_trained_lr": {n: cfg.sweep_lrs[i] if i >= 0 else None for n, i in last.items()},
    }
    checks = [
        (numbers["exact"] <= cfg.exact_tol,
         f"standard at η/n equals NTK with S37's rates to {numbers['exact']:.2g} (≤ {cfg.exact_tol:g})"),
        (fits["limit"].ci_high < 0,
         f"its distance to the n→∞ NTK description falls with width, slope {fits['limit'].format()}"),
        (numbers["best_accuracy_diff"] <= cfg.accuracy_tol,
         f"best test accuracies {best['ntk']:.3f} (NTK) and {best['standard']:.3f} (standard) differ by "
         f"{numbers['best_accuracy_diff']:.3f} (≤ {cfg.accuracy_tol:g})"),
        (abs(last["ntk"] - last["standard"]) <= 1 and min(last.values()) >= 0,
         "both train up to the same normalized rate (± one grid step): "
         + ", ".join(f"{n} {v}" for n, v in numbers["largest_trained_lr"].items())),
    ]  # fmt: skip
    failed = [text for ok, text in checks if not ok]
    plain = f" The NTK(η)-vs-standard(η/n) RMSE is not expected to vanish: slope {fits['plain'].format()}."
    if failed:
        return False, "Not supported: " + "; ".join(failed) + "." + plain, numbers
    return True, "Supported: " + "; ".join(text for _, text in checks) + "." + plain, numbers


def _width_axis(ax: Axes, widths: np.ndarray) -> None:
    from matplotlib.ticker import NullLocator

    ax.set(xscale="log", yscale="log", xlabel="width n")
    ax.set_xticks(widths, [str(int(w)) for w in widths])
    ax.xaxis.set_minor_locator(NullLocator())


def _figures(
    cfg: ParameterizationConfig, runs: list[dict[str, Any]], fits: dict[str, SlopeFit], sweep: dict[str, Any]
) -> list[Figure]:
    from matplotlib.ticker import FormatStrFormatter

    widths = np.array([r["width"] for r in runs], dtype=float)
    wide = runs[-1]
    styles = {"ntk": ("C0", "-"), "standard": ("C1", "--"), "s37": ("k", ":"), "limit": ("C2", "-.")}
    figs = []
    with plot_style():
        fig, axes = new_figure(ncols=2, nrows=2, panel_size=(5.0, 3.5))
        steps = np.asarray(wide["steps"]) + 1
        ax = axes[0]
        for name in ("ntk", "standard", "s37"):
            color, style = styles[name]
            traces = np.asarray(wide["watch"][name])  # (T, 3)
            for j in range(traces.shape[1]):
                ax.plot(steps, traces[:, j], style, color=color, label=RUN_NAMES[name] if j == 0 else None)
        ax.set(xscale="log", xlabel="step + 1", ylabel="output f(x)", title=f"Three test outputs, n = {wide['width']}")
        ax.legend(fontsize=7)
        ax = axes[1]
        for name in RUNS:
            color, style = styles[name]
            curve = np.asarray(wide["loss_curves"][name])
            ax.plot(np.arange(1, len(curve) + 1), curve, style, color=color, label=RUN_NAMES[name])
        ax.set(xscale="log", yscale="log", xlabel="step + 1", ylabel="train loss (MSE)", title="Loss curves")
        ax.legend(fontsize=7)
        ax = axes[2]
        for key, color, label in (("plain", "C0", "NTK(η) vs standard(η/n)"),
                                  ("limit", "C2", "standard(η/n) vs n→∞ NTK rates")):  # fmt: skip
            vals = np.array([r[f"rmse_{key}"] for r in runs])
            ax.plot(widths, vals, "o-", color=color, label=f"{label}: slope {fits[key].format()}")
            ax.plot(widths, fits[key].predict(widths), color=color, alpha=0.3, lw=4)
        ax.plot(widths, vals[0] * widths[0] / widths, ":", color="0.5", lw=1, label=r"$\propto n^{-1}$")
        _width_axis(ax, widths)
        ax.set(ylabel="RMSE on test points after training", title="Differences against width")
        ax.legend(fontsize=7, loc="lower left")
        ax = axes[3]
        ax.plot(widths, [max(r["exact"], 1e-17) for r in runs], "s-", color="k", label="standard(η/n) vs S37 rates")
        ax.axhline(cfg.exact_tol, color="C3", ls="-.", lw=1, label=f"tolerance {cfg.exact_tol:g}")
        _width_axis(ax, widths)
        ax.set(ylabel="max |Δf| / max |f| over recorded steps", title="Exactness of eq. S37 (round-off)")
        ax.legend(fontsize=7)
        figs.append(
            Figure.from_matplotlib(
                "E7-dynamics",
                fig,
                f"Full-batch GD on MSE of one ReLU network ({cfg.depth} hidden layers) in the NTK parameterization at "
                "η and of its standard-parameterization copy (same function at initialization) at η/n, with the NTK "
                "network trained at S37's per-layer rates (identical to the standard one) and at their n → ∞ limit "
                f"(input layer and biases frozen). Top: outputs and losses at width {wide['width']}. Bottom left: "
                "RMSE between the trajectories' test outputs after training against width, with fitted slopes "
                "(95% intervals); bottom right: the largest difference between standard(η/n) and NTK with S37 "
                "rates. Theory (SM F): standard(η/n) = NTK with S37 rates exactly, and it approaches the limit "
                "rates as 1/n; NTK at a uniform η keeps O(1) input-layer and bias contributions, so it stays apart.",
            )
        )
        fig, (ax,) = new_figure(panel_size=(5.2, 3.6))
        lrs = np.asarray(sweep["lrs"])
        for name, marker in (("ntk", "o-"), ("standard", "s--")):
            ax.plot(lrs, sweep[name]["test_acc"], marker, color=styles[name][0],
                    label=f"{'NTK, η' if name == 'ntk' else 'standard, η_std = η/n'}")  # fmt: skip
        ax.set(xscale="log", xlabel="normalized learning rate η = n·η_std", ylabel="test accuracy")
        ax.set_xticks(lrs, [f"{v:g}" for v in lrs])
        ax.minorticks_off()
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
        ax.set_title(f"Accuracy after {cfg.sweep_steps} GD steps (cross-entropy), n = {cfg.sweep_width}")
        ax.legend()
        figs.append(
            Figure.from_matplotlib(
                "E7-accuracy",
                fig,
                f"Test accuracy on {sweep['n_test']} test points of the 10-class task after {cfg.sweep_steps} "
                f"full-batch GD steps on cross-entropy ({cfg.sweep_n_train} training points) against the normalized "
                "learning rate, for the NTK parameterization at η and the standard one at η/n (the same initial "
                "function). Paper (Fig. S7): similar accuracy at a similar normalized learning rate.",
            )
        )
    return figs


@register("E7", title=TITLE, claim=CLAIM, quick=QUICK, full=FULL)
def parameterizations(cfg: ParameterizationConfig, ctx: RunContext) -> ExperimentResult:
    """Run E7 (module docstring) and return its result with figures E7-dynamics and E7-accuracy."""
    data, x, y, x_test = ctx.binary_task(cfg)
    if not data.is_classification:
        raise InvalidArgumentError(f"E7's accuracy sweep (Fig. S7) needs a classification data set, not {data.name!r}.")
    k = y.shape[1]
    nets = {w: _network(cfg, ctx, w, x, k) for w in cfg.widths}
    lr = cfg.lr_fraction * min(max_learning_rate(empirical_ntk(net, x), n_outputs=k) for net in nets.values())
    runs = [
        _dynamics(cfg, w, nets[w], x, y, x_test, lr)
        for w in ctx.bar(cfg.widths, desc="E7 widths", total=len(cfg.widths))
    ]
    widths = [r["width"] for r in runs]
    fits = {key: fit_loglog_slope(widths, [r[f"rmse_{key}"] for r in runs]) for key in ("plain", "limit")}
    sweep = _sweep(cfg, ctx)
    supported, verdict, numbers = _judge(cfg, runs, fits, sweep)

    width_rows = [[r["width"], r["rmse_plain"], r["rmse_limit"], r["exact"], *(r["loss_curves"][n][-1] for n in RUNS)]
                  for r in runs]  # fmt: skip
    sweep_rows = [
        [lr_, sweep["ntk"]["test_acc"][i], sweep["standard"]["test_acc"][i], sweep["ntk"]["trained"][i],
         sweep["standard"]["trained"][i]]
        for i, lr_ in enumerate(sweep["lrs"])
    ]  # fmt: skip
    tables = [
        Table(
            "Trajectories per width",
            [
                "width",
                "RMSE NTK(η) vs std(η/n)",
                "RMSE std vs n→∞ rates",
                "std vs S37 (max rel.)",
                *(f"final loss: {RUN_NAMES[n]}" for n in RUNS),
            ],
            width_rows,
            f"Test outputs after {cfg.steps} full-batch GD steps on MSE, η = {lr:.4g} ({cfg.lr_fraction:g} × the "
            "smallest η_max of the NTK networks).",
        ),
        Table(
            "Accuracy against the normalized learning rate",
            ["η = n·η_std", "NTK test acc", "standard test acc", "NTK trained", "standard trained"],
            sweep_rows,
            "Trained: final train loss below half the cross-entropy of a uniform guess, ½ log C.",
        ),
    ]
    measured = (
        f"Widths {widths[0]}–{widths[-1]}, η = {lr:.4g}: standard(η/n) vs NTK with S37 rates {numbers['exact']:.2g} "
        f"(max relative); RMSE standard(η/n) vs n→∞ rates {runs[0]['rmse_limit']:.3g} → {runs[-1]['rmse_limit']:.3g} "
        f"(slope {fits['limit'].format()}); RMSE NTK(η) vs standard(η/n) {runs[0]['rmse_plain']:.3g} → "
        f"{runs[-1]['rmse_plain']:.3g} (slope {fits['plain'].format()}). Sweep: best test accuracy "
        f"{numbers['best_accuracy']['ntk']:.3f} (NTK) vs {numbers['best_accuracy']['standard']:.3f} (standard)."
    )
    metrics = {
        "learning_rate": lr,
        "slopes": {
            k_: {"slope": f.slope, "ci_low": f.ci_low, "ci_high": f.ci_high, "r2": f.r2} for k_, f in fits.items()
        },
        "verdict_numbers": numbers,
        "runs": runs,
        "sweep": sweep,
    }
    return ExperimentResult(
        measured=measured,
        supported=supported,
        verdict=verdict,
        metrics=metrics,
        tables=tables,
        figures=_figures(cfg, runs, fits, sweep),
        config=run_config(cfg, data),
    )
