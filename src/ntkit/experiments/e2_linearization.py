"""E2 (network versus linearization): a wide network trained by gradient descent follows its linearized model.

Paper: Lee et al. 2019, Fig. 3 (binary CIFAR-10, MSE, ReLU, 5 hidden layers of width 2048, σ_w² = 2, σ_b² = 0.1,
|D| = 256, full-batch GD). Panels: test outputs of a few points, the change ω_t = θ_t − θ_0 of random parameters,
train and test loss, and RMSE(network, linearization) on test points over time, the linearization predicted with
the empirical kernel Θ̂_0 of the network and with the analytic (infinite-width) Θ. Claims: "remarkably good
agreement", and Θ̂_0 gives more accurate dynamics than Θ (the kernel moves by O(1/n) during training while
Θ̂_0 − Θ = O(n^{-1/2}), theory.md §5.2).

Here: one ReLU network in the NTK parameterization (σ_w² = 2, σ_b² = 0.1) of ``depth`` hidden layers of ``width``,
the run's data set as a two-class task with ±1 targets (E3's data), ``torch.optim.SGD`` (full batch) on
``MSELoss(reduction="mean")`` at η = ``lr_fraction`` × η_max(Θ̂_0) = N/λ_max(Θ̂_0) (``nk.predict.max_learning_rate``).
The linearization's train and test outputs at the recorded steps come from the closed form
``nk.predict.gradient_descent_mse`` (theory.md §2.3), once with the network's Θ̂_0 (``nk.empirical_ntk``; equal to
training ``nk.linearize(network)`` with the same loop, to round-off) and once with the analytic NTK Θ of the same
architecture (``nk.kernel(network, ...)``). Both start from the network's own initial outputs f_0, as the paper
does: the two predictions differ only by the kernel, so the difference between their errors is the effect of
Θ̂_0 − Θ, not of a different initial function. The linearization's parameter change comes from
``nk.predict.weight_change`` (eq. 8 in its discrete form) with Θ̂_0; the network's from its parameters.

Verdict rule. The network *agrees* with its linearization when the largest RMSE over the recorded steps between
the network's and the Θ̂_0-linearization's test outputs is at most ``rmse_threshold`` (10%) of the RMS distance
the linearization's test outputs travelled from f_0 by the last step (E5's relative RMSE). Θ̂_0 is *more accurate*
than Θ when the RMSE with Θ̂_0 is below the RMSE with Θ both at the last step and in the largest value over the
steps. Supported when both hold; not supported otherwise. The weight changes are drawn and their per-layer
relative difference ‖ω_T − ω^lin_T‖_F / ‖ω^lin_T‖_F is reported, but not judged (the paper gives no number). It
falls with width more slowly than the output RMSE (0.36 → 0.25 for the hidden layer from width 512 to 2048 in a
trial on digits): the network's weights also drift in directions that leave the training outputs unchanged,
which the linearization (whose ω_t stays in the row space of the initial Jacobian, theory.md §2.4) does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..infinite.compute import kernel as analytic_kernel
from ..predict import max_learning_rate, weight_change
from ..report import ExperimentResult, Figure, Table, new_figure, plot_style
from .context import RunContext, run_config
from .kernels import blocked_ntk, linearized_outputs
from .models import config_mlp
from .registry import register
from .stats import relative_change, rmse
from .training import log_spaced_steps, train_full_batch

__all__ = ["FULL", "QUICK", "LinearizationConfig", "network_vs_linearization"]

TITLE = "Network versus linearization during training"
CLAIM = (
    "A wide network trained by full-batch gradient descent on MSE follows its linearized model: test outputs, "
    "weight changes and losses agree over the whole training, and the linearization predicted with the network's "
    "empirical kernel Θ̂_0 is more accurate than with the analytic NTK Θ (Lee et al. 2019, Fig. 3)."
)
KERNELS = {"empirical": "Θ̂_0 (empirical)", "analytic": "Θ (analytic)"}


@dataclass(frozen=True)
class LinearizationConfig:
    """E2's settings: a ReLU network of ``depth`` hidden layers of ``width``, ``n_train`` training and ``n_test``
    test points (``None``: the whole test split), ``steps`` of full-batch GD at ``lr_fraction`` × η_max(Θ̂_0),
    outputs recorded at ``n_times`` log-spaced steps; ``n_points`` test outputs and ``n_weights_per_layer`` random
    entries of each weight matrix drawn in the figure; Θ̂_0 computed in blocks of ``kernel_block`` points
    (``None``: at once); the verdict's ``rmse_threshold``."""

    width: int = 512
    depth: int = 2
    n_train: int = 64
    n_test: int | None = 64
    steps: int = 512
    n_times: int = 14
    lr_fraction: float = 0.5
    W_std: float = math.sqrt(2.0)
    b_std: float = math.sqrt(0.1)
    n_points: int = 4
    n_weights_per_layer: int = 2
    kernel_block: int | None = None
    rmse_threshold: float = 0.1
    dtype: str = "float64"


