"""E8 (accuracy): NNGP and NTK regression with the analytic kernels against trained finite networks of the same
architecture, on the data set's test split.

Paper and anchors: Lee et al. 2019, Corollary 1 (eqs. 14-16, theory.md §3.2): a network of infinite width trained
by gradient descent on the MSE is, at every time t, a draw from the Gaussian process N(μ_t, Σ_t) (the "NTK-GP"),
μ_t = Θ(x, X) Θ⁻¹ (I − e^{−ηΘt}) Y; at t = ∞ its mean is NTK kernel regression Θ(x, X) Θ⁻¹ Y. The NNGP posterior
mean K(x, X) K⁻¹ Y (eq. 13) is the infinite network trained on its readout only (SM D). Lee et al. 2018 and Arora
et al. 2019 (Table 1) find these kernel predictors competitive with or better than trained finite networks.

What follows from the theory, and what E8 tests:

1. *Limit*: the trained networks of width n approach the NTK-GP at the same training time T. One network is one
   draw, so its test error approaches the error of a GP draw, not the error of the mean μ_T: the expected test
   MSE of a draw is mean((μ_T − y)²) + mean(diag Σ_T) (exact), and its accuracy is estimated from
   ``n_draws`` draws of N(μ_T, Σ_T) (independent per output, K ⊗ I). The average of ``repeats`` networks is
   compared with the average of as many draws the same way (reported).
2. *Competitive*: the t = ∞ NNGP and NTK predictors (``nk.predict.gp_inference``) are at least as accurate as the
   trained networks (the best mean accuracy over widths), up to ``accuracy_tol``.

Here: ReLU networks in the NTK parameterization (``mlp``: σ_w² = 2, σ_b² = 0.1) with ``depth`` hidden layers, all
classes of the run's data set, centred one-hot targets −0.1·1 + e_c (Arora et al., Novak et al.; ``Dataset.targets``),
``repeats`` networks of each width trained by full-batch ``torch.optim.SGD`` on ``MSELoss(reduction="mean")`` for
``steps`` steps at η = ``lr_fraction`` × η_max(Θ) (``nk.predict.max_learning_rate`` of the analytic NTK on the
training set). The analytic kernels are ``nk.kernel`` of the same network; μ_T and Σ_T come from
``nk.predict.gradient_descent_mse_ensemble`` with the same learning rate, loss convention and number of steps.

Verdict rule; all must hold for "supported", else "not supported":

1. MSE limit: at the widest width, the mean test MSE of the networks differs from the GP's expected MSE by at most
   2 standard errors of the mean of ``repeats`` draws (the spread of a draw's MSE over the GP draws, / √repeats)
   plus ``finite_width_tol`` (5%) of the GP's MSE, and the relative difference is smaller than at the narrowest
   width;
2. accuracy limit: at the widest width, the networks' mean test accuracy differs from a GP draw's expected
   accuracy by at most 2 standard errors (as in 1) plus ``accuracy_tol``;
3. competitive: the NNGP and NTK t = ∞ accuracies are at least the best mean network accuracy minus
   ``accuracy_tol`` (0.02: the binomial standard error of one accuracy near 0.95 on 449 test points is about one
   point, and two predictors scored on the same points differ by less).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ..data import binary_classes
from ..errors import InvalidArgumentError
from ..infinite.compute import kernel
from ..predict import gp_inference, gradient_descent_mse_ensemble, max_learning_rate
from ..report import ExperimentResult, Figure, Table, new_figure, plot_style
from .context import RunContext, run_config
from .models import mlp
from .registry import register
from .stats import accuracy
from .training import train_full_batch

__all__ = ["FULL", "QUICK", "KernelAccuracyConfig", "gp_draws", "kernel_accuracy", "mse"]

TITLE = "NNGP and NTK regression against trained networks"
CLAIM = (
    "A wide network trained by gradient descent on the MSE is a draw from the NTK-GP at every time, whose t = ∞ mean "
    "is NTK kernel regression (Lee et al. 2019, Corollary 1, eqs. 14-16): the trained networks' test MSE and "
    "accuracy approach the NTK-GP's as width grows, and the infinite-width NNGP and NTK predictors are at least as "
    "accurate as the trained finite networks (Lee et al. 2018; Arora et al. 2019)."
)


@dataclass(frozen=True)
class KernelAccuracyConfig:
    """E8's settings: ReLU networks with ``depth`` hidden layers of each width in ``widths``, ``repeats`` per width,
    ``steps`` full-batch GD steps at ``lr_fraction`` × η_max(Θ), on ``n_train`` points (``None``: the whole train
    split), scored on ``n_test`` test points (``None``: all); ``n_draws`` GP draws; ``diag_reg`` for the t = ∞
    solves (× the mean diagonal); the verdict's tolerances."""

    widths: tuple[int, ...] = (64, 256, 1024)
    depth: int = 1
    repeats: int = 3
    n_train: int | None = 256
    n_test: int | None = None
    steps: int = 150
    lr_fraction: float = 0.5
    n_draws: int = 300
    diag_reg: float = 0.0
    W_std: float = math.sqrt(2.0)
    b_std: float = math.sqrt(0.1)
    finite_width_tol: float = 0.05
    accuracy_tol: float = 0.02
    dtype: str = "float64"


