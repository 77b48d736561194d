"""E1 in a tiny configuration: the result's structure and the direction of the effect (the empirical kernels'
error falls with width, slopes negative), its kernels against independent computations (the arc-cosine recursion
written out here, a dense float64 Jacobian, the readout features), the Monte Carlo means, and the verdict rule."""

import math

import pytest
import torch

import ntkit as nk
from ntkit.experiments import EXPERIMENTS, RunContext, SlopeFit, mlp
from ntkit.experiments.e1_kernel_convergence import (
    FULL,
    KERNELS,
    QUICK,
    KernelConvergenceConfig,
    _empirical,
    _judge,
    _network,
    kernel_convergence,
    monte_carlo_counts,
)
from reference import dense_ntk

TINY = KernelConvergenceConfig(depths=(1, 2), widths=(16, 64, 256, 1024), samples=3, mc_samples=4, n_points=6)


@pytest.fixture(scope="module")
def result():
    return kernel_convergence(TINY, RunContext(seed=0))


def test_structure(result):
    assert result.id == "E1" and result.status == "ok" and result.claim and result.measured
    assert [f.name for f in result.figures] == ["E1-convergence", "E1-monte-carlo"]
    assert all(f.png.startswith(b"\x89PNG") and f.caption for f in result.figures)
    assert [t.title for t in result.tables][:2] == ["Fitted slopes", "Mean relative error per width (M = 1)"]
    assert len(result.metrics["slopes"]) == 4 and result.metrics["per_width"]["widths"] == [16, 64, 256, 1024]
    assert result.metrics["monte_carlo_counts"] == [1, 2, 4]
    runs = result.metrics["runs"]
    assert all(len(r["single"]["ntk"]) == 4 for r in runs["1"])  # the heat map depth draws mc_samples networks
    assert all(len(r["single"]["ntk"]) == 3 for r in runs["2"])
    assert result.config["dataset"] == "digits" and result.config["n_train"] == 6


def test_error_falls_with_width(result):
    """A 64-fold width increase cuts an n^-1/2 error by 8; the per-width means must fall by at least 2 and the
    slopes over 3 networks per width must be negative (a test that a broken kernel, e.g. the wrong σ_b or a
    missing 1/n_0, fails: the error would then level off at the O(1) mismatch)."""
    for name, values in result.metrics["per_width"].items():
        if name == "widths":
            continue
        assert values[-1] < values[0] / 2, name
        assert result.metrics["slopes"][name]["slope"] < -0.25, name
    assert result.metrics["per_width"][next(iter(result.metrics["slopes"]))][-1] < 0.1


def _arccos_kernels(x, depth, w_var, b_var):
    """theory.md §4.1-4.2, NTK parameterization: K¹ = σ_w² x·x'/n_0 + σ_b², Kˡ⁺¹ = σ_w² T(Kˡ) + σ_b²,
    Θˡ⁺¹ = Kˡ⁺¹ + σ_w² Θˡ Ṫ(Kˡ), with the arc-cosine T, Ṫ of ReLU."""
    k = w_var * x @ x.T / x.shape[1] + b_var
    theta = k
    for _ in range(depth):
        d = torch.sqrt(torch.outer(k.diagonal(), k.diagonal()))
        angle = torch.arccos(torch.clamp(k / d, -1.0, 1.0))
        t = d * (torch.sin(angle) + (math.pi - angle) * torch.cos(angle)) / (2 * math.pi)
        t_dot = (math.pi - angle) / (2 * math.pi)
        k, theta = w_var * t + b_var, w_var * t + b_var + w_var * theta * t_dot
    return k, theta


@pytest.mark.parametrize("depth", [1, 3])
def test_analytic_kernels_of_the_experiment_network_equal_the_arccos_recursion(depth):
    """nk.kernel of E1's own network (ntkit.nn.Linear layers) against the recursion written out above: 1e-12 relative
    (float64; the two differ only in the order of operations)."""
    x = torch.randn(7, 5, dtype=torch.float64)
    net = mlp(5, [3] * depth, 1, W_std=math.sqrt(2.0), b_std=math.sqrt(0.1))
    k = nk.kernel(net, x)
    nngp, ntk = _arccos_kernels(x, depth, 2.0, 0.1)
    torch.testing.assert_close(k.nngp, nngp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k.ntk, ntk, rtol=1e-12, atol=1e-12)