QUICK = LinearizationConfig()
FULL = LinearizationConfig(width=1024, depth=3, n_train=128, n_test=None, steps=2048, n_times=20, kernel_block=64)


def _flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _random_parameters(model: torch.nn.Module, per_layer: int, seed: int) -> torch.Tensor:
    """Indices in the concatenated parameter vector of ``per_layer`` distinct random entries of each weight
    matrix, drawn uniformly within it (so every layer is represented, not only the largest)."""
    gen = torch.Generator().manual_seed(seed)
    chosen, offset = [], 0
    for p in model.parameters():
        if p.ndim == 2:
            chosen.append(offset + torch.randperm(p.numel(), generator=gen)[:per_layer])
        offset += p.numel()
    return torch.cat(chosen)


def _judge(cfg: LinearizationConfig, gap: dict[str, list[float]], moved: float) -> tuple[bool, str, dict[str, Any]]:
    """The verdict from the RMSE curves (module docstring): (supported, sentence, the numbers it used)."""
    sup = {name: max(values) for name, values in gap.items()}
    final = {name: values[-1] for name, values in gap.items()}
    relative = sup["empirical"] / moved
    agrees = relative <= cfg.rmse_threshold
    better = final["empirical"] < final["analytic"] and sup["empirical"] < sup["analytic"]
    numbers = {"relative_rmse": relative, "agrees": agrees, "empirical_better": better, "sup": sup, "final": final}
    text = (
        f"the largest RMSE(network, linearization with Θ̂_0) over training is {sup['empirical']:.3g}, "
        f"{relative:.3g} of the test outputs' movement {moved:.3g} (threshold {cfg.rmse_threshold:g}); with Θ̂_0 the "
        f"final RMSE is {final['empirical']:.3g} against {final['analytic']:.3g} with Θ (largest over training "
        f"{sup['empirical']:.3g} against {sup['analytic']:.3g})"
    )
    if agrees and better:
        return True, f"Supported: {text}, so Θ̂_0 predicts the trained network more accurately.", numbers
    problems = ([] if agrees else ["the network leaves its linearization"]) + (
        [] if better else ["Θ̂_0 is not more accurate than Θ"]
    )
    return False, f"Not supported ({'; '.join(problems)}): {text}.", numbers


def _figure(
    cfg: LinearizationConfig,
    steps: list[int],
    net: dict[str, Any],
    lin: dict[str, dict[str, Any]],
    gap: dict[str, list[float]],
    weight_tensors: dict[str, torch.Tensor],
    loss_curve: list[float],
    points: list[int],
) -> Figure:
    """The four panels of Fig. 3; tensors may be on any device."""
    t = np.asarray(steps[1:], dtype=float)
    net = {**net, "test_out": net["test_out"].cpu().numpy()}
    lin = {name: {**v, "test_out": v["test_out"].cpu().numpy()} for name, v in lin.items()}
    weights = {name: w.cpu().numpy() for name, w in weight_tensors.items()}
    styles = {"network": ("k", "-"), "empirical": ("C0", "--"), "analytic": ("C3", ":")}
    with plot_style():
        fig, axes = new_figure(ncols=4, panel_size=(3.6, 3.3))
        ax = axes[0]
        for j, i in enumerate(points):
            color = f"C{j % 10}"
            ax.plot(t, net["test_out"][1:, i], "-", color=color, label="network" if j == 0 else None)
            ax.plot(t, lin["empirical"]["test_out"][1:, i], "--", color="k", lw=1,
                    label="linearization (Θ̂_0)" if j == 0 else None)  # fmt: skip
        ax.set(xscale="log", xlabel="GD step", ylabel="f(x)", title=f"{len(points)} test outputs")
        ax.legend(fontsize=7)
        ax = axes[1]
        for j in range(weights["network"].shape[1]):
            color = f"C{j % 10}"
            ax.plot(t, weights["network"][1:, j], "-", color=color, label="network" if j == 0 else None)
            ax.plot(t, weights["linear"][1:, j], "--", color="k", lw=1, label="linearization (Θ̂_0)" if j == 0 else None)
        ax.set(xscale="log", xlabel="GD step", ylabel=r"$\omega_t = \theta_t - \theta_0$", title="Random parameters")
        ax.legend(fontsize=7)
        ax = axes[2]
        ax.plot(np.arange(1, len(loss_curve)), loss_curve[1:], "-", color="k", label="network, train")
        ax.plot(t, net["test_loss"][1:], "-", color="0.55", label="network, test")
        for name in KERNELS:
            color, style = styles[name]
            ax.plot(t, lin[name]["train_loss"][1:], style, color=color, label=f"lin. {KERNELS[name]}, train")
            ax.plot(t, lin[name]["test_loss"][1:], style, color=color, alpha=0.5, label=f"lin. {KERNELS[name]}, test")
        ax.set(xscale="log", xlabel="GD step", ylabel="MSE", title="Loss")
        ax.legend(fontsize=6)
        ax = axes[3]
        for name in KERNELS:
            color, style = styles[name]
            ax.plot(t, gap[name][1:], "o" + style, color=color, ms=3, label=f"with {KERNELS[name]}")
        ax.set(xscale="log", yscale="log", xlabel="GD step", ylabel=r"RMSE$(f_t, f^{lin}_t)$ on test points")
        ax.set_title("Network versus linearization")
        ax.legend(fontsize=7)
        return Figure.from_matplotlib(
            "E2-dynamics",
            fig,
            f"One ReLU network ({cfg.depth} hidden layers of width {cfg.width}, NTK parameterization, σ_w² = 2, "
            f"σ_b² = 0.1) trained by full-batch GD on MSE (±1 targets), against its linearization predicted in closed "
            "form (nk.predict.gradient_descent_mse) from the same f_0. From left: test outputs of random test points "
            "(network solid, linearization with Θ̂_0 dashed); the change of random parameters (network solid, "
            "linearization dashed, nk.predict.weight_change); train and test loss of the network and of the "
            "linearizations with Θ̂_0 and with the analytic Θ; the RMSE between network and linearization on the "
            "test points. Paper (Fig. 3): remarkably good agreement, and Θ̂_0 more accurate than Θ.",
        )


