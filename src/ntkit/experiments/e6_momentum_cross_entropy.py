"""E6 (momentum and cross-entropy): a wide network and its linearization trained side by side by SGD with momentum
on a 10-class task with cross-entropy, and, full batch, against the function-space prediction.

Paper: Lee et al. 2019, Fig. S3 (10-class MNIST, ReLU, 2 hidden layers of width 2048, σ_w² = 2, σ_b² = 0.1,
cross-entropy, SGD with learning rate 1.0, momentum 0.9, batch 64) and Fig. S2 (full-batch momentum), with SM B
(theory.md §2.5-2.6): the network and f_lin = f_0 + J_0 (θ − θ_0) (``nk.linearize``) trained by the same optimizer
on the same minibatches give the same logits, losses and accuracies, increasingly so with width. With cross-entropy
the logits grow without bound, and so do their deviations at late times (Fig. S4).

Here: ReLU networks in the NTK parameterization of each width in ``widths`` (the last one is shown in detail), the
run's data set with all its classes, ``torch.optim.SGD(lr, momentum)`` on ``CrossEntropyLoss`` with minibatches of
``batch_size`` drawn with replacement (the same for the network and its linearization,
:func:`~ntkit.experiments.training.train_side_by_side`). Recorded at log-spaced steps: train and test loss and
accuracy of both, the logits of ``n_watch`` test points, the RMSE between the two models' test logits and the RMS
of the linearization's test logits (its scale).

Full batch: a network of each width in ``fb_widths`` and its linearization trained on ``fb_n_train`` points by the
same optimizer without minibatches, against ``nk.predict.gradient_descent(CrossEntropyLoss(), Θ̂_0, ...)`` with the full
(N, N, C, C) empirical kernel and the same momentum, at the same steps: the prediction iterates
w ← βw + ∇_f L, f ← f − lr Θ̂_0 w, which is exactly what SGD with momentum does to the linearized model, so the two
must agree to round-off (a check that the library is consistent), and the prediction must be close to the
network.

Verdict rule; all must hold for "supported", else "not supported":

1. consistency: the prediction and the trained linearized model differ by at most ``consistency_tol`` (1e-9)
   relative to the largest logit, at every recorded step and full-batch width. float64 round-off grows over a few
   hundred steps to ~1e-14; a wrong convention (momentum, loss scale, kernel layout) changes the logits at
   O(lr·Θ̂) ≈ 1e-2 or more;
2. accuracy: at the widest width, the final train and test accuracies of the network and its linearization differ
   by at most ``accuracy_tol`` (0.02). The standard error of one accuracy near 0.95 on a few hundred test points is
   about 1.1 points, and two models with correlated errors differ by less: 2 points is the resolution of the test
   set; and the two predict the same class on at least ``agreement_min`` (95%) of the test points;
3. logits: the final RMSE between the network's and the linearization's test logits relative to their RMS (the
   logit scale) is smaller at the widest width than at the narrowest; and so is the full-batch network's relative
   RMSE against the prediction over ``fb_widths``. A fixed tolerance on the logits would not fit cross-entropy: the
   logits grow without bound and their deviations with them (Fig. S4), so what the claim predicts is the fall with
   width. Its rate is E3's subject (many networks, fitted slopes); with one network per width E6 reports the ratio
   next to Theorem 2.1's (n_widest / n_narrowest)^{-1/2} for information.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import Dataset
from ..empirical import empirical_ntk
from ..errors import InvalidArgumentError
from ..linearize import linearize
from ..predict import gradient_descent
from ..report import ExperimentResult, Figure, Table, new_figure, plot_style
from .context import RunContext, run_config
from .models import mlp
from .registry import register
from .stats import accuracy, rmse
from .training import log_spaced_steps, train_side_by_side

__all__ = [
    "FULL",
    "MODELS",
    "QUICK",
    "MomentumConfig",
    "logits_figure",
    "momentum_cross_entropy",
    "side_by_side_classification",
]

TITLE = "Momentum and cross-entropy: network and linearization side by side"
CLAIM = (
    "A wide network and its linearization trained by SGD with momentum on cross-entropy (minibatches, 10 classes) "
    "have the same logits, losses and accuracies over training, more closely the wider the network; full batch, the "
    "function-space dynamics with the empirical NTK describe the linearized model exactly "
    "(Lee et al. 2019, Figs. S2, S3; SM B)."
)
MODELS = ("network", "linearized")


@dataclass(frozen=True)
class MomentumConfig:
    """E6's settings: ReLU networks with ``depth`` hidden layers of each width in ``widths`` (the last is shown in
    detail) trained for ``steps`` SGD steps (``lr``, ``momentum``, minibatches of ``batch_size``) on ``n_train``
    points (``None``: the whole train split), evaluated on ``n_test`` test points at ``n_times`` log-spaced steps,
    the logits of ``n_watch`` test points drawn; the full-batch runs: widths ``fb_widths`` (their full (N, N, C, C)
    kernels hold N·C·P numbers per Jacobian, P the parameter count, hence the small widths), ``fb_n_train``
    points, ``fb_steps`` steps; the verdict's tolerances."""

    widths: tuple[int, ...] = (128, 512)
    depth: int = 2
    n_train: int | None = 512
    n_test: int | None = 256
    lr: float = 1.0
    momentum: float = 0.9
    batch_size: int = 64
    steps: int = 150
    n_times: int = 12
    n_watch: int = 3
    fb_widths: tuple[int, ...] = (64, 256)
    fb_n_train: int = 24
    fb_steps: int = 100
    W_std: float = math.sqrt(2.0)
    b_std: float = math.sqrt(0.1)
    consistency_tol: float = 1e-9
    accuracy_tol: float = 0.02
    agreement_min: float = 0.95
    dtype: str = "float64"