def test_empirical_kernels_against_a_dense_jacobian_and_the_readout_features():
    """E1's Θ̂ against the dense float64 Jacobian of tests/reference.py, and its K̂ (readout tangent kernel)
    against the readout's inputs x̄ = [σ_w x^L / √n_L, σ_b] written out (theory.md §3.3): round-off, 1e-10."""
    ctx = RunContext(seed=0)
    x = torch.randn(5, 4, dtype=torch.float64)
    net = _network(TINY, ctx, 2, 32, 0, x)
    emp = _empirical(net, x)
    torch.testing.assert_close(emp["ntk"], dense_ntk(net, x), rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        features = net[:-1](x)
    xbar = torch.cat([TINY.W_std * features / math.sqrt(32), torch.full((5, 1), TINY.b_std, dtype=x.dtype)], dim=1)
    torch.testing.assert_close(emp["nngp"], xbar @ xbar.T, rtol=1e-10, atol=1e-12)


def test_monte_carlo_means(result):
    """M = 1 is the first network's error; the mean of more networks is closer to the analytic kernel on average
    over widths (the fluctuation averages out; 4 networks halve it)."""
    for r in result.metrics["runs"]["1"]:
        for name in KERNELS:
            assert r["mean"][name][0] == r["single"][name][0]
    for name in KERNELS:
        one = sum(r["mean"][name][0] for r in result.metrics["runs"]["1"])
        four = sum(r["mean"][name][-1] for r in result.metrics["runs"]["1"])
        assert four < one, name
    assert monte_carlo_counts(64) == [1, 2, 4, 8, 16, 32, 64] and monte_carlo_counts(6) == [1, 2, 4, 6]


def test_verdict_is_the_rule_applied_to_the_reported_slopes(result):
    fits = {
        n: SlopeFit(v["slope"], 0.0, 0.0, v["ci_low"], v["ci_high"], v["r2"], 3, 0.95)
        for n, v in result.metrics["slopes"].items()
    }
    assert _judge(fits) == (result.supported, result.verdict, result.metrics["outcome"])


def _fit(slope, half):
    return SlopeFit(slope, 0.0, half / 2, slope - half, slope + half, 0.99, 20, 0.95)


@pytest.mark.parametrize(
    ("fit", "expected"),
    [
        (_fit(-0.5, 0.1), True),
        (_fit(-0.7, 0.1), True),  # -1/2 within the ±0.15 allowance
        (_fit(-0.8, 0.1), False),  # widened interval [-1.05, -0.55] misses -1/2
        (_fit(-1.0, 0.1), False),  # the O(1/n) bias rate, not the CLT one
        (_fit(-0.2, 0.1), False),  # widened interval [-0.45, 0.05] misses -1/2
        (_fit(-0.4, 0.5), None),  # the interval reaches 0: no significant fall
    ],
)
def test_judge_cases(fit, expected):
    supported, verdict, _ = _judge({"a": _fit(-0.5, 0.05), "b": fit})
    assert supported is expected
    assert verdict.split(":")[0] == {True: "Supported", None: "Inconclusive", False: "Not supported"}[expected]


def test_registered_with_quick_and_full_configurations():
    exp = EXPERIMENTS["E1"]
    assert exp.quick is QUICK and exp.full is FULL and exp.fn is kernel_convergence
    assert QUICK.depths == FULL.depths == (1, 3)
    assert min(FULL.widths) == 2**3 and max(FULL.widths) == 2**12 and FULL.mc_samples == 64
    assert math.isclose(QUICK.W_std**2, 2.0) and math.isclose(QUICK.b_std**2, 0.1)
