"""E3 in a tiny configuration: the result's structure, and the direction of every effect (weights and kernels
move less in wider networks, hidden layers fall faster than the input/output layers), plus the verdict rule."""

import math

import pytest

from ntkit.experiments import EXPERIMENTS, RunContext, SlopeFit
from ntkit.experiments.e3_width_scaling import FULL, QUICK, WidthScalingConfig, _judge, width_scaling

TINY = WidthScalingConfig(widths=(16, 64, 256), depth=2, n_train=16, n_kernel=8, steps=24, n_times=4, repeats=1)


@pytest.fixture(scope="module")
def result():
    return width_scaling(TINY, RunContext(seed=0))


def test_structure(result):
    assert result.id == "E3" and result.status == "ok" and result.claim
    assert [f.name for f in result.figures] == ["E3-weights", "E3-kernels"]
    assert all(f.png.startswith(b"\x89PNG") and f.caption for f in result.figures)
    assert [t.title for t in result.tables] == ["Fitted slopes", "Relative changes per width"]
    slopes = result.metrics["slopes"]
    assert set(slopes) == {"layer 1 (input)", "layer 2 (hidden)", "layer 3 (readout)", "ntk", "nngp"}
    assert len(result.metrics["runs"]) == 3 and result.metrics["per_width"]["widths"] == [16, 64, 256]
    assert result.config["dataset"] == "digits" and result.config["classes"] == [3, 5]
    assert result.measured.startswith("Fitted log-log slopes over widths 16–256")


def test_direction_of_the_effects(result):
    pw = result.metrics["per_width"]
    for name in ("layer 1 (input)", "layer 2 (hidden)", "layer 3 (readout)", "ntk", "nngp"):
        assert pw[name][-1] < pw[name][0], name  # less change at width 256 than at 16
        assert result.metrics["slopes"][name]["slope"] < 0, name
    s = result.metrics["slopes"]
    # the hidden layer's change falls faster than the input and readout layers' (≈ -1 against ≈ -1/2)
    assert s["layer 2 (hidden)"]["slope"] < s["layer 1 (input)"]["slope"] - 0.2
    assert s["layer 2 (hidden)"]["slope"] < s["layer 3 (readout)"]["slope"] - 0.2
    # training made progress at every width
    assert all(r["loss_final"] < 0.5 * r["loss_initial"] for r in result.metrics["runs"])


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
    ("layer", "kernel", "expected"),
    [
        (_fit(-0.52, 0.1), _fit(-0.8, 0.1), True),
        (_fit(-0.52, 0.6), _fit(-0.8, 0.1), None),  # interval holds both -1/2 and -1
        (_fit(-0.52, 0.1), _fit(-0.3, 0.4), None),  # kernel interval reaches 0
        (_fit(-0.2, 0.05), _fit(-0.8, 0.1), False),  # layer far from -1/2
        (_fit(-0.52, 0.1), _fit(-1.6, 0.1), False),  # kernel falls faster than n^-1
    ],
)
def test_judge_cases(layer, kernel, expected):
    supported, verdict, _ = _judge({"in": layer, "ntk": kernel}, {"in": -0.5, "ntk": None})
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
