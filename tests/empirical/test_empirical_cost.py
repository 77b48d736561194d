"""The cost model and block planner: what they count, what ``auto`` picks, and that blocks fit the budget.

References: FLOP, activation and parameter counts worked out by hand for a small model, and the memory budget."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntkit._functional import functionalize
from ntkit.empirical.cost import Problem, plan_blocks
from ntkit.empirical.ntk import METHODS, choose_method
from ntkit.empirical.tracing import trace_model
from ntkit.errors import MemoryBudgetError


def _choice(model, x, *, full=False, n2=None):
    fm = functionalize(model)
    trace = trace_model(fm, x)
    n = x.shape[0]
    problem = Problem(n, n if n2 is None else n2, n2 is None, False, full, trace.n_outputs)
    return choose_method(fm, trace, problem, "auto", 2**40, None, 4)[0].name


def test_forward_cost_counts_matrix_products_and_activations():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    trace = trace_model(functionalize(model), torch.randn(2, 8))
    # linear layers: 2·d_in·d_out each; activations: 16 + 16 + 3 entries for one example (an output that is
    # already (N, O) is not reshaped)
    assert trace.activation_words == 16 + 16 + 3
    assert trace.forward_flops == 2 * (8 * 16 + 16 * 3) + trace.activation_words
    assert trace.n_outputs == 3
    assert trace.n_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("outputs", [1, 10])
def test_auto_picks_structured_for_the_benchmark_mlps(outputs):
    layers = [nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(512, outputs)).eval()
    assert _choice(model, torch.randn(256, 64)) == "structured"
    assert _choice(model, torch.randn(256, 64), full=True, n2=64) == "structured"


def test_auto_picks_structured_for_the_benchmark_cnn():
    convs = [nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()]
    model = nn.Sequential(*convs, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()
    assert _choice(model, torch.randn(128, 3, 16, 16)) == "structured"


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("symmetric", [True, False])
def test_planned_block_is_the_largest_that_fits(name, symmetric):
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4)).eval()
    x = torch.randn(2, 8)
    fm = functionalize(model)
    trace = trace_model(fm, x)
    problem = Problem(200, 200 if symmetric else 150, symmetric, False, False, trace.n_outputs)
    cost = METHODS[name](fm, trace, problem).cost()
    budget = 2_000_000
    plan = plan_blocks(cost, problem, 4, budget, None, name)
    assert plan.peak_bytes <= budget
    if plan.size < 200:
        bigger = plan_blocks(cost, problem, 4, 1e18, plan.size + 1, name)
        assert bigger.peak_bytes > budget
    with pytest.raises(MemoryBudgetError, match=r"chunk_size=200"):
        plan_blocks(cost, problem, 4, plan.peak_bytes / 2, 200, name)


def test_chunking_raises_the_estimated_cost():
    """Features recomputed for every row of blocks are counted."""
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4)).eval()
    fm = functionalize(model)
    trace = trace_model(fm, torch.randn(2, 8))
    problem = Problem(100, 100, False, False, False, trace.n_outputs)
    cost = METHODS["jacobian"](fm, trace, problem).cost()
    whole = plan_blocks(cost, problem, 4, 1e18, None, "jacobian")
    chunked = plan_blocks(cost, problem, 4, 1e18, 10, "jacobian")
    assert whole.size == 100
    assert chunked.flops > whole.flops


def test_auto_takes_the_smallest_fixed_costs_for_tiny_problems():
    """Below TINY_FLOPS: structured when no parameter falls back (whole-batch autograd), else jacobian."""
    tiny = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    assert _choice(tiny, torch.randn(64, 3, 6, 6)) == "structured"

    class Transposed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return torch.tanh(x @ self.lin.weight.T)  # a use without a rule: the weight falls back

    assert _choice(Transposed().eval(), torch.randn(8, 4)) == "jacobian"


@pytest.mark.parametrize("model_name", ["mlp", "cnn2d", "residual", "lora"])
@pytest.mark.parametrize("full", [False, True])
def test_kept_unlimited_choice_equals_planning_for_the_budget(model_name, full):
    """``choose_method`` takes the choice for an unlimited budget (kept with the trace) wherever its block fits;
    planning every method for the budget itself (``_choose``, what every call did before) must give the same method
    and plan at every budget, from one too small for any block of all examples to one that holds everything."""
    from empirical_reference import case

    from ntkit.empirical.ntk import _choose, unlimited_choice

    model, x1, _, _, _ = case(model_name)
    fm = functionalize(model)
    trace = trace_model(fm, x1)
    for problem in (Problem(300, 300, True, False, full, trace.n_outputs), Problem(40, 7, False, False, full, 1)):
        _, unlimited = unlimited_choice(fm, trace, problem, "auto", None, 8)
        for budget in unlimited.peak_bytes * torch.logspace(-3, 0.5, 15).numpy():
            try:
                expected = _choose(fm, trace, problem, "auto", budget, None, 8)
            except MemoryBudgetError:
                with pytest.raises(MemoryBudgetError):
                    choose_method(fm, trace, problem, "auto", budget, None, 8)
                continue
            chosen, plan = choose_method(fm, trace, problem, "auto", budget, None, 8)
            assert (chosen.name, plan) == expected, budget