QUICK = MomentumConfig()
FULL = MomentumConfig(
    widths=(256, 1024), n_train=None, n_test=None, steps=1000, n_times=20, fb_widths=(128, 512), fb_n_train=32,
    fb_steps=300,
)  # fmt: skip


def _evaluate(
    models: Mapping[str, nn.Module],
    x: torch.Tensor,
    labels: torch.Tensor,
    x_test: torch.Tensor,
    labels_test: torch.Tensor,
    n_watch: int,
) -> dict[str, Any]:
    """Loss, accuracy and test logits of each model, and the RMSE between the first two models' test logits."""
    out: dict[str, Any] = {}
    logits = {}
    with torch.no_grad():
        for name, model in models.items():
            train, logits[name] = model(x), model(x_test)
            out[name] = {
                "train_loss": float(nn.functional.cross_entropy(train, labels)),
                "train_acc": accuracy(train, labels),
                "test_loss": float(nn.functional.cross_entropy(logits[name], labels_test)),
                "test_acc": accuracy(logits[name], labels_test),
                "watch": logits[name][:n_watch].cpu().tolist(),
            }
    first, second = (logits[name] for name in list(models)[:2])
    out["test_rmse"] = rmse(first, second)
    out["logit_scale"] = float(second.pow(2).mean().sqrt())
    out["agreement"] = float((first.argmax(1) == second.argmax(1)).double().mean())
    return out


