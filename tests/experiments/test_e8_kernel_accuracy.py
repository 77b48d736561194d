"""E8 in a tiny configuration: the result's structure, accuracies well above chance, the infinite-width predictions
against independent closed-form computations (a linear solve for t = ∞, the eigendecomposition of eq. 14 for the
NTK-GP mean at step T), the GP draws' statistics, and the verdict rule."""

import math

import pytest
import torch

import ntkit as nk
from ntkit.experiments import EXPERIMENTS, RunContext
from ntkit.experiments.e8_kernel_accuracy import (
    FULL,
    QUICK,
    KernelAccuracyConfig,
    _judge,
    _network,
    _reference,
    gp_draws,
    kernel_accuracy,
    mse,
)

TINY = KernelAccuracyConfig(widths=(32, 512), repeats=2, n_train=64, n_test=120, steps=150, n_draws=60)


@pytest.fixture(scope="module")
def result():
    return kernel_accuracy(TINY, RunContext(seed=0))


def test_structure(result):
    assert result.id == "E8" and result.status == "ok" and result.claim and result.measured
    assert [f.name for f in result.figures] == ["E8-accuracy"]
    assert result.figures[0].png.startswith(b"\x89PNG") and result.figures[0].caption
    assert [t.title for t in result.tables] == ["Infinite-width predictors", "Trained networks per width"]
    m = result.metrics
    assert set(m["networks"]) == set(m["ensembles"]) == {"32", "512"}
    assert len(m["per_network"]) == 4
    assert result.config["dataset"] == "digits" and result.config["n_train"] == 64 and result.config["n_test"] == 120


def test_accuracies_well_above_chance(result):
    """10 classes: chance is 0.1. The kernel predictors on 64 digits reach about 0.9; a trained network is one draw
    of the NTK-GP, whose initial-function noise stays in its outputs: about 0.45 here; 0.7 and 0.2 leave room for
    seeds."""
    m = result.metrics
    assert m["nngp_inf"]["accuracy"] > 0.7 and m["ntk_inf"]["accuracy"] > 0.7 and m["ntk_t"]["accuracy"] > 0.7
    assert all(r["accuracy"] > 0.2 for r in m["per_network"]) and m["gp_draw"]["accuracy"] > 0.2
    # averaging networks (or draws) averages out part of that noise: the ensemble's MSE is below its members'
    for w in ("32", "512"):
        assert m["ensembles"][w]["mse"] < m["networks"][w]["mse"]
    assert m["gp_draw"]["ensemble_mse"] < m["gp_draw"]["expected_mse"]


@pytest.fixture(scope="module")
def reference():
    ctx = RunContext(seed=0)
    data = ctx.load_data(task="multiclass", n_train=TINY.n_train, n_test=TINY.n_test)
    y, _ = data.targets()
    net = _network(TINY, ctx, 1, 0, data.x_train, y.shape[1])
    return _reference(TINY, ctx, net, data.x_train, y, data.x_test), net, data, y


def test_infinite_time_predictions_equal_a_linear_solve(reference):
    """t = ∞ NTK and NNGP means against k(x, X) k⁻¹ Y by torch.linalg.solve (float64; 1e-8 relative: the
    kernels' condition numbers are about 1e3-1e4)."""
    ref, net, data, y = reference
    k_train, k_test = nk.kernel(net, data.x_train), nk.kernel(net, data.x_test, data.x_train)
    for name, mean in (("ntk", ref.ntk_inf), ("nngp", ref.nngp_inf)):
        expected = getattr(k_test, name) @ torch.linalg.solve(getattr(k_train, name), y)
        torch.testing.assert_close(mean, expected, rtol=1e-8, atol=1e-10)


def test_ntk_gp_mean_at_step_t_equals_eq14_for_discrete_steps(reference):
    """μ_T = Θ(x, X) Θ⁻¹ (I − (I − cΘ)^T) Y with c = 2η/(N k) (``torch.optim.SGD`` on ``MSELoss`` mean), by an
    eigendecomposition written out here; and the learning rate is ½ · N k / λ_max(Θ)."""
    ref, net, data, y = reference
    n, k = y.shape
    theta = nk.kernel(net, data.x_train).ntk
    theta_test = nk.kernel(net, data.x_test, data.x_train).ntk
    evals, evecs = torch.linalg.eigh(theta)
    assert ref.lr == pytest.approx(TINY.lr_fraction * n * k / float(evals.max()), rel=1e-10)
    c = 2 * ref.lr / (n * k)
    # 1 − (1 − cλ)^T, accurate at small cλ; cλ_max = 1 up to round-off (η = ½ η_max), so clamp it to 1
    factor = -torch.expm1(TINY.steps * torch.log1p(-(c * evals).clamp(max=1.0))) / evals
    expected = theta_test @ (evecs * factor) @ evecs.T @ y
    torch.testing.assert_close(ref.mean_t, expected, rtol=1e-8, atol=1e-10)


