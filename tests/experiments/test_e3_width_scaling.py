"""E3 in a tiny configuration: the result's structure, and the direction of every effect (weights and kernels
move less in wider networks, hidden layers fall faster than the input/output layers, the network ends closer to
its linearization), the linearization's outputs against an explicitly trained ``nk.linearize``, plus the verdict
rule."""

import math

import pytest
import torch

import ntkit as nk
from ntkit.experiments import EXPERIMENTS, RunContext, SlopeFit, train_full_batch
from ntkit.experiments.e3_width_scaling import (
    FULL,
    KERNEL_EXPECTED,
    QUICK,
    RMSE_EXPECTED,
    WidthScalingConfig,
    _initial,
    _judge,
    _network,
    width_scaling,
)
from ntkit.experiments.kernels import blocked_ntk

TINY = WidthScalingConfig(
    widths=(16, 64, 256), depth=2, n_train=16, n_kernel=8, n_test=8, steps=24, n_times=4, repeats=1
)


@pytest.fixture(scope="module")
def result():
    return width_scaling(TINY, RunContext(seed=0))


def test_structure(result):
    assert result.id == "E3" and result.status == "ok" and result.claim
    assert [f.name for f in result.figures] == ["E3-weights", "E3-kernels", "E3-rmse"]
    assert all(f.png.startswith(b"\x89PNG") and f.caption for f in result.figures)
    assert [t.title for t in result.tables] == ["Fitted slopes", "Relative changes and linearization error per width"]
    slopes = result.metrics["slopes"]
    assert set(slopes) == {"layer 1 (input)", "layer 2 (hidden)", "layer 3 (readout)", "ntk", "nngp", "rmse"}
    assert len(result.metrics["runs"]) == 3 and result.metrics["per_width"]["widths"] == [16, 64, 256]
    assert result.config["dataset"] == "digits" and result.config["classes"] == [3, 5]
    assert result.measured.startswith("Fitted log-log slopes over widths 16–256")


def test_direction_of_the_effects(result):
    pw = result.metrics["per_width"]
    for name in ("layer 1 (input)", "layer 2 (hidden)", "layer 3 (readout)", "ntk", "nngp", "rmse"):
        assert pw[name][-1] < pw[name][0], name  # less change (closer to the linearization) at width 256 than at 16
        assert result.metrics["slopes"][name]["slope"] < 0, name
    s = result.metrics["slopes"]
    # the hidden layer's change falls faster than the input and readout layers' (≈ -1 against ≈ -1/2)
    assert s["layer 2 (hidden)"]["slope"] < s["layer 1 (input)"]["slope"] - 0.2
    assert s["layer 2 (hidden)"]["slope"] < s["layer 3 (readout)"]["slope"] - 0.2
    # training made progress at every width, at one learning rate below every network's largest stable one
    runs = result.metrics["runs"]
    assert all(r["loss_final"] < 0.5 * r["loss_initial"] for r in runs)
    lr = result.metrics["learning_rate"]
    assert lr == pytest.approx(TINY.lr_fraction * min(r["max_lr"] for r in runs), rel=1e-12)
    # the RMSE starts at 0 (same θ0) and is recorded at every step after it; the last is the reported one
    assert all(len(r["rmse_over_time"]) == len(result.metrics["record_steps"]) - 1 for r in runs)
    assert all(r["rmse_over_time"][-1] == r["rmse"] for r in runs)


def test_linearization_outputs_equal_an_explicitly_trained_linearized_network():
    """E3's closed form (gradient_descent_mse with the network's Θ̂_0 on train and test points) against training
    nk.linearize(network) with the same SGD loop: equal to float64 round-off (1e-9 relative over 24 steps)."""
    ctx = RunContext(seed=0)
    data = ctx.load_data(task="binary", n_train=TINY.n_train, n_test=TINY.n_test)
    x, y, x_test = data.x_train, data.targets()[0], data.x_test
    init = _initial(TINY, _network(TINY, ctx, 64, 0, x, 1), x, x_test, 1)
    lr, n = 0.5 * init.max_lr, x.shape[0]
    _, predicted = nk.predict.gradient_descent_mse(init.ntk[:n, :n], y, lr)(
        [0, 5, 24], init.outputs[:n], init.outputs[n:], init.ntk[n:, :n]
    )
    lin = nk.linearize(_network(TINY, ctx, 64, 0, x, 1))
    trained = train_full_batch(lin, x, y, lr=lr, steps=24, record_steps=[0, 5, 24], x_eval=x_test).eval_outputs
    torch.testing.assert_close(torch.stack(trained), predicted, rtol=1e-9, atol=1e-12)


