"""E2 in a tiny configuration: the result's structure, the direction of the effect (the network stays close to its
linearization, closer with the empirical Θ̂_0 than with the analytic Θ), the linearization's weight changes against
an explicitly trained ``nk.linearize``, and the verdict rule."""

import math

import pytest
import torch

import ntkit as nk
from ntkit.experiments import EXPERIMENTS, RunContext, mlp, train_full_batch
from ntkit.experiments.e2_linearization import (
    FULL,
    QUICK,
    LinearizationConfig,
    _flat_parameters,
    _judge,
    _random_parameters,
    network_vs_linearization,
)

TINY = LinearizationConfig(width=256, depth=2, n_train=16, n_test=16, steps=64, n_times=6)


@pytest.fixture(scope="module")
def result():
    return network_vs_linearization(TINY, RunContext(seed=0))


def test_structure(result):
    assert result.id == "E2" and result.status == "ok" and result.claim and result.measured
    assert [f.name for f in result.figures] == ["E2-dynamics"]
    assert result.figures[0].png.startswith(b"\x89PNG") and result.figures[0].caption
    assert [t.title for t in result.tables] == [
        "Network and linearizations over training",
        "Weight change per layer after training",
    ]
    m = result.metrics
    steps = m["record_steps"]
    assert steps[0] == 0 and steps[-1] == TINY.steps and len(result.tables[0].rows) == len(steps)
    assert set(m["rmse"]) == {"empirical", "analytic"} and all(len(v) == len(steps) for v in m["rmse"].values())
    assert m["parameters"]["network"].shape == (len(steps), TINY.n_weights_per_layer * (TINY.depth + 1))
    assert result.config["dataset"] == "digits" and result.config["n_train"] == 16


def test_direction_of_the_effects(result):
    m = result.metrics
    # same f_0: both linearizations start exactly at the network's outputs
    assert m["rmse"]["empirical"][0] == 0.0 and m["rmse"]["analytic"][0] == 0.0
    # training moved the outputs and the network stayed close to its linearization (well under 10% of the move)
    numbers = m["verdict_numbers"]
    assert m["output_movement"] > 0.5 and numbers["relative_rmse"] < 0.1
    # the empirical kernel predicts the network better than the analytic one, at the end and over training
    assert numbers["final"]["empirical"] < numbers["final"]["analytic"]
    assert numbers["sup"]["empirical"] < numbers["sup"]["analytic"]
    assert result.supported is True and result.verdict.startswith("Supported")
    # the network trained, and its linearization reached about the same train loss
    net, lin = m["network"]["train_loss"], m["linearization"]["empirical"]["train_loss"]
    assert net[-1] < 0.1 * net[0] and lin[-1] < 0.1 * lin[0] and net[0] == pytest.approx(lin[0], rel=1e-12)
    # Θ̂_0 differs from Θ by a finite-width amount (O(n^-1/2))
    assert 0.0 < m["kernel_relative_difference"] < 0.5


def test_linearization_weight_changes_equal_an_explicitly_trained_linearized_network(result):
    """The linearization's ω_t of the chosen parameters (nk.predict.weight_change with Θ̂_0, indexed into the
    concatenated parameter vector) against training nk.linearize(network) with the same SGD loop: equal to float64
    round-off (1e-9 relative over 64 steps). The same indices pick the network's own changes."""
    ctx = RunContext(seed=0)
    data = ctx.load_data(task="binary", n_train=TINY.n_train, n_test=TINY.n_test)
    x, y = data.x_train, data.targets()[0]
    lin = nk.linearize(mlp(64, [TINY.width] * TINY.depth, 1, seed=ctx.derive_seed("E2")))
    chosen = torch.as_tensor(result.metrics["parameters"]["index"])
    theta0 = _flat_parameters(lin)[chosen]
    steps = result.metrics["record_steps"]
    trained = train_full_batch(
        lin, x, y, lr=result.metrics["learning_rate"], steps=TINY.steps, record_steps=steps,
        on_record=lambda _, m: _flat_parameters(m)[chosen] - theta0,
    )  # fmt: skip
    linear = torch.as_tensor(result.metrics["parameters"]["linearization"])
    torch.testing.assert_close(torch.stack(trained.records), linear, rtol=1e-9, atol=1e-12)


def test_random_parameters_cover_every_weight_matrix():
    net = mlp(5, [7, 3], 2, seed=0)
    idx = _random_parameters(net, 2, seed=1)
    sizes = [p.numel() for p in net.parameters()]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    owners = [max(i for i, s in enumerate(starts) if s <= j) for j in idx.tolist()]
    weights = [i for i, p in enumerate(net.parameters()) if p.ndim == 2]
    assert sorted(owners) == sorted(w for w in weights for _ in range(2)) and len(set(idx.tolist())) == 6


@pytest.mark.parametrize(
    ("empirical", "analytic", "expected", "words"),
    [
        ([0.01, 0.02, 0.05], [0.04, 0.08, 0.09], True, "Supported"),
        ([0.01, 0.2, 0.05], [0.04, 0.3, 0.09], False, "leaves its linearization"),  # 0.2 > 0.1 × movement 1
        ([0.01, 0.02, 0.05], [0.04, 0.08, 0.04], False, "not more accurate"),  # Θ better at the end
        ([0.01, 0.1, 0.05], [0.04, 0.05, 0.09], False, "not more accurate"),  # Θ better in the sup
    ],
)
def test_judge_cases(empirical, analytic, expected, words):
    supported, verdict, numbers = _judge(TINY, {"empirical": empirical, "analytic": analytic}, 1.0)
    assert supported is expected and words in verdict
    assert numbers["relative_rmse"] == max(empirical)


def test_registered_with_quick_and_full_configurations():
    exp = EXPERIMENTS["E2"]
    assert exp.quick is QUICK and exp.full is FULL and exp.fn is network_vs_linearization
    assert QUICK.width <= FULL.width and QUICK.steps <= FULL.steps
    assert math.isclose(FULL.W_std**2, 2.0) and math.isclose(FULL.b_std**2, 0.1)
