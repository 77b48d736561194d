"""E7 in a tiny configuration: the result's structure and the direction of every effect (the standard network at
η/n is the NTK network with S37's rates to round-off; it approaches the n → ∞ limit of those rates as the width
grows, while the NTK network at a uniform η stays apart; the accuracies are similar), S37's rates against a
hand-computed gradient step, and the verdict rule."""

import math

import pytest
import torch

from ntkit.experiments import EXPERIMENTS, RunContext, SlopeFit, dense_layers, mlp, standard_from_ntk
from ntkit.experiments.e7_parameterization import (
    FULL,
    QUICK,
    ParameterizationConfig,
    _judge,
    limit_rates,
    parameterizations,
    s37_rates,
)

TINY = ParameterizationConfig(
    widths=(16, 64, 256), depth=1, n_train=16, n_test=16, steps=40, n_times=5, sweep_width=64, sweep_n_train=48,
    sweep_steps=30, sweep_lrs=(8.0, 32.0, 4096.0),
)  # fmt: skip


@pytest.fixture(scope="module")
def result():
    return parameterizations(TINY, RunContext(seed=0))


def test_structure(result):
    assert result.id == "E7" and result.status == "ok" and result.claim and result.measured
    assert [f.name for f in result.figures] == ["E7-dynamics", "E7-accuracy"]
    assert all(f.png.startswith(b"\x89PNG") and f.caption for f in result.figures)
    assert [len(t.rows) for t in result.tables] == [3, 3]
    runs = result.metrics["runs"]
    assert [r["width"] for r in runs] == [16, 64, 256]
    assert all(len(r["loss_curves"][name]) == TINY.steps + 1 for r in runs for name in r["loss_curves"])
    assert set(result.metrics["slopes"]) == {"plain", "limit"}


def test_directions(result):
    runs = result.metrics["runs"]
    assert all(r["exact"] < 1e-12 for r in runs)  # standard(η/n) = NTK with S37 rates, float64 round-off
    limit = [r["rmse_limit"] for r in runs]
    assert limit[-1] < 0.25 * limit[0] and result.metrics["slopes"]["limit"]["slope"] < -0.5  # S37: O(1/n)
    plain = [r["rmse_plain"] for r in runs]
    assert plain[-1] > 0.5 * plain[0] and plain[-1] > 3 * limit[-1]  # NTK at a uniform η stays apart
    for r in runs:  # everything trains
        assert all(c[-1] < 0.5 * c[0] for c in r["loss_curves"].values())
    # at the largest width the NTK network at η is the fastest: its readout moves σ_w² times faster, and its input
    # layer and biases, frozen in the limit, add to its kernel (at width 16 the standard input layer is faster)
    curves = runs[-1]["loss_curves"]
    assert curves["ntk"][-1] < curves["standard"][-1]
    sweep = result.metrics["sweep"]
    assert sweep["ntk"]["trained"][:2] == [True, True] and sweep["standard"]["trained"][:2] == [True, True]
    assert not sweep["ntk"]["trained"][-1] and not sweep["standard"]["trained"][-1]  # η = 4096 is far too large


def test_verdict_is_the_rule_applied_to_the_reported_numbers(result):
    fits = {k: SlopeFit(v["slope"], 0.0, 0.0, v["ci_low"], v["ci_high"], v["r2"], 3, 0.95)
            for k, v in result.metrics["slopes"].items()}  # fmt: skip
    supported, verdict, numbers = _judge(TINY, result.metrics["runs"], fits, result.metrics["sweep"])
    assert (supported, verdict) == (result.supported, result.verdict)
    assert numbers == result.metrics["verdict_numbers"]


