"""E4 (ensemble versus Gaussian process): the outputs of many wide networks trained by gradient descent are
distributed as the NTK-GP of eqs. 14-15 at every time, and not as the readout-only NNGP (S22-S23).

Paper: Lee et al. 2019, Fig. 2 (100 networks, 3 hidden tanh layers of width 8192, σ_w² = 1.5, no bias, η = 0.5,
full-batch GD, |D| = 128). Mean and ±2 sd of the ensemble's outputs on the line x(α) = α x₁ + (1 − α) x₂ through two
training points of different classes, α ∈ [−2, 3], at four times, against the NTK-GP (all layers trained,
eqs. 14-15) and the NNGP with only the readout trained (S22 and S23 with the e^{−2ηKt} of the erratum,
theory.md §3.3). Claims: the ensemble follows eqs. 14-15; the NNGP prediction is similar but noticeably different at
the end of training.

Here: ``n_networks`` networks of ``depth`` hidden tanh layers of ``width`` (NTK parameterization, σ_w² = 1.5, no
bias), independent initializations (one derived seed each), trained on ``n_train`` points of the run's data set
(two-class, ±1 targets) by full-batch ``torch.optim.SGD`` on ``MSELoss(reduction="mean")`` (per network), all at
once: their parameters are stacked (``torch.func.stack_module_state``) and evaluated with ``torch.func.vmap`` over
``functional_call``, and the loss is the sum over networks of each one's mean loss, so each network receives
exactly its own gradient. η = ``lr_fraction`` × η_max(Θ) = N/λ_max(Θ) of the analytic NTK on the training set.
The GPs are ``nk.predict.gradient_descent_mse_ensemble`` with the analytic kernels ``nk.kernel(network, ...)`` of
the same architecture, ``get="ntk"`` (eqs. 14-15) and ``get="nngp"`` (readout only, same η), at the same steps.
x₁, x₂: the first training points of the two classes.

What is measured, at each recorded step t and path point α, with M networks, μ and σ² the GP's mean and variance,
m̄ and s² the ensemble's sample mean and (unbiased) variance:

- normalised mean error z(α) = (m̄ − μ) / (σ/√M): about N(0, 1) if the networks' outputs are distributed as the GP;
  reported as its RMS over the path;
- variance ratio s²/σ²: (M − 1) s²/σ² ~ χ²_{M−1}; reported as the geometric mean over the path;
- coverage: the fraction of the pairs (network, α) with |f_m(x(α)) − μ(α)| ≤ 2σ(α), 95.4% for Gaussian outputs.
  It is about the individual networks, not the ensemble mean (which is judged by z).

Points where either GP's sd is below ``sd_floor`` (5%) of the prior sd √K(x, x) are left out of all three, for
both GPs: at the training points the GPs' variance decays to 0 with training, and any finite-width deviation,
however small, would give an unbounded normalised error there.

Verdict rule. The ensemble *matches* a GP at a step when the RMS of z is at most ``z_max`` (3: the path points are
strongly correlated, so the RMS of N(0, 1) values along it can reach 2 by chance), the geometric-mean variance
ratio lies in the ``variance_level`` (99%) interval of χ²_{M−1}/(M − 1), and the coverage in the ``coverage_level``
(99%) interval of Binomial(M, 0.9545)/M. Both are the intervals of a single path point; the points along the path
are strongly correlated (a network's function is inside the band over long stretches or not), so the path
averages stay within them at least as easily. Supported when the ensemble matches the NTK-GP at every recorded
step and does not match the NNGP at the last one; inconclusive when it matches both at the last step (the data
cannot tell them apart); not supported when it misses the NTK-GP at some step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..errors import InvalidArgumentError, ShapeError, UnsupportedError
from ..infinite.compute import kernel as analytic_kernel
from ..predict import gradient_descent_mse_ensemble, max_learning_rate
from ..report import ExperimentResult, Figure, Table, new_figure, plot_style
from .context import RunContext, run_config
from .models import mlp
from .registry import register
from .training import train_full_batch

__all__ = ["FULL", "QUICK", "Ensemble", "EnsembleConfig", "ensemble_vs_gp"]

TITLE = "Ensemble of trained networks versus the NTK Gaussian process"
CLAIM = (
    "The outputs of an ensemble of wide networks trained by gradient descent from independent initializations are "
    "Gaussian with the mean and variance of eqs. 14-15 (the NTK-GP) at every time; the NNGP with only the readout "
    "trained (S22-S23) is similar but noticeably different at the end of training (Lee et al. 2019, Fig. 2)."
)
GPS = {"ntk": "NTK-GP (eqs. 14-15)", "nngp": "NNGP, readout only (S22-S23)"}


@dataclass(frozen=True)
class EnsembleConfig:
    """E4's settings: ``n_networks`` networks of ``depth`` hidden layers of ``width`` (``activation``, σ_w =
    ``W_std``, σ_b = ``b_std``, ``None``: no bias), ``n_train`` training points, outputs recorded at ``times``
    (GD steps) on ``n_path`` points of the path α ∈ ``alpha_range``, η = ``lr_fraction`` × η_max(Θ); the
    verdict's thresholds ``sd_floor``, ``z_max``, ``variance_level``, ``coverage_level``. Kernels, GPs and
    statistics are computed in ``dtype``; the networks are trained in ``network_dtype`` (float32: twice as fast,
    and its round-off is far below the ensemble's Monte Carlo error)."""

    n_networks: int = 20
    width: int = 256
    depth: int = 2
    activation: str = "tanh"
    W_std: float = math.sqrt(1.5)
    b_std: float | None = None
    n_train: int = 16
    times: tuple[int, ...] = (0, 8, 32, 192)
    n_path: int = 51
    alpha_range: tuple[float, float] = (-2.0, 3.0)
    lr_fraction: float = 0.5
    sd_floor: float = 0.05
    z_max: float = 3.0
    variance_level: float = 0.99
    coverage_level: float = 0.99
    dtype: str = "float64"
    network_dtype: str = "float32"


QUICK = EnsembleConfig()
FULL = EnsembleConfig(n_networks=64, width=512, n_train=24, times=(0, 16, 64, 512))


class Ensemble(nn.Module):
    """M networks of one architecture with their parameters stacked along a leading axis
    (``torch.func.stack_module_state``), evaluated at once by ``torch.func.vmap`` over ``functional_call``.

    Input (N, d) → (N, M): column m is network m's (single) output. Trained as one module, each network receives
    its own gradient as long as the loss is a sum of per-network losses (:func:`per_network_mse`).
    """

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        params, buffers = stack_module_state(models)
        if buffers:
            raise UnsupportedError("Ensemble supports networks without buffers.")
        self._names = list(params)
        self.stacked = nn.ParameterList(nn.Parameter(params[name].detach().clone()) for name in self._names)
        # the architecture without storage; kept outside the module tree so that it adds no parameters
        object.__setattr__(self, "_base", copy.deepcopy(models[0]).to("meta"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = cast(nn.Module, self._base)

        def one(*params: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = functional_call(base, dict(zip(self._names, params, strict=True)), (x,))
            return out

        out = vmap(one)(*self.stacked)  # (M, N, 1)
        if out.shape[-1] != 1:
            raise ShapeError(f"Ensemble expects networks with one output, got {out.shape[-1]}.")
        return out[..., 0].T


def per_network_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ_m MSELoss(mean)(outputs[:, m], targets[:, m]) for (N, M) tensors: the sum over the ensemble's networks of
    each one's mean loss, so that the gradient of network m is that of its own loss."""
    return ((outputs - targets) ** 2).mean(dim=0).sum()


COVERAGE_2SD = 0.9545  # P(|u| ≤ 2) for u ~ N(0, 1)


@dataclass(frozen=True)
class Limits:
    """The accepted ranges of the verdict for M networks (module docstring): ``variance`` the ``variance_level``
    interval of χ²_{M−1}/(M − 1), ``coverage`` the ``coverage_level`` interval of Binomial(M, 0.9545)/M."""

    variance: tuple[float, float]
    coverage: tuple[float, float]

    @classmethod
    def for_ensemble(cls, cfg: EnsembleConfig) -> Limits:
        from scipy import stats

        m = cfg.n_networks
        qv = [(1 - cfg.variance_level) / 2, (1 + cfg.variance_level) / 2]
        qc = [(1 - cfg.coverage_level) / 2, (1 + cfg.coverage_level) / 2]
        var_lo, var_hi = stats.chi2.ppf(qv, m - 1) / (m - 1)
        cov_lo, cov_hi = stats.binom.ppf(qc, m, COVERAGE_2SD) / m
        return cls((float(var_lo), float(var_hi)), (float(cov_lo), float(cov_hi)))


def _compare(outputs: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, keep: torch.Tensor) -> dict[str, Any]:
    """Normalised errors of the ensemble's ``outputs`` (P, M) against a GP's ``mean`` and ``var`` (P,), on the
    path points ``keep`` (module docstring): z(α), the variance ratio, the coverage."""
    m = outputs.shape[1]
    sd = var.clamp_min(0).sqrt()
    z = (outputs.mean(1) - mean) / (sd / math.sqrt(m))
    ratio = outputs.var(1) / var
    inside = ((outputs - mean[:, None]).abs() <= 2 * sd[:, None]).double()
    return {
        "z": z,
        "ratio": ratio,
        "rms_z": float(z[keep].pow(2).mean().sqrt()),
        "variance_ratio": float(ratio[keep].log().mean().exp()),
        "coverage": float(inside[keep].mean()),
    }


def _matches(cfg: EnsembleConfig, c: dict[str, Any], limits: Limits) -> bool:
    (v_lo, v_hi), (c_lo, c_hi) = limits.variance, limits.coverage
    return bool(c["rms_z"] <= cfg.z_max and v_lo <= c["variance_ratio"] <= v_hi and c_lo <= c["coverage"] <= c_hi)


def _judge(
    cfg: EnsembleConfig, comparisons: dict[str, list[dict[str, Any]]], limits: Limits, times: list[int]
) -> tuple[bool | None, str]:
    """The verdict (module docstring) from the per-step comparisons with each GP."""
    ntk, nngp = comparisons["ntk"], comparisons["nngp"]

    def numbers(c: dict[str, Any]) -> str:
        return f"RMS z {c['rms_z']:.2f}, variance ratio {c['variance_ratio']:.2f}, coverage {c['coverage']:.3f}"

    missed = [(t, c) for t, c in zip(times, ntk, strict=True) if not _matches(cfg, c, limits)]
    bounds = (
        f"(limits: RMS z ≤ {cfg.z_max:g}, variance ratio in [{limits.variance[0]:.2f}, {limits.variance[1]:.2f}], "
        f"coverage in [{limits.coverage[0]:.3g}, {limits.coverage[1]:.3g}])"
    )
    if missed:
        detail = "; ".join(f"step {t}: {numbers(c)}" for t, c in missed)
        return False, f"Not supported: the ensemble departs from the NTK-GP {bounds} at {detail}."
    worst = max(c["rms_z"] for c in ntk)
    text = (
        f"the ensemble matches the NTK-GP at every recorded step {bounds}; largest RMS z {worst:.2f}; at the last "
        f"step {numbers(ntk[-1])} against the NNGP's {numbers(nngp[-1])}"
    )
    if _matches(cfg, nngp[-1], limits):
        return None, f"Inconclusive: {text}, so this ensemble cannot tell the two apart at the end of training."
    return True, f"Supported: {text}, so it tells the NTK-GP from the readout-only NNGP."


def _figures(
    cfg: EnsembleConfig,
    alpha: torch.Tensor,
    times: list[int],
    outputs: torch.Tensor,
    gp: dict[str, dict[str, torch.Tensor]],
    keep: torch.Tensor,
    comparisons: dict[str, list[dict[str, Any]]],
    limits: Limits,
    y_ends: list[float],
) -> list[Figure]:
    a = alpha.cpu().numpy()
    colors = {"ntk": "C0", "nngp": "C3"}
    figs = []
    with plot_style():
        fig, axes = new_figure(ncols=len(times), panel_size=(3.5, 3.2))
        for i, (ax, t) in enumerate(zip(axes, times, strict=True)):
            out = outputs[i].cpu().numpy()
            ens_mean, ens_sd = out.mean(1), out.std(1, ddof=1)
            for name, color in colors.items():
                mu, sd = gp[name]["mean"][i].cpu().numpy(), gp[name]["var"][i].clamp_min(0).sqrt().cpu().numpy()
                ax.fill_between(a, mu - 2 * sd, mu + 2 * sd, color=color, alpha=0.15, lw=0)
                ax.plot(a, mu, color=color, lw=1.2, label=GPS[name].split(" (")[0] + " ± 2σ")
            ax.plot(a, ens_mean, "k-", lw=1.2, label=f"ensemble of {out.shape[1]} ± 2 sd")
            ax.plot(a, ens_mean - 2 * ens_sd, "k--", lw=0.8)
            ax.plot(a, ens_mean + 2 * ens_sd, "k--", lw=0.8)
            ax.plot([1.0, 0.0], y_ends, "o", color="C2", ms=5, label="training points x₁, x₂ (targets)")
            ax.set(xlabel="α", title=f"step {t}")
            if i == 0:
                ax.set_ylabel("f(α x₁ + (1 − α) x₂)")
                ax.legend(fontsize=6, loc="upper left")
        figs.append(
            Figure.from_matplotlib(
                "E4-ensemble",
                fig,
                f"Outputs of {outputs.shape[-1]} networks ({cfg.depth} hidden {cfg.activation} layers of width "
                f"{cfg.width}, NTK parameterization, σ_w² = {cfg.W_std**2:g}) trained by full-batch GD from "
                "independent initializations, on the line through two training points of different classes: "
                "ensemble mean ± 2 sample sd (black), NTK-GP of eqs. 14-15 (blue) and readout-only NNGP of "
                f"S22-S23 (red), mean ± 2σ, at {len(times)} training steps (nk.predict.gradient_descent_mse_ensemble "
                "with the analytic kernels of nk.kernel); at step 0 both GPs are the prior N(0, K) and coincide. "
                "Paper (Fig. 2): the ensemble follows the NTK-GP; the NNGP is similar but noticeably different at "
                "the end of training.",
            )
        )
        fig, axes = new_figure(ncols=3, panel_size=(3.6, 3.1))
        ticks = np.arange(len(times))
        for name, color in colors.items():
            c = comparisons[name]
            axes[0].plot(ticks, [v["rms_z"] for v in c], "o-", color=color, label=GPS[name])
            axes[1].plot(ticks, [v["variance_ratio"] for v in c], "o-", color=color)
            axes[2].plot(ticks, [v["coverage"] for v in c], "o-", color=color)
        axes[0].axhline(cfg.z_max, color="0.4", ls="--", lw=1, label=f"limit {cfg.z_max:g}")
        axes[0].set(ylabel="RMS of z = (m̄ − μ)/(σ/√M) over the path", ylim=(0, None))
        axes[0].legend(fontsize=7)
        axes[1].axhspan(*limits.variance, color="0.85", lw=0, label=f"{cfg.variance_level:.0%} χ² interval")
        axes[1].set(ylabel="variance ratio s²/σ² (geometric mean)", yscale="log")
        axes[1].legend(fontsize=7)
        axes[2].axhspan(*limits.coverage, color="0.85", lw=0)
        axes[2].axhline(0.9545, color="0.4", ls=":", lw=1)
        axes[2].set(ylabel="fraction of outputs within μ ± 2σ")
        for ax in axes:
            ax.set_xticks(ticks, [str(s) for s in times])
            ax.set_xlabel("GD step")
        figs.append(
            Figure.from_matplotlib(
                "E4-errors",
                fig,
                f"The ensemble against each GP at each step, on the {int(keep.sum())}–{keep.shape[1]} path points "
                f"where both GPs' sd is at least {cfg.sd_floor:g} of the prior sd: RMS of the normalised mean error "
                "(about 1 if the networks are distributed as the GP), geometric mean of the variance ratio (grey: "
                "the χ² interval of one point), and coverage of the individual networks' outputs by μ ± 2σ (dotted: "
                "95.4%; grey: the accepted range, the binomial interval of M networks).",
            )
        )
    return figs


def _cached_kernel_fn(
    model: nn.Module, x: torch.Tensor, path: torch.Tensor
) -> Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
    """``kernel_fn(a, b)`` for ``gradient_descent_mse_ensemble`` on the training inputs ``x`` and the ``path``: the
    analytic kernels ``nk.kernel(model, ...)`` of [x; path] computed once (one triangle), then sliced, since the
    predictor asks for the (x, x), (path, x) and (path, path) blocks. Kernels in ``x``'s dtype."""
    full = analytic_kernel(copy.deepcopy(model).to(x.dtype), torch.cat([x, path]))
    nngp, ntk = full.nngp, full.ntk
    assert nngp is not None and ntk is not None  # both were asked for
    n = x.shape[0]

    def rows(a: torch.Tensor) -> slice:
        if a is x:
            return slice(0, n)
        if a is path:
            return slice(n, None)
        raise InvalidArgumentError("this kernel_fn knows only the training inputs and the path.")

    def kernel_fn(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        i, j = rows(a), rows(b)
        return {"nngp": nngp[i, j], "ntk": ntk[i, j]}

    return kernel_fn


@register("E4", title=TITLE, claim=CLAIM, quick=QUICK, full=FULL)
def ensemble_vs_gp(cfg: EnsembleConfig, ctx: RunContext) -> ExperimentResult:
    """Run E4 (module docstring) and return its result with figures E4-ensemble and E4-errors."""
    dtype, network_dtype = getattr(torch, cfg.dtype), getattr(torch, cfg.network_dtype)
    data = ctx.load_data(task="binary", n_train=cfg.n_train, n_test=1, dtype=dtype)
    x, y = data.x_train, data.targets()[0]
    if not data.is_classification:
        raise InvalidArgumentError(f"E4's path joins training points of two classes; {data.name!r} has no classes.")
    first = [int((data.y_train == c).nonzero()[0]) for c in torch.unique(data.y_train)[:2]]
    x1, x2 = x[first[1]], x[first[0]]
    alpha = torch.linspace(*cfg.alpha_range, cfg.n_path, dtype=dtype, device=x.device)
    path = alpha[:, None] * x1 + (1 - alpha[:, None]) * x2

    def build(m: int) -> nn.Module:
        return mlp(
            x.shape[1], [cfg.width] * cfg.depth, 1, W_std=cfg.W_std, b_std=cfg.b_std, activation=cfg.activation,
            seed=ctx.derive_seed("E4", m), dtype=network_dtype, device=x.device,
        )  # fmt: skip

    models = [build(m) for m in range(cfg.n_networks)]
    kernel_fn = _cached_kernel_fn(models[0], x, path)
    lr = cfg.lr_fraction * max_learning_rate(kernel_fn(x, x)["ntk"], n_outputs=1)
    steps = sorted(set(cfg.times))
    predictor = gradient_descent_mse_ensemble(kernel_fn, x, y, lr)
    predicted = cast(  # several gets with covariances: {get: (mean, cov)}
        dict[str, tuple[torch.Tensor, torch.Tensor]],
        predictor(torch.tensor(steps, dtype=dtype), path, get=tuple(GPS), compute_cov=True),
    )
    gp = {name: {"mean": m[..., 0], "var": c.diagonal(dim1=-2, dim2=-1)} for name, (m, c) in predicted.items()}

    ensemble = Ensemble(models)
    del models
    history = train_full_batch(
        ensemble, x.to(network_dtype), y.expand(-1, cfg.n_networks).to(network_dtype), lr=lr, steps=steps[-1],
        record_steps=steps, x_eval=path.to(network_dtype),
        loss=per_network_mse, progress=lambda s: ctx.bar(s, desc="E4 ensemble GD", total=steps[-1] + 1),
    )  # fmt: skip
    if history.diverged:
        raise FloatingPointError(f"training diverged (η = {lr:.3g}); lower lr_fraction.")
    outputs = torch.stack(history.eval_outputs).to(dtype)  # (T, P, M)

    prior_sd = gp["ntk"]["var"][0].clamp_min(0).sqrt()  # √K(x, x): both GPs start at the prior
    keep = torch.stack([g["var"].clamp_min(0).sqrt() >= cfg.sd_floor * prior_sd for g in gp.values()]).all(0)
    comparisons = {
        name: [_compare(outputs[i], g["mean"][i], g["var"][i], keep[i]) for i in range(len(steps))]
        for name, g in gp.items()
    }
    limits = Limits.for_ensemble(cfg)
    supported, verdict = _judge(cfg, comparisons, limits, steps)

    rows = [
        [s, int(keep[i].sum()), history.loss[i] / cfg.n_networks]
        + [comparisons[n][i][key] for n in GPS for key in ("rms_z", "variance_ratio", "coverage")]
        for i, s in enumerate(steps)
    ]
    tables = [
        Table(
            "Ensemble against the GPs",
            ["step", "path points kept", "mean train MSE"]
            + [f"{label} {n.upper()}" for n in GPS for label in ("RMS z", "var. ratio", "coverage")],
            rows,
            f"M = {cfg.n_networks} networks, η = {lr:.4g} = {cfg.lr_fraction:g} η_max(Θ), {x.shape[0]} training "
            "points; "
            f"{cfg.n_path} path points α ∈ [{cfg.alpha_range[0]:g}, {cfg.alpha_range[1]:g}], of which those with "
            f"σ ≥ {cfg.sd_floor:g} × prior σ for both GPs are kept. Expected if the networks follow the GP: RMS z "
            f"about 1, variance ratio in [{limits.variance[0]:.2f}, {limits.variance[1]:.2f}] "
            f"({cfg.variance_level:.0%}, one point), "
            f"coverage about 0.954 (accepted: [{limits.coverage[0]:.3g}, {limits.coverage[1]:.3g}]).",
        )
    ]
    last = {n: comparisons[n][-1] for n in GPS}
    measured = (
        f"{cfg.n_networks} networks of width {cfg.width} trained {steps[-1]} steps at η = {lr:.4g}; against the "
        "NTK-GP at steps " + ", ".join(str(s) for s in steps) + ": RMS z "
        + ", ".join(f"{c['rms_z']:.2f}" for c in comparisons["ntk"]) + ", variance ratio "
        + ", ".join(f"{c['variance_ratio']:.2f}" for c in comparisons["ntk"]) + ", coverage "
        + ", ".join(f"{c['coverage']:.3f}" for c in comparisons["ntk"])
        + f"; against the NNGP at the last step RMS z {last['nngp']['rms_z']:.2f}, variance ratio "
        f"{last['nngp']['variance_ratio']:.2f}, coverage {last['nngp']['coverage']:.3f}."
    )  # fmt: skip
    metrics = {
        "learning_rate": lr,
        "steps": steps,
        "alpha": alpha,
        "endpoints": {"x1_index": first[1], "x2_index": first[0]},
        "limits": limits,
        "kept": keep,
        "train_loss_per_network": [v / cfg.n_networks for v in history.loss],
        "ensemble": {"mean": outputs.mean(-1), "var": outputs.var(-1)},
        "gp": gp,
        "comparisons": {n: [{k: v for k, v in c.items()} for c in comps] for n, comps in comparisons.items()},
    }
    y_ends = [float(y[first[1], 0]), float(y[first[0], 0])]
    return ExperimentResult(
        measured=measured,
        supported=supported,
        verdict=verdict,
        metrics=metrics,
        tables=tables,
        figures=_figures(cfg, alpha, steps, outputs, gp, keep, comparisons, limits, y_ends),
        config=run_config(cfg, data),
    )