QUICK = KernelAccuracyConfig()
FULL = KernelAccuracyConfig(widths=(64, 128, 256, 512, 1024, 2048), repeats=3, n_train=512, steps=600)


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the last two axes ((…, M, k) → (…)), as ``MSELoss(reduction="mean")``."""
    return ((outputs - targets) ** 2).mean(dim=(-2, -1))


def gp_draws(mean: torch.Tensor, cov: torch.Tensor, n: int, *, seed: int) -> torch.Tensor:
    """``n`` draws of the Gaussian process with ``mean`` (M, k) and covariance ``cov`` (M, M) for each output
    (independent outputs, K ⊗ I): (n, M, k). The square root of ``cov`` is taken by ``eigh`` with negative
    round-off eigenvalues clipped to 0 (Σ_t is PSD but can be singular to round-off)."""
    evals, evecs = torch.linalg.eigh(cov)
    root = evecs * evals.clamp(min=0).sqrt()
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, mean.shape[0], mean.shape[1], generator=gen, dtype=mean.dtype).to(mean.device)
    draws: torch.Tensor = mean + root @ z
    return draws


@dataclass
class _Reference:
    """The infinite-width predictions on the test points: t = ∞ means, the NTK-GP at step T and its draws."""

    nngp_inf: torch.Tensor
    ntk_inf: torch.Tensor
    mean_t: torch.Tensor
    cov_t: torch.Tensor
    draws: torch.Tensor
    lr: float


def _reference(
    cfg: KernelAccuracyConfig, ctx: RunContext, net: nn.Module, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor
) -> _Reference:
    k_train, k_test = kernel(net, x), kernel(net, x_test, x)
    gp = gp_inference(k_train, y, cfg.diag_reg)
    assert k_train.ntk is not None  # asked for
    lr = cfg.lr_fraction * max_learning_rate(k_train.ntk, n_outputs=y.shape[1])
    # x2 = None for a kernel of x with itself: exactly symmetric, and the ReLU angle of a point with itself is
    # exactly 0 (computed from two copies it is off by about √eps)
    ensemble = gradient_descent_mse_ensemble(lambda a, b: kernel(net, a, None if b is a else b), x, y, lr)
    mean_t, cov_t = cast(tuple[torch.Tensor, torch.Tensor], ensemble(cfg.steps, x_test, get="ntk", compute_cov=True))
    draws = gp_draws(mean_t, cov_t, cfg.n_draws, seed=ctx.derive_seed("E8", "draws"))
    nngp_inf, ntk_inf = cast(torch.Tensor, gp("nngp", k_test)), cast(torch.Tensor, gp("ntk", k_test))  # means only
    return _Reference(nngp_inf, ntk_inf, mean_t, cov_t, draws, lr)


def _network(
    cfg: KernelAccuracyConfig, ctx: RunContext, width: int, repeat: int, x: torch.Tensor, k: int
) -> nn.Sequential:
    return mlp(
        x.shape[1], [width] * cfg.depth, k, W_std=cfg.W_std, b_std=cfg.b_std,
        seed=ctx.derive_seed("E8", width, repeat), dtype=x.dtype, device=x.device,
    )  # fmt: skip


def _train(
    cfg: KernelAccuracyConfig,
    ctx: RunContext,
    width: int,
    repeat: int,
    x: torch.Tensor,
    y: torch.Tensor,
    x_test: torch.Tensor,
    lr: float,
) -> dict[str, Any]:
    model = _network(cfg, ctx, width, repeat, x, y.shape[1])
    history = train_full_batch(
        model, x, y, lr=lr, steps=cfg.steps, record_steps=[cfg.steps], x_eval=x_test,
        progress=lambda steps: ctx.bar(steps, desc=f"E8 n={width} GD", total=cfg.steps + 1),
    )  # fmt: skip
    if history.diverged:
        raise FloatingPointError(f"training diverged at width {width} (η = {lr:.3g}); lower lr_fraction.")
    return {"width": width, "repeat": repeat, "train_mse": history.loss[-1], "test_outputs": history.eval_outputs[-1]}


def _scores(outputs: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {"accuracy": accuracy(outputs, labels), "mse": float(mse(outputs, targets))}


def _judge(cfg: KernelAccuracyConfig, numbers: dict[str, Any]) -> tuple[bool, str]:
    """The verdict (module docstring, rules 1-3) from the numbers :func:`kernel_accuracy` reports."""
    widths = sorted(numbers["networks"], key=int)
    narrow, wide = numbers["networks"][widths[0]], numbers["networks"][widths[-1]]
    gp = numbers["gp_draw"]
    root_r = math.sqrt(cfg.repeats)
    mse_gp = gp["expected_mse"]
    gap = {w: abs(numbers["networks"][w]["mse"] - mse_gp) / mse_gp for w in widths}
    mse_allow = 2 * gp["mse_sd"] / root_r / mse_gp + cfg.finite_width_tol
    acc_gap = abs(wide["accuracy"] - gp["accuracy"])
    acc_allow = 2 * gp["accuracy_sd"] / root_r + cfg.accuracy_tol
    best = max(numbers["networks"][w]["accuracy"] for w in widths)
    nngp, ntk = numbers["nngp_inf"]["accuracy"], numbers["ntk_inf"]["accuracy"]
    checks = [
        (gap[widths[-1]] <= mse_allow and gap[widths[-1]] < gap[widths[0]],
         f"the networks' test MSE approaches the NTK-GP's expected {mse_gp:.4f}: relative difference "
         f"{gap[widths[0]]:.3f} (n = {widths[0]}, MSE {narrow['mse']:.4f}) → {gap[widths[-1]]:.3f} "
         f"(n = {widths[-1]}, MSE {wide['mse']:.4f}; allowed {mse_allow:.3f})"),
        (acc_gap <= acc_allow,
         f"test accuracy at n = {widths[-1]} {wide['accuracy']:.3f} against a GP draw's {gp['accuracy']:.3f} "
         f"(difference {acc_gap:.3f}, allowed {acc_allow:.3f})"),
        (min(nngp, ntk) >= best - cfg.accuracy_tol,
         f"NNGP / NTK (t = ∞) accuracies {nngp:.3f} / {ntk:.3f} against the best network mean {best:.3f} "
         f"(allowed {cfg.accuracy_tol:g} below)"),
    ]  # fmt: skip
    failed = [text for ok, text in checks if not ok]
    if failed:
        return False, "Not supported: " + "; ".join(failed) + "."
    return True, "Supported: " + "; ".join(text for _, text in checks) + "."


def _figure(
    cfg: KernelAccuracyConfig, widths: list[int], per_network: list[dict[str, Any]], numbers: dict[str, Any], steps: int
) -> Figure:
    w = np.asarray(widths, dtype=float)
    fig, axes = new_figure(ncols=2, panel_size=(5.0, 4.0))
    gp = numbers["gp_draw"]
    for ax, key, label in ((axes[0], "accuracy", "test accuracy"), (axes[1], "mse", "test MSE")):
        ax.plot([r["width"] for r in per_network], [r[key] for r in per_network], ".", color="k", alpha=0.35)
        ax.plot(w, [numbers["networks"][str(n)][key] for n in widths], "o-", color="k", label="networks (mean)")
        ax.plot(w, [numbers["ensembles"][str(n)][key] for n in widths], "s--", color="0.45", ms=3,
                label=f"ensemble of {cfg.repeats} networks")  # fmt: skip
        ax.axhline(numbers["nngp_inf"][key], color="C2", label="NNGP, t = ∞")
        ax.axhline(numbers["ntk_inf"][key], color="C3", label="NTK, t = ∞")
        ax.axhline(numbers["ntk_t"][key], color="C1", ls="--", label=f"NTK-GP mean, t = {steps}")
        value = gp["expected_mse"] if key == "mse" else gp["accuracy"]
        sd = (gp["mse_sd"] if key == "mse" else gp["accuracy_sd"]) / math.sqrt(cfg.repeats)
        ax.axhline(value, color="C0", ls=":", label=f"NTK-GP draw, t = {steps} (±2 s.e. of {cfg.repeats})")
        ax.axhspan(value - 2 * sd, value + 2 * sd, color="C0", alpha=0.12)
        ax.axhline(gp["ensemble_" + key], color="C0", ls="-.", lw=1, label=f"mean of {cfg.repeats} GP draws")
        ax.set_xscale("log", base=2)
        ax.set_xticks(w, [str(n) for n in widths])
        ax.minorticks_off()
        ax.set(xlabel="width n", ylabel=label)
        if key == "mse":
            ax.set_yscale("log")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=7, frameon=False)
    return Figure.from_matplotlib(
        "E8-accuracy",
        fig,
        f"Test accuracy (left) and MSE (right) of ReLU networks ({cfg.depth} hidden layer(s), NTK parameterization) "
        f"trained by full-batch GD for {steps} steps against width (dots: each of the {cfg.repeats} networks, line: "
        "their mean; grey dashed: their ensemble), and of the infinite-width predictors with the analytic kernels "
        "of nk.kernel: NNGP and NTK regression at t = ∞, the NTK-GP mean at the same step and a draw from the "
        "NTK-GP (expected MSE exact, accuracy from draws; band ±2 standard errors of a mean of as many draws as "
        "networks). Theory (Corollary 1): each network tends to a draw of the NTK-GP as the width grows.",
    )


@register("E8", title=TITLE, claim=CLAIM, quick=QUICK, full=FULL)
def kernel_accuracy(cfg: KernelAccuracyConfig, ctx: RunContext) -> ExperimentResult:
    """Run E8 (module docstring) and return its result with figure E8-accuracy."""
    dtype = getattr(torch, cfg.dtype)
    if binary_classes(ctx.dataset) is None:  # a regression set (its loader also wants a number of test points)
        raise InvalidArgumentError(
            f"E8 measures classification accuracy and needs a classification data set, not {ctx.dataset!r}."
        )
    data = ctx.load_data(task="multiclass", n_train=cfg.n_train, n_test=cfg.n_test, dtype=dtype)
    x, x_test, labels = data.x_train, data.x_test, data.y_test
    y, y_test = data.targets()
    ref = _reference(cfg, ctx, _network(cfg, ctx, 1, 0, x, y.shape[1]), x, y, x_test)

    jobs = [(w, r) for w in cfg.widths for r in range(cfg.repeats)]
    runs = [_train(cfg, ctx, w, r, x, y, x_test, ref.lr) for w, r in ctx.bar(jobs, desc="E8 networks", total=len(jobs))]
    per_network = [
        {"width": r["width"], "repeat": r["repeat"], "train_mse": r["train_mse"],
         **_scores(r["test_outputs"], y_test, labels)}
        for r in runs
    ]  # fmt: skip
    draw_mse = mse(ref.draws, y_test)
    n_groups = cfg.n_draws // cfg.repeats
    draw_means = ref.draws[: n_groups * cfg.repeats].reshape(n_groups, cfg.repeats, *ref.draws.shape[1:]).mean(1)
    draw_acc = torch.tensor([accuracy(d, labels) for d in ref.draws], dtype=torch.float64)
    numbers: dict[str, Any] = {
        "learning_rate": ref.lr,
        "nngp_inf": _scores(ref.nngp_inf, y_test, labels),
        "ntk_inf": _scores(ref.ntk_inf, y_test, labels),
        "ntk_t": _scores(ref.mean_t, y_test, labels),
        "gp_draw": {
            "expected_mse": float(mse(ref.mean_t, y_test) + ref.cov_t.diagonal().mean()),
            "draws_mse": float(draw_mse.mean()),
            "mse_sd": float(draw_mse.std()),
            "accuracy": float(draw_acc.mean()),
            "accuracy_sd": float(draw_acc.std()),
            "ensemble_accuracy": float(np.mean([accuracy(d, labels) for d in draw_means])),
            "ensemble_mse": float(mse(draw_means, y_test).mean()),
        },
        "networks": {
            str(w): {
                key: float(np.mean([r[key] for r in per_network if r["width"] == w]))
                for key in ("accuracy", "mse", "train_mse")
            }
            for w in cfg.widths
        },
        "ensembles": {
            str(w): _scores(torch.stack([r["test_outputs"] for r in runs if r["width"] == w]).mean(0), y_test, labels)
            for w in cfg.widths
        },
    }
    supported, verdict = _judge(cfg, numbers)

    widths = list(cfg.widths)
    gp = numbers["gp_draw"]
    widest = numbers["ensembles"][str(widths[-1])]["accuracy"]
    measured = (
        f"On {data.n_test} test points after training on {data.n_train}: NNGP (t = ∞) accuracy "
        f"{numbers['nngp_inf']['accuracy']:.3f}, NTK (t = ∞) {numbers['ntk_inf']['accuracy']:.3f}, NTK-GP mean at "
        f"step {cfg.steps} {numbers['ntk_t']['accuracy']:.3f}, a draw of it {gp['accuracy']:.3f} (expected MSE "
        f"{gp['expected_mse']:.4f}); trained networks (mean of {cfg.repeats}) "
        + ", ".join(
            f"{numbers['networks'][str(w)]['accuracy']:.3f} / MSE {numbers['networks'][str(w)]['mse']:.4f} (n = {w})"
            for w in widths
        )
        + f"; at n = {widths[-1]} the ensemble of {cfg.repeats} reaches {widest:.3f}"
        f" (GP: {gp['ensemble_accuracy']:.3f})."
    )
    predictor_rows = [
        ["NNGP regression, t = ∞", numbers["nngp_inf"]["accuracy"], numbers["nngp_inf"]["mse"]],
        ["NTK regression, t = ∞", numbers["ntk_inf"]["accuracy"], numbers["ntk_inf"]["mse"]],
        [f"NTK-GP mean, step {cfg.steps}", numbers["ntk_t"]["accuracy"], numbers["ntk_t"]["mse"]],
        [f"NTK-GP draw, step {cfg.steps}", gp["accuracy"], gp["expected_mse"]],
        [f"mean of {cfg.repeats} NTK-GP draws, step {cfg.steps}", gp["ensemble_accuracy"], gp["ensemble_mse"]],
    ]
    network_rows = [
        [w, numbers["networks"][str(w)]["accuracy"], numbers["networks"][str(w)]["mse"],
         numbers["networks"][str(w)]["train_mse"], numbers["ensembles"][str(w)]["accuracy"],
         numbers["ensembles"][str(w)]["mse"]]
        for w in widths
    ]  # fmt: skip
    tables = [
        Table(
            "Infinite-width predictors",
            ["predictor", "test accuracy", "test MSE"],
            predictor_rows,
            f"Analytic kernels of nk.kernel; t = ∞ by nk.predict.gp_inference, step {cfg.steps} by "
            f"gradient_descent_mse_ensemble (η = {ref.lr:.4g}, MSELoss mean); a draw's accuracy over {cfg.n_draws} "
            f"draws (sd {gp['accuracy_sd']:.3f}), its MSE exact (draws: {gp['draws_mse']:.4f}, sd {gp['mse_sd']:.4f}).",
        ),
        Table(
            "Trained networks per width",
            ["width", "test accuracy", "test MSE", "train MSE", f"ensemble of {cfg.repeats}: accuracy", "ensemble MSE"],
            network_rows,
            f"Mean over {cfg.repeats} networks trained by full-batch SGD for {cfg.steps} steps at η = {ref.lr:.4g} "
            f"= {cfg.lr_fraction:g} × η_max(Θ); the ensemble averages their outputs.",
        ),
    ]
    with plot_style():
        figures = [_figure(cfg, widths, per_network, numbers, cfg.steps)]
    return ExperimentResult(
        measured=measured,
        supported=supported,
        verdict=verdict,
        metrics={**numbers, "per_network": per_network},
        tables=tables,
        figures=figures,
        config=run_config(cfg, data),
    )