def test_s37_rates_reproduce_a_standard_gradient_step():
    """One SGD step of the standard network at η/n, by hand (W ← W − (η/n) ∂L/∂W), against one step of the NTK
    network with S37's rates, compared in the effective weights W = (σ_w/√n_in) ω, b = σ_b β."""
    x, y = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 1, dtype=torch.float64)
    ntk = mlp(5, [24, 24], 1, W_std=1.3, b_std=0.4, seed=3)
    std = standard_from_ntk(ntk)
    lr, n = 0.7, 24
    loss = torch.nn.functional.mse_loss(std(x), y)
    grads = torch.autograd.grad(loss, list(std.parameters()))
    expected = [p.detach() - lr / n * g for p, g in zip(std.parameters(), grads, strict=True)]
    rates = s37_rates(ntk, lr, n)
    opt = torch.optim.SGD([{"params": [p], "lr": rates[name]} for name, p in ntk.named_parameters()])
    torch.nn.functional.mse_loss(ntk(x), y).backward()
    opt.step()
    got = [
        t
        for _, m in dense_layers(ntk)
        for t in (m.W_std / math.sqrt(m.in_features) * m.weight.detach(), m.b_std * m.bias.detach())
    ]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_limit_rates():
    """The n → ∞ limit of S37's rates: the hidden and readout weights keep S37's η/σ_w² (their fan-in is the width),
    the input layer (fan-in 5) and the biases (rates ∝ 1/n) stop."""
    net = mlp(5, [24, 24], 1, W_std=1.3, b_std=0.4, seed=3)
    rates, s37 = limit_rates(net, 0.7), s37_rates(net, 0.7, 24)
    assert rates == pytest.approx({"0.weight": 0, "0.bias": 0, "2.weight": 0.7 / 1.69, "2.bias": 0,
                                   "4.weight": 0.7 / 1.69, "4.bias": 0}, rel=1e-14)  # fmt: skip
    assert s37["2.weight"] == pytest.approx(rates["2.weight"]) and s37["4.weight"] == pytest.approx(rates["4.weight"])
    assert s37["0.weight"] == pytest.approx(0.7 * 5 / (24 * 1.69)) and s37["0.bias"] == pytest.approx(0.7 / (24 * 0.16))


def _numbers_case(exact=1e-15, ci_high=-0.3, acc=(0.9, 0.89), trained=((True, True, False), (True, True, False))):
    runs = [{"exact": exact}]
    fits = {"limit": SlopeFit(-1.0, 0, 0.1, -1.7, ci_high, 0.9, 4, 0.95), "plain": SlopeFit(0.1, 0, 0.1, -0.4, 0.6, 0.1,
            4, 0.95)}  # fmt: skip
    sweep = {name: {"test_acc": [a - 0.1, a, 0.1], "trained": list(t)} for name, a, t in zip(("ntk", "standard"), acc,
             trained, strict=True)}  # fmt: skip
    return runs, fits, sweep


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ({}, True),
        ({"exact": 1e-6}, False),
        ({"ci_high": 0.1}, False),
        ({"acc": (0.9, 0.8)}, False),
        ({"trained": ((True, True, True), (True, False, False))}, False),  # stable ranges two grid steps apart
        ({"trained": ((True, True, True), (True, True, False))}, True),  # one grid step apart
    ],
)
def test_judge_cases(case, expected):
    supported, verdict, _ = _judge(TINY, *_numbers_case(**case))
    assert supported is expected and verdict.startswith("Supported" if expected else "Not supported")
    assert "not expected to vanish" in verdict


def test_regression_data_set_is_rejected():
    with pytest.raises(ValueError, match="classification"):
        parameterizations(TINY, RunContext(dataset="circle"))


def test_registered_with_quick_and_full_configurations():
    exp = EXPERIMENTS["E7"]
    assert exp.quick is QUICK and exp.full is FULL and exp.fn is parameterizations
    for cfg in (QUICK, FULL):
        assert len(cfg.widths) >= 4 and len(cfg.sweep_lrs) >= 5
    assert max(QUICK.widths) < max(FULL.widths) == 2048 and QUICK.steps <= FULL.steps