@register("E2", title=TITLE, claim=CLAIM, quick=QUICK, full=FULL)
def network_vs_linearization(cfg: LinearizationConfig, ctx: RunContext) -> ExperimentResult:
    """Run E2 (module docstring) and return its result with the figure E2-dynamics."""
    data, x, y, x_test = ctx.binary_task(cfg)
    n, k = x.shape[0], y.shape[1]
    model = config_mlp(cfg, x, k, ctx.derive_seed("E2"))
    x_all = torch.cat([x, x_test])
    analytic = analytic_kernel(model, x_all, get="ntk").ntk
    assert analytic is not None  # asked for
    kernels = {"empirical": blocked_ntk(model, x_all, cfg.kernel_block), "analytic": analytic.to(x.dtype)}
    with torch.no_grad():
        f0 = model(x_all)
    lr = cfg.lr_fraction * max_learning_rate(kernels["empirical"][:n, :n], n_outputs=k)
    steps = log_spaced_steps(cfg.steps, cfg.n_times)

    chosen = _random_parameters(model, cfg.n_weights_per_layer, ctx.derive_seed("E2", "parameters"))
    omega_lin = weight_change(
        model, x, y, lr, torch.tensor(steps), fx_train_0=f0[:n], ntk_train_train=kernels["empirical"][:n, :n]
    )
    weights_linear = torch.cat([v.reshape(len(steps), -1) for v in omega_lin.values()], dim=1)[:, chosen]
    omega_lin_final = {name: v[-1] for name, v in omega_lin.items()}
    del omega_lin
    params0 = {name: p.detach().clone() for name, p in model.named_parameters()}
    theta0 = _flat_parameters(model)[chosen]
    history = train_full_batch(
        model, x, y, lr=lr, steps=cfg.steps, record_steps=steps, x_eval=x_test,
        on_record=lambda _, m: _flat_parameters(m)[chosen] - theta0,
        progress=lambda s: ctx.bar(s, desc="E2 GD", total=cfg.steps + 1),
    )  # fmt: skip
    if history.diverged:
        raise FloatingPointError(f"training diverged (η = {lr:.3g}); lower lr_fraction.")

    y_test = data.targets()[1]
    net: dict[str, Any] = {"test_out": torch.stack(history.eval_outputs)[..., 0], "train_loss": history.loss}
    net["test_loss"] = [float(((f - y_test) ** 2).mean()) for f in history.eval_outputs]
    lin: dict[str, dict[str, Any]] = {}
    for name, kernel in kernels.items():
        train_out, test_out = linearized_outputs(kernel, f0, y, lr, steps)
        lin[name] = {
            "test_out": test_out[..., 0],
            "train_loss": [float(((f - y) ** 2).mean()) for f in train_out],
            "test_loss": [float(((f - y_test) ** 2).mean()) for f in test_out],
        }
    gap = {name: [rmse(a, b) for a, b in zip(net["test_out"], lin[name]["test_out"], strict=True)] for name in lin}
    moved = rmse(lin["empirical"]["test_out"][-1], f0[n:, 0])
    weights = {"network": torch.stack(history.records), "linear": weights_linear}
    supported, verdict, numbers = _judge(cfg, {name: g[1:] for name, g in gap.items()}, moved)
    kernel_gap = float(
        torch.linalg.matrix_norm(kernels["empirical"] - kernels["analytic"])
        / torch.linalg.matrix_norm(kernels["analytic"])
    )
    layer_gap = {
        name: relative_change(p.detach() - params0[name], omega_lin_final[name]) if p.ndim == 2 else None
        for name, p in model.named_parameters()
    }
    layer_gap = {name: v for name, v in layer_gap.items() if v is not None}

    rows = [
        [s, net["train_loss"][i], lin["empirical"]["train_loss"][i], net["test_loss"][i],
         lin["empirical"]["test_loss"][i], lin["analytic"]["test_loss"][i], gap["empirical"][i], gap["analytic"][i]]
        for i, s in enumerate(steps)
    ]  # fmt: skip
    tables = [
        Table(
            "Network and linearizations over training",
            [
                "step",
                "train MSE: network",
                "train MSE: lin. Θ̂_0",
                "test MSE: network",
                "test MSE: lin. Θ̂_0",
                "test MSE: lin. Θ",
                "RMSE(f, f_lin) Θ̂_0",
                "RMSE(f, f_lin) Θ",
            ],
            rows,
            f"Full-batch GD, η = {lr:.4g} = {cfg.lr_fraction:g} η_max(Θ̂_0), {n} training and {x_test.shape[0]} test "
            "points; RMSE on the test points; both linearizations start from the network's f_0.",
        )
    ]
    tables.append(
        Table(
            "Weight change per layer after training",
            ["parameter", "‖ω_lin‖_F", "‖ω − ω_lin‖_F / ‖ω_lin‖_F"],
            [[name, float(torch.linalg.vector_norm(omega_lin_final[name])), v] for name, v in layer_gap.items()],
            "ω = θ_T − θ_0 of the network, ω_lin of its linearization (nk.predict.weight_change with Θ̂_0).",
        )
    )
    measured = (
        f"Width {cfg.width}, {cfg.depth} hidden layers, {cfg.steps} steps at η = {lr:.4g}: the network's train MSE "
        f"went from {net['train_loss'][0]:.3g} to {net['train_loss'][-1]:.3g} (linearization "
        f"{lin['empirical']['train_loss'][-1]:.3g}), "
        f"its test outputs moved by {moved:.3g} (RMS); largest RMSE(network, linearization) on the test points "
        f"{numbers['sup']['empirical']:.3g} with Θ̂_0 and {numbers['sup']['analytic']:.3g} with Θ (final "
        f"{numbers['final']['empirical']:.3g} and {numbers['final']['analytic']:.3g}); ‖Θ̂_0 − Θ‖_F/‖Θ‖_F = "
        f"{kernel_gap:.3g}; weight change of the network against the linearization's after training, "
        "‖ω − ω_lin‖_F/‖ω_lin‖_F per layer: " + ", ".join(f"{v:.2g}" for v in layer_gap.values()) + " (reported, "
        "not judged: the paper states no number for it)."
    )
    metrics = {
        "learning_rate": lr,
        "record_steps": steps,
        "output_movement": moved,
        "rmse": gap,
        "verdict_numbers": numbers,
        "kernel_relative_difference": kernel_gap,
        "weight_change_relative_difference": layer_gap,
        "network": {"train_loss": net["train_loss"], "test_loss": net["test_loss"], "loss_curve": history.loss_curve},
        "linearization": {
            name: {"train_loss": v["train_loss"], "test_loss": v["test_loss"]} for name, v in lin.items()
        },
        "parameters": {"index": chosen, "network": weights["network"], "linearization": weights["linear"]},
    }
    points = torch.randperm(x_test.shape[0], generator=torch.Generator().manual_seed(ctx.derive_seed("E2", "points")))
    figure = _figure(cfg, steps, net, lin, gap, weights, history.loss_curve, points[: cfg.n_points].tolist())
    return ExperimentResult(
        measured=measured,
        supported=supported,
        verdict=verdict,
        metrics=metrics,
        tables=tables,
        figures=[figure],
        config=run_config(cfg, data),
    )