def side_by_side_classification(
    network: nn.Module,
    data: Dataset,
    *,
    lr: float,
    momentum: float,
    batch_size: int | None,
    steps: int,
    record_steps: Sequence[int],
    n_watch: int = 3,
    seed: int = 0,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> dict[str, Any]:
    """Train ``network`` (in place) and ``nk.linearize(network)`` side by side on ``data`` by SGD with momentum on
    cross-entropy, with the same minibatches (``batch_size=None``: full batch), as in Fig. S3.

    Returns the history at the recorded steps: ``{"steps": [...], "network": {key: [...]}, "linearized":
    {key: [...]}, "test_rmse": [...], "logit_scale": [...], "agreement": [...]}`` with keys ``train_loss``,
    ``train_acc``, ``test_loss``, ``test_acc`` and ``watch`` (the logits of the first ``n_watch`` test points,
    (T, n_watch, C) as nested lists); ``test_rmse`` is the RMSE between the two models' test logits, ``logit_scale``
    the RMS of the linearization's test logits, ``agreement`` the fraction of test points with the same predicted
    class.
    """
    models = {"network": network, "linearized": linearize(network)}
    history = train_side_by_side(
        models,
        data.x_train,
        data.y_train,
        lr=lr,
        steps=steps,
        batch_size=batch_size,
        momentum=momentum,
        loss="cross_entropy",
        record_steps=record_steps,
        on_record=lambda _, ms: _evaluate(ms, data.x_train, data.y_train, data.x_test, data.y_test, n_watch),
        seed=seed,
        progress=progress,
    )
    out: dict[str, Any] = {"steps": history.steps}
    for name in MODELS:
        out[name] = {key: [rec[name][key] for rec in history.records] for key in history.records[0][name]}
    for key in ("test_rmse", "logit_scale", "agreement"):
        out[key] = [rec[key] for rec in history.records]
    return out


def _full_batch(cfg: MomentumConfig, ctx: RunContext, data: Dataset, width: int) -> dict[str, Any]:
    """A full-batch run: network, trained linearization and ``gradient_descent`` prediction (module docstring)."""
    n = cfg.fb_n_train
    assert data.n_classes is not None  # checked by the caller
    x, labels = data.x_train[:n], data.y_train[:n]
    x_all = torch.cat([x, data.x_test[: cfg.n_watch]])
    network = mlp(
        x.shape[1], [width] * cfg.depth, data.n_classes, W_std=cfg.W_std, b_std=cfg.b_std,
        seed=ctx.derive_seed("E6", "full batch", width), dtype=x.dtype, device=x.device,
    )  # fmt: skip
    ntk0 = empirical_ntk(network, x_all, trace_outputs=False)  # (N + M, N + M, C, C)
    with torch.no_grad():
        f0 = network(x_all)
    record = log_spaced_steps(cfg.fb_steps, cfg.n_times)
    predictor = gradient_descent(nn.CrossEntropyLoss(), ntk0[:n, :n], labels, cfg.lr, momentum=cfg.momentum)
    pred_train, pred_test = predictor(record, f0[:n], f0[n:], ntk0[n:, :n])
    predicted = torch.cat([pred_train, pred_test], dim=1)  # (T, N + M, C)
    models = {"network": network, "linearized": linearize(network)}
    history = train_side_by_side(
        models, x, labels, lr=cfg.lr, steps=cfg.fb_steps, momentum=cfg.momentum, record_steps=record,
        on_record=lambda _, ms: {name: m(x_all).detach() for name, m in ms.items()},
    )  # fmt: skip
    trained = {name: torch.stack([rec[name] for rec in history.records]) for name in MODELS}
    scale = predicted.abs().amax(dim=(1, 2))
    return {
        "width": width,
        "steps": record,
        "consistency": ((trained["linearized"] - predicted).abs().amax(dim=(1, 2)) / scale).tolist(),
        "network_rmse": [rmse(a, b) for a, b in zip(trained["network"], predicted, strict=True)],
        "logit_scale": predicted.pow(2).mean(dim=(1, 2)).sqrt().tolist(),
        "watch": {
            "network": trained["network"][:, n].tolist(),
            "linearized": trained["linearized"][:, n].tolist(),
            "predicted": predicted[:, n].tolist(),
        },
    }


def _judge(
    cfg: MomentumConfig, runs: list[dict[str, Any]], fbs: list[dict[str, Any]]
) -> tuple[bool, str, dict[str, Any]]:
    """The verdict (module docstring, rules 1-3): (supported, sentence, the numbers it used)."""
    wide = runs[-1]
    numbers: dict[str, Any] = {
        "consistency": max(max(fb["consistency"]) for fb in fbs),
        "train_acc_diff": abs(wide["network"]["train_acc"][-1] - wide["linearized"]["train_acc"][-1]),
        "test_acc_diff": abs(wide["network"]["test_acc"][-1] - wide["linearized"]["test_acc"][-1]),
        "agreement": wide["agreement"][-1],
        "relative_logit_rmse": {str(r["width"]): r["test_rmse"][-1] / r["logit_scale"][-1] for r in runs},
        "full_batch_relative_rmse": {str(fb["width"]): fb["network_rmse"][-1] / fb["logit_scale"][-1] for fb in fbs},
    }
    checks = [
        (numbers["consistency"] <= cfg.consistency_tol,
         f"full-batch prediction equals the trained linearization to {numbers['consistency']:.2g} "
         f"(≤ {cfg.consistency_tol:g})"),
        (max(numbers["train_acc_diff"], numbers["test_acc_diff"]) <= cfg.accuracy_tol,
         f"accuracies differ by {numbers['train_acc_diff']:.3f} (train) and {numbers['test_acc_diff']:.3f} (test) "
         f"at width {wide['width']} (≤ {cfg.accuracy_tol:g})"),
        (numbers["agreement"] >= cfg.agreement_min,
         f"same predicted class on {numbers['agreement']:.3f} of the test points (≥ {cfg.agreement_min:g})"),
        _falls_with_width("relative logit RMSE", numbers["relative_logit_rmse"]),
        _falls_with_width("full-batch network-vs-prediction relative RMSE", numbers["full_batch_relative_rmse"]),
    ]  # fmt: skip
    failed = [text for ok, text in checks if not ok]
    if failed:
        return False, "Not supported: " + "; ".join(failed) + ".", numbers
    return True, "Supported: " + "; ".join(text for _, text in checks) + ".", numbers


def _falls_with_width(name: str, by_width: dict[str, float]) -> tuple[bool, str]:
    """(ok, text): the value at the widest width is below the narrowest's (the ratio shown next to n^-1/2)."""
    widths = sorted(by_width, key=int)
    n0, n1 = widths[0], widths[-1]
    v0, v1 = by_width[n0], by_width[n1]
    return int(n1) > int(n0) and v1 < v0, (
        f"{name} falls with width, {v0:.3g} (n = {n0}) → {v1:.3g} (n = {n1}): ratio {v1 / v0:.3g} "
        f"(n^-1/2: {(int(n1) / int(n0)) ** -0.5:.3g})"
    )


def logits_figure(history: dict[str, Any], *, title: str = "") -> Any:
    """Fig. S3 style, from :func:`side_by_side_classification`'s history: the logits of the watched test points
    (network solid, linearization dashed), train/test loss and accuracy of both, and the relative RMSE between
    their test logits, against the step. Returns a matplotlib Figure (draw it inside ``plot_style()``)."""
    steps = np.asarray(history["steps"]) + 1  # a log axis: step 0 is drawn at 1
    watch = {name: np.asarray(history[name]["watch"]) for name in MODELS}  # (T, n_watch, C)
    n_watch = watch["network"].shape[1]
    ncols = max(n_watch, 3)
    fig, axes = new_figure(ncols=ncols, nrows=2, panel_size=(3.6, 3.0))
    for i in range(n_watch):
        ax = axes[i]
        for name, style in zip(MODELS, ("-", "--"), strict=True):
            for c in range(watch[name].shape[2]):
                ax.plot(steps, watch[name][:, i, c], style, color=f"C{c % 10}", lw=1.1)
        ax.set(xscale="log", xlabel="step + 1", ylabel="logit", title=f"test point {i}: logits (— net, -- lin)")
    for ax in axes[n_watch:ncols]:
        ax.axis("off")
    for ax, key, label in ((axes[ncols], "loss", "cross-entropy"), (axes[ncols + 1], "acc", "accuracy")):
        for name, style in zip(MODELS, ("-", "--"), strict=True):
            ax.plot(steps, history[name][f"train_{key}"], style, color="C0", label=f"{name}, train")
            ax.plot(steps, history[name][f"test_{key}"], style, color="C1", label=f"{name}, test")
        ax.set(xscale="log", xlabel="step + 1", ylabel=label)
        ax.legend(fontsize=7)
    ax = axes[ncols + 2]
    relative = np.asarray(history["test_rmse"]) / np.asarray(history["logit_scale"])
    ax.plot(steps[1:], relative[1:], color="k")
    ax.set(xscale="log", yscale="log", xlabel="step + 1", ylabel="RMSE / RMS logit")
    ax.set_title("test logits: RMSE(net, lin), relative")
    for ax in axes[ncols + 3 :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return fig


def _figures(cfg: MomentumConfig, runs: list[dict[str, Any]], fbs: list[dict[str, Any]]) -> list[Figure]:
    from matplotlib import colormaps

    wide = runs[-1]
    figs = []
    with plot_style():
        fig = logits_figure(wide)
        figs.append(
            Figure.from_matplotlib(
                "E6-side-by-side",
                fig,
                f"A ReLU network of width {wide['width']} (NTK parameterization, {cfg.depth} hidden layers) and its "
                f"linearization trained side by side by SGD (lr {cfg.lr:g}, momentum {cfg.momentum:g}, batch "
                f"{cfg.batch_size}) on cross-entropy with the same minibatches. Top: the logits of {cfg.n_watch} test "
                "points (network solid, linearization dashed, one colour per class). Bottom: train and test loss "
                "and accuracy of both, and the RMSE between their test logits relative to the logit scale. Paper "
                "(Fig. S3): the two agree; the deviation grows with the logits at late times (Fig. S4).",
            )
        )
        fig, axes = new_figure(ncols=3, panel_size=(3.8, 3.3))
        ax = axes[0]
        cmap = colormaps["viridis"]
        for j, r in enumerate(runs):
            rel = np.asarray(r["test_rmse"][1:]) / np.asarray(r["logit_scale"][1:])
            ax.plot(np.asarray(r["steps"][1:]) + 1, rel, color=cmap(0.8 * j / max(1, len(runs) - 1)),
                    label=f"n = {r['width']}")  # fmt: skip
        ax.set(xscale="log", yscale="log", xlabel="step + 1", ylabel="RMSE / RMS logit")
        ax.set_title("Minibatch SGD: network vs linearization")
        ax.legend(fontsize=7)
        ax = axes[1]
        for j, fb in enumerate(fbs):
            steps = np.asarray(fb["steps"][1:]) + 1
            color = cmap(0.8 * j / max(1, len(fbs) - 1))
            ax.plot(steps, np.asarray(fb["network_rmse"][1:]) / np.asarray(fb["logit_scale"][1:]), color=color,
                    label=f"network vs prediction, n = {fb['width']}")  # fmt: skip
            ax.plot(steps, np.maximum(fb["consistency"][1:], 1e-17), ":", color=color,
                    label=f"trained linearization vs prediction, n = {fb['width']}")  # fmt: skip
        ax.axhline(cfg.consistency_tol, color="C3", ls="-.", lw=1, label=f"round-off tolerance {cfg.consistency_tol:g}")
        ax.set(xscale="log", yscale="log", xlabel="step + 1", ylabel="relative difference")
        ax.set_title("Full batch: against nk.predict")
        ax.legend(fontsize=6.5)
        fb = fbs[-1]
        steps = np.asarray(fb["steps"]) + 1
        ax = axes[2]
        watch = {name: np.asarray(v) for name, v in fb["watch"].items()}
        for c in range(watch["predicted"].shape[1]):
            ax.plot(steps, watch["network"][:, c], "-", color=f"C{c % 10}", lw=1.1)
            ax.plot(steps, watch["predicted"][:, c], ":", color="k", lw=1.0)
        ax.set(xscale="log", xlabel="step + 1", ylabel="logit")
        ax.set_title(f"Full batch (n = {fb['width']}), test point 0:\n— network, ··· prediction")
        figs.append(
            Figure.from_matplotlib(
                "E6-width-and-full-batch",
                fig,
                f"Left: RMSE between network and linearization test logits relative to the logit scale during "
                f"minibatch SGD with momentum, for each width (the widest is E6-side-by-side). Middle and right: "
                f"full-batch SGD with momentum on {cfg.fb_n_train} points: the function-space "
                "prediction nk.predict.gradient_descent(CrossEntropyLoss(), Θ̂_0 full (N, N, C, C) kernel, "
                "momentum) against the trained network (relative RMSE) and the trained nk.linearize model "
                "(largest difference relative to the largest logit: round-off), and the logits of one test point. "
                "Theory (SM B): the prediction is exactly the linearized model's dynamics.",
            )
        )
    return figs


def _progress(ctx: RunContext, desc: str, total: int) -> Callable[[Iterable[int]], Iterable[int]]:
    """A progress bar over the training steps (``ctx.bar`` with ``desc`` and ``total``)."""
    return lambda steps: ctx.bar(steps, desc=desc, total=total)


@register("E6", title=TITLE, claim=CLAIM, quick=QUICK, full=FULL)
def momentum_cross_entropy(cfg: MomentumConfig, ctx: RunContext) -> ExperimentResult:
    """Run E6 (module docstring) and return its result with figures E6-side-by-side and E6-width-and-full-batch."""
    dtype = getattr(torch, cfg.dtype)
    data = ctx.load_data(task="multiclass", n_train=cfg.n_train, n_test=cfg.n_test, dtype=dtype)
    if not data.is_classification:
        raise InvalidArgumentError(
            f"E6 trains on cross-entropy and needs a classification data set, not {data.name!r}."
        )
    assert data.n_classes is not None
    record = log_spaced_steps(cfg.steps, cfg.n_times)
    runs = []
    for width in cfg.widths:
        network = mlp(
            data.n_features, [width] * cfg.depth, data.n_classes, W_std=cfg.W_std, b_std=cfg.b_std,
            seed=ctx.derive_seed("E6", width), dtype=dtype, device=data.x_train.device,
        )  # fmt: skip
        history = side_by_side_classification(
            network, data, lr=cfg.lr, momentum=cfg.momentum, batch_size=cfg.batch_size, steps=cfg.steps,
            record_steps=record, n_watch=cfg.n_watch, seed=ctx.derive_seed("E6", "batches"),
            progress=_progress(ctx, f"E6 n={width} SGD", cfg.steps + 1),
        )  # fmt: skip
        runs.append({"width": width, **history})
    fbs = [_full_batch(cfg, ctx, data, width) for width in cfg.fb_widths]
    supported, verdict, numbers = _judge(cfg, runs, fbs)

    rows = [
        [r["width"], *(r[name][key][-1] for name in MODELS for key in ("train_acc", "test_acc", "test_loss")),
         r["test_rmse"][-1], r["logit_scale"][-1], r["test_rmse"][-1] / r["logit_scale"][-1], r["agreement"][-1]]
        for r in runs
    ]  # fmt: skip
    header = ["width", "net train acc", "net test acc", "net test loss", "lin train acc", "lin test acc",
              "lin test loss", "logit RMSE", "RMS logit", "relative", "same class"]  # fmt: skip
    fb_rows = [
        [fb["width"], t, e, scale, e / scale if scale else math.nan, c]
        for fb in fbs
        for t, e, scale, c in zip(fb["steps"], fb["network_rmse"], fb["logit_scale"], fb["consistency"], strict=True)
    ]
    tables = [
        Table(
            "Network and linearization after minibatch SGD with momentum",
            header,
            rows,
            f"After {cfg.steps} steps (lr {cfg.lr:g}, momentum {cfg.momentum:g}, batch {cfg.batch_size}) on "
            f"{data.n_train} training points; test metrics on {data.n_test} test points; 'same class': fraction of "
            "test points on which the two predict the same class.",
        ),
        Table(
            "Full batch against the function-space prediction",
            ["width", "step", "net vs prediction RMSE", "RMS logit", "relative", "trained lin. vs prediction"],
            fb_rows,
            f"{cfg.fb_n_train} training and {cfg.n_watch} test points, full-batch SGD with momentum on cross-entropy; "
            "the prediction is nk.predict.gradient_descent with the full empirical NTK; last column: largest "
            "difference relative to the largest logit.",
        ),
    ]
    wide = runs[-1]
    measured = (
        f"After {cfg.steps} steps at width {wide['width']}: test accuracy {wide['network']['test_acc'][-1]:.3f} "
        f"(network) vs {wide['linearized']['test_acc'][-1]:.3f} (linearization); relative logit RMSE "
        + ", ".join(f"{v:.3g} (n = {w})" for w, v in numbers["relative_logit_rmse"].items())
        + f"; same predicted class on {wide['agreement'][-1]:.3f} of the test points. Full batch: trained "
        f"linearization vs prediction {numbers['consistency']:.2g} (relative), network vs prediction (relative RMSE) "
        + ", ".join(f"{v:.3g} (n = {w})" for w, v in numbers["full_batch_relative_rmse"].items())
        + "."
    )
    return ExperimentResult(
        measured=measured,
        supported=supported,
        verdict=verdict,
        metrics={"verdict_numbers": numbers, "record_steps": record, "runs": runs, "full_batch": fbs},
        tables=tables,
        figures=_figures(cfg, runs, fbs),
        config=run_config(cfg, data),
    )
