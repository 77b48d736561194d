"""E6 in a tiny configuration: the result's structure and the direction of every effect (the network and its
linearization agree in accuracy and predicted classes, their logits differ less at larger width, the full-batch
function-space prediction is the trained linearization to round-off), the consistency check's power to detect a
wrong convention, and the verdict rule."""

import copy
import math

import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit.errors import InvalidArgumentError
from ntkit.experiments import EXPERIMENTS, RunContext, mlp, train_side_by_side
from ntkit.experiments.e6_momentum_cross_entropy import (
    FULL,
    MODELS,
    QUICK,
    MomentumConfig,
    _judge,
    momentum_cross_entropy,
    side_by_side_classification,
)

TINY = MomentumConfig(
    widths=(32, 128), depth=1, n_train=96, n_test=64, steps=30, batch_size=32, n_times=5, fb_widths=(16, 64),
    fb_n_train=8, fb_steps=20,
)  # fmt: skip


@pytest.fixture(scope="module")
def result():
    return momentum_cross_entropy(TINY, RunContext(seed=0))


def test_structure(result):
    assert result.id == "E6" and result.status == "ok" and result.claim and result.measured
    assert [f.name for f in result.figures] == ["E6-side-by-side", "E6-width-and-full-batch"]
    assert all(f.png.startswith(b"\x89PNG") and f.caption for f in result.figures)
    assert [len(t.rows) for t in result.tables] == [2, 2 * len(result.metrics["full_batch"][0]["steps"])]
    run = result.metrics["runs"][-1]
    assert run["width"] == 128 and run["steps"] == result.metrics["record_steps"]
    watch = torch.tensor(run["network"]["watch"])
    assert watch.shape == (len(run["steps"]), TINY.n_watch, 10)
    assert result.config["n_train"] == 96 and result.config["dataset"] == "digits"


def test_the_two_models_start_equal_and_train(result):
    for run in result.metrics["runs"]:
        assert run["test_rmse"][0] < 1e-12  # same θ0
        for name in MODELS:
            assert run[name]["train_loss"][-1] < 0.5 * run[name]["train_loss"][0]
            assert run[name]["test_acc"][-1] > 0.6


def test_directions(result):
    numbers = result.metrics["verdict_numbers"]
    assert numbers["consistency"] < 1e-12  # float64 round-off over 20 steps
    # width 128 on 64 test points: loose bounds (the verdict's 0.02 / 0.95 are for the real configurations)
    assert numbers["test_acc_diff"] <= 0.1 and numbers["agreement"] >= 0.8
    rel = numbers["relative_logit_rmse"]
    assert rel["128"] < rel["32"]
    fb = numbers["full_batch_relative_rmse"]
    assert fb["64"] < fb["16"]


def test_verdict_is_the_rule_applied_to_the_reported_numbers(result):
    supported, verdict, numbers = _judge(TINY, result.metrics["runs"], result.metrics["full_batch"])
    assert (supported, verdict, numbers) == (result.supported, result.verdict, result.metrics["verdict_numbers"])


def test_the_consistency_check_detects_a_wrong_momentum():
    """The prediction with the loop's momentum matches the trained linearization to round-off (1e-12 relative over
    15 steps); with momentum 0 it misses by orders of magnitude more than the verdict's 1e-9 tolerance."""
    torch.manual_seed(0)
    x, labels = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    net = mlp(5, [32], 3, seed=1)
    ntk = nk.empirical_ntk(net, x, trace_outputs=False)
    with torch.no_grad():
        f0 = net(x)
    lin = nk.linearize(net)
    hist = train_side_by_side(
        {"lin": lin}, x, labels, lr=0.5, momentum=0.9, steps=15, record_steps=[15],
        on_record=lambda _, ms: ms["lin"](x).detach(),
    )  # fmt: skip
    scale = hist.records[0].abs().max()
    for beta, close in ((0.9, True), (0.0, False)):
        pred = nk.predict.gradient_descent(nn.CrossEntropyLoss(), ntk, labels, 0.5, momentum=beta)(15, f0)
        err = float((pred - hist.records[0]).abs().max() / scale)
        assert (err < 1e-12) if close else (err > 1e-3), (beta, err)


def _run(width, rel, *, acc=(0.95, 0.95), agreement=0.99):
    return {
        "width": width,
        "network": {"train_acc": [1.0], "test_acc": [acc[0]]},
        "linearized": {"train_acc": [1.0], "test_acc": [acc[1]]},
        "test_rmse": [rel],
        "logit_scale": [1.0],
        "agreement": [agreement],
    }


def _fb(width, rel, consistency=1e-15):
    return {"width": width, "consistency": [consistency], "network_rmse": [rel], "logit_scale": [1.0]}


@pytest.mark.parametrize(
    ("runs", "fbs", "expected"),
    [
        ([_run(64, 0.5), _run(256, 0.2)], [_fb(16, 0.5), _fb(64, 0.3)], True),
        ([_run(64, 0.5), _run(256, 0.2)], [_fb(16, 0.5), _fb(64, 0.3, consistency=1e-6)], False),
        ([_run(64, 0.5), _run(256, 0.2, acc=(0.95, 0.91))], [_fb(16, 0.5), _fb(64, 0.3)], False),
        ([_run(64, 0.5), _run(256, 0.2, agreement=0.9)], [_fb(16, 0.5), _fb(64, 0.3)], False),
        ([_run(64, 0.5), _run(256, 0.6)], [_fb(16, 0.5), _fb(64, 0.3)], False),  # no fall with width
        ([_run(64, 0.5), _run(256, 0.2)], [_fb(16, 0.3), _fb(64, 0.5)], False),
    ],
)
def test_judge_cases(runs, fbs, expected):
    supported, verdict, _ = _judge(TINY, runs, fbs)
    assert supported is expected and verdict.startswith("Supported" if expected else "Not supported")


def test_side_by_side_classification_history_and_float32():
    data = RunContext(seed=1).load_data(task="multiclass", n_train=32, n_test=16, dtype=torch.float32)
    net = mlp(data.n_features, [16], data.n_classes, seed=2, dtype=torch.float32)
    before = copy.deepcopy(net)
    history = side_by_side_classification(
        net, data, lr=0.1, momentum=0.5, batch_size=8, steps=3, record_steps=[0, 3], n_watch=2
    )
    assert history["steps"] == [0, 3] and set(history) == {"steps", *MODELS, "test_rmse", "logit_scale", "agreement"}
    assert set(history["network"]) == {"train_loss", "train_acc", "test_loss", "test_acc", "watch"}
    assert torch.tensor(history["linearized"]["watch"]).shape == (2, 2, 10)
    assert not torch.equal(net[0].weight, before[0].weight)  # the network was trained in place
    assert all(math.isfinite(v) for v in history["test_rmse"])


def test_regression_data_set_is_rejected():
    with pytest.raises(ValueError, match="classification"):
        momentum_cross_entropy(TINY, RunContext(dataset="circle"))
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        train_side_by_side({}, torch.zeros(2, 1), torch.zeros(2), lr=0.1, steps=1, batch_size=-1)


def test_registered_with_quick_and_full_configurations():
    exp = EXPERIMENTS["E6"]
    assert exp.quick is QUICK and exp.full is FULL and exp.fn is momentum_cross_entropy
    for cfg in (QUICK, FULL):
        assert len(cfg.widths) >= 2 and len(cfg.fb_widths) >= 2 and cfg.momentum == 0.9 and cfg.lr == 1.0
    assert max(QUICK.widths) <= max(FULL.widths) and QUICK.steps <= FULL.steps