def test_gp_draws_have_the_mean_and_covariance():
    """4000 draws of a 4-point GP with 2 outputs: sample mean and covariance within 5 standard errors of a
    sample mean (√(Σ_ii / n)) and of a sample covariance (about √((Σ_ii Σ_jj + Σ_ij²) / n))."""
    a = torch.randn(4, 4, dtype=torch.float64)
    cov = a @ a.T + 0.1 * torch.eye(4, dtype=torch.float64)
    mean = torch.randn(4, 2, dtype=torch.float64)
    n = 4000
    draws = gp_draws(mean, cov, n, seed=1)
    assert draws.shape == (n, 4, 2)
    d = cov.diagonal()
    assert ((draws.mean(0) - mean).abs() <= 5 * (d / n).sqrt().unsqueeze(1)).all()
    for j in range(2):
        centred = draws[:, :, j] - draws[:, :, j].mean(0)
        sample = centred.T @ centred / (n - 1)
        se = ((torch.outer(d, d) + cov**2) / n).sqrt()
        assert ((sample - cov).abs() <= 5 * se).all()


def test_expected_mse_of_a_draw_matches_the_draws(result):
    """E‖f − y‖² / (M k) = mean((μ − y)²) + mean(diag Σ), exact; the mean over 60 draws lies within 4 standard
    errors (sd / √60) of it."""
    gp = result.metrics["gp_draw"]
    assert abs(gp["draws_mse"] - gp["expected_mse"]) <= 4 * gp["mse_sd"] / math.sqrt(TINY.n_draws)
    assert mse(torch.zeros(3, 2), torch.ones(3, 2)) == 1.0


def test_verdict_is_the_rule_applied_to_the_reported_numbers(result):
    assert _judge(TINY, result.metrics) == (result.supported, result.verdict)


def _numbers(narrow_mse, wide_mse, wide_acc, kernel_acc):
    return {
        "networks": {"32": {"mse": narrow_mse, "accuracy": 0.6}, "512": {"mse": wide_mse, "accuracy": wide_acc}},
        "gp_draw": {"expected_mse": 0.1, "mse_sd": 0.01, "accuracy": 0.6, "accuracy_sd": 0.02},
        "nngp_inf": {"accuracy": kernel_acc},
        "ntk_inf": {"accuracy": kernel_acc},
    }


@pytest.mark.parametrize(
    ("numbers", "expected"),
    [
        (_numbers(0.07, 0.098, 0.61, 0.9), True),
        (_numbers(0.07, 0.12, 0.61, 0.9), False),  # 20% off the GP's MSE at the widest width (allowed ~6.4%)
        (_numbers(0.099, 0.095, 0.61, 0.9), False),  # the gap does not shrink with width
        (_numbers(0.07, 0.098, 0.70, 0.9), False),  # accuracy 0.1 off a GP draw's (allowed ~0.048)
        (_numbers(0.07, 0.098, 0.61, 0.55), False),  # kernel predictors below the networks
    ],
)
def test_judge_cases(numbers, expected):
    supported, verdict = _judge(TINY, numbers)
    assert supported is expected
    assert verdict.startswith("Supported" if expected else "Not supported")


def test_registered_with_quick_and_full_configurations():
    exp = EXPERIMENTS["E8"]
    assert exp.quick is QUICK and exp.full is FULL and exp.fn is kernel_accuracy
    assert max(QUICK.widths) < max(FULL.widths) and QUICK.steps <= FULL.steps
    assert math.isclose(QUICK.W_std**2, 2.0) and math.isclose(QUICK.b_std**2, 0.1)


def test_regression_data_set_is_refused():
    with pytest.raises(ValueError, match="classification"):
        kernel_accuracy(TINY, RunContext(dataset="circle"))