def test_verdict_is_the_rule_applied_to_the_reported_slopes(result):
    fits = {
        n: SlopeFit(v["slope"], 0.0, 0.0, v["ci_low"], v["ci_high"], v["r2"], 3, 0.95)
        for n, v in result.metrics["slopes"].items()
    }
    supported, verdict, outcome = _judge(fits, result.metrics["expected_slopes"])
    assert (supported, verdict, outcome) == (result.supported, result.verdict, result.metrics["outcome"])


def _fit(slope, half):
    return SlopeFit(slope, 0.0, half / 2, slope - half, slope + half, 0.99, 7, 0.95)


@pytest.mark.parametrize(
    ("layer", "kernel", "rmse", "expected"),
    [
        (_fit(-0.52, 0.1), _fit(-0.8, 0.1), _fit(-0.9, 0.2), True),
        (_fit(-0.52, 0.1), _fit(-0.8, 0.1), _fit(-1.6, 0.2), True),  # an RMSE faster than n^-1 meets the bound
        (_fit(-0.52, 0.6), _fit(-0.8, 0.1), _fit(-0.9, 0.2), None),  # interval holds both -1/2 and -1
        (_fit(-0.52, 0.1), _fit(-0.3, 0.4), _fit(-0.9, 0.2), None),  # kernel interval reaches 0
        (_fit(-0.52, 0.1), _fit(-0.8, 0.1), _fit(-0.5, 0.6), None),  # RMSE interval reaches 0
        (_fit(-0.2, 0.05), _fit(-0.8, 0.1), _fit(-0.9, 0.2), False),  # layer far from -1/2
        (_fit(-0.52, 0.1), _fit(-1.6, 0.1), _fit(-0.9, 0.2), False),  # kernel falls faster than n^-1
        (_fit(-0.52, 0.1), _fit(-0.8, 0.1), _fit(-0.2, 0.1), False),  # RMSE falls slower than the n^-1/2 bound
    ],
)
def test_judge_cases(layer, kernel, rmse, expected):
    fits = {"in": layer, "ntk": kernel, "rmse": rmse}
    supported, verdict, _ = _judge(fits, {"in": -0.5, "ntk": KERNEL_EXPECTED, "rmse": RMSE_EXPECTED})
    assert supported is expected
    assert verdict.split(":")[0] == {True: "Supported", None: "Inconclusive", False: "Not supported"}[expected]


def test_registered_with_quick_and_full_configurations():
    exp = EXPERIMENTS["E3"]
    assert exp.quick is QUICK and exp.full is FULL and exp.fn is width_scaling
    assert max(QUICK.widths) <= 512 < max(FULL.widths) == 2**11 and min(FULL.widths) == 2**5
    assert QUICK.steps <= FULL.steps and math.isclose(QUICK.W_std**2, 2.0)


def test_circle_dataset_regression_targets():
    cfg = WidthScalingConfig(widths=(16, 64), depth=1, n_train=8, n_kernel=4, steps=4, n_times=2, repeats=1)
    r = width_scaling(cfg, RunContext(dataset="circle"))
    assert r.status == "ok" and r.config["dataset"] == "circle" and r.config["classes"] is None


def test_blocked_kernel_equals_the_one_call_kernel():
    """Blocks of 3 points (the last one shorter) assemble the same Θ̂ as one call, to float64 round-off."""
    net = _network(TINY, RunContext(seed=0), 16, 0, torch.zeros(1, 5, dtype=torch.float64), 2)
    x = torch.randn(8, 5, dtype=torch.float64)
    torch.testing.assert_close(blocked_ntk(net, x, 3), nk.empirical_ntk(net, x), rtol=1e-12, atol=1e-12)
    assert torch.equal(blocked_ntk(net, x, None), nk.empirical_ntk(net, x))
