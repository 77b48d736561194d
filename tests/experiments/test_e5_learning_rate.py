"""E5 in a tiny configuration: the result's structure and the direction of every effect (the linearization
diverges exactly above η_max; well below it the network tracks its linearization; above it the network leaves the
linear regime), the learning-rate limits against an explicit eigendecomposition, and the verdict rule."""

import math

import pytest
import torch

from ntkit.experiments import EXPERIMENTS, RunContext
from ntkit.experiments.e5_learning_rate import (
    FULL,
    QUICK,
    LearningRateConfig,
    _judge,
    _outcome,
    learning_rate_sweep,
)

TINY = LearningRateConfig(width=256, depth=1, n_train=16, n_test=16, steps=80, ratios=(0.25, 0.5, 1.1, 2.0), n_times=6)


@pytest.fixture(scope="module")
def result():
    return learning_rate_sweep(TINY, RunContext(seed=0))


def test_structure(result):
    assert result.id == "E5" and result.status == "ok" and result.claim and result.measured
    assert [f.name for f in result.figures] == ["E5-sweep", "E5-curves"]
    assert all(f.png.startswith(b"\x89PNG") and f.caption for f in result.figures)
    (table,) = result.tables
    runs = result.metrics["runs"]
    assert len(table.rows) == len(runs) == len(TINY.ratios) + 1  # the grid and η_critical
    assert [r["lr"] for r in runs] == sorted(r["lr"] for r in runs)
    assert all(len(r["loss_curve"]) == TINY.steps + 1 or r["outcome"] == "diverged" for r in runs)


def test_learning_rate_limits_are_those_of_the_kernel_spectrum(result):
    """η_max = N/λ_max and η_critical = N/(λ_min + λ_max) for MSELoss(mean) with one output (theory.md §2.7)."""
    m, n = result.metrics, TINY.n_train
    assert m["max_learning_rate"] == pytest.approx(n / m["lambda_max"], rel=1e-12)
    assert m["critical_learning_rate"] == pytest.approx(n / (m["lambda_min"] + m["lambda_max"]), rel=1e-12)
    assert 0 < m["lambda_min"] < m["lambda_max"] and m["critical_over_max"] < 1
    assert any(r["lr"] == m["critical_learning_rate"] for r in m["runs"])


def test_the_linearization_diverges_exactly_above_eta_max(result):
    lr_max = result.metrics["max_learning_rate"]
    for r in result.metrics["runs"]:
        assert r["linear_diverged"] == (r["lr"] > lr_max), r["ratio"]
        if r["lr"] < lr_max:  # every eigenmode contracts: the loss falls
            assert r["linear_loss_final"] < r["linear_loss"][0]


def test_the_network_tracks_its_linearization_well_below_eta_max_and_leaves_it_above(result):
    runs = result.metrics["runs"]
    below = [r for r in runs if r["ratio"] <= 0.5]
    above = [r for r in runs if r["ratio"] > 1]
    assert all(r["rmse_relative"] < 0.1 and r["outcome"] != "diverged" for r in below)
    assert max(r["ntk_change"] for r in below) < min(r["ntk_change"] for r in above if math.isfinite(r["ntk_change"]))
    for r in above:  # a network that still converges did so only once η was stable for its final kernel
        assert r["outcome"] != "converged" or r["lr"] < r["max_lr_final"]
        assert not r["rmse_relative"] < 0.1


def test_verdict_is_the_rule_applied_to_the_reported_runs(result):
    m = result.metrics
    supported, verdict = _judge(m["runs"], m["max_learning_rate"], m["critical_learning_rate"], TINY)
    assert (supported, verdict) == (result.supported, result.verdict)


def _run(ratio, *, rel=0.01, linear_diverged=None, outcome="converged", max_lr_final=None):
    return {
        "lr": ratio,
        "ratio": ratio,
        "rmse_relative": rel,
        "linear_diverged": ratio > 1 if linear_diverged is None else linear_diverged,
        "outcome": outcome,
        "max_lr_final": 2 * ratio if max_lr_final is None else max_lr_final,
    }


@pytest.mark.parametrize(
    ("runs", "expected"),
    [
        ([_run(0.5), _run(0.99), _run(2.0)], True),
        ([_run(0.5), _run(0.99, rel=0.5), _run(2.0)], None),  # misses only in the edge band: undecided
        ([_run(0.5, rel=0.5), _run(0.99), _run(2.0)], False),  # well below η_max and far from the linearization
        ([_run(0.5), _run(0.99), _run(2.0, linear_diverged=False)], False),  # the exact rule broken
        ([_run(0.5), _run(0.99), _run(2.0, max_lr_final=1.5)], False),  # converged at a rate unstable for it
        ([_run(0.5), _run(0.99), _run(2.0, outcome="diverged", max_lr_final=math.nan)], True),
        ([_run(0.5), _run(0.99)], None),  # nothing above η_max
    ],
)
def test_judge_cases(runs, expected):
    supported, verdict = _judge(runs, 1.0, 0.995, TINY)
    assert supported is expected
    assert verdict.split(":")[0] == {True: "Supported", None: "Inconclusive", False: "Not supported"}[expected]


def test_outcomes():
    assert _outcome([1.0, 0.5, 0.05], 0.1) == "converged"
    assert _outcome([1.0, 0.5, 0.2], 0.1) == "stalled"
    assert _outcome([1.0, 50.0, 1.5], 0.1) == "diverged"
    assert _outcome([1.0, math.inf], 0.1) == "diverged"


def test_registered_with_quick_and_full_configurations():
    exp = EXPERIMENTS["E5"]
    assert exp.quick is QUICK and exp.full is FULL and exp.fn is learning_rate_sweep
    for cfg in (QUICK, FULL):
        assert min(cfg.ratios) < 1 - cfg.edge_band and max(cfg.ratios) >= 3 and any(1 < r < 1.1 for r in cfg.ratios)
    assert QUICK.width <= FULL.width and QUICK.steps <= FULL.steps


def test_circle_dataset_regression_targets():
    cfg = LearningRateConfig(width=64, depth=1, n_train=8, n_test=4, steps=10, ratios=(0.5, 2.0), n_times=3)
    r = learning_rate_sweep(cfg, RunContext(dataset="circle"))
    assert r.status == "ok" and r.config["classes"] is None and torch.isfinite(torch.tensor(r.metrics["lambda_max"]))
