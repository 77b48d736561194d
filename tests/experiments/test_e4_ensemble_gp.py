"""E4 in a tiny configuration: the result's structure, the ensemble's prior variance at t = 0 against the NNGP
(Monte Carlo), the direction at the end (closer to the NTK-GP than to the readout-only NNGP, fitted training
points), the vmapped ensemble against networks trained one by one, the cached kernels, and the verdict rule."""

import math

import pytest
import torch

import ntkit as nk
from ntkit.experiments import EXPERIMENTS, RunContext, mlp, train_full_batch
from ntkit.experiments.e4_ensemble_gp import (
    FULL,
    QUICK,
    Ensemble,
    EnsembleConfig,
    Limits,
    _cached_kernel_fn,
    _judge,
    ensemble_vs_gp,
    per_network_mse,
)

# depth 1: f_0 = σ_w/√n Σ_j ω_j tanh(h_j) has variance exactly K(x, x) at any width (h is exactly Gaussian), so the
# t = 0 check below has no finite-width bias; 200 networks make its Monte Carlo error small.
TINY = EnsembleConfig(n_networks=200, width=64, depth=1, n_train=8, times=(0, 4, 64), n_path=21)


@pytest.fixture(scope="module")
def result():
    return ensemble_vs_gp(TINY, RunContext(seed=0))


def test_structure(result):
    assert result.id == "E4" and result.status == "ok" and result.claim and result.measured and result.verdict
    assert [f.name for f in result.figures] == ["E4-ensemble", "E4-errors"]
    assert all(f.png.startswith(b"\x89PNG") and f.caption for f in result.figures)
    assert [t.title for t in result.tables] == ["Ensemble against the GPs"] and len(result.tables[0].rows) == 3
    m = result.metrics
    assert m["steps"] == [0, 4, 64] and len(m["alpha"]) == 21
    assert set(m["comparisons"]) == {"ntk", "nngp"} and all(len(c) == 3 for c in m["comparisons"].values())
    assert m["ensemble"]["mean"].shape == (3, 21) and m["gp"]["ntk"]["var"].shape == (3, 21)
    assert result.config["n_networks"] == 200 and result.config["classes"] == [3, 5]


def test_prior_variance_at_t0_matches_the_nngp(result):
    """At t = 0 both GPs are the prior N(0, K): the ensemble's variance along the path matches K(x, x). Tolerance:
    the ratio of 200 samples has sd √(2/199) ≈ 0.1 at a point (more with the mixture's heavier tails), and its
    geometric mean along the correlated path about the same; 0.3 is about 3 sd."""
    c0 = result.metrics["comparisons"]["ntk"][0]
    assert abs(c0["variance_ratio"] - 1) < 0.3
    assert c0["rms_z"] < 3 and abs(c0["coverage"] - 0.9545) < 0.05
    prior = nk.kernel(
        mlp(64, [TINY.width], 1, W_std=TINY.W_std, b_std=None, activation="tanh"),
        _path(result),
    ).nngp.diagonal()
    torch.testing.assert_close(result.metrics["gp"]["ntk"]["var"][0], prior, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.metrics["gp"]["nngp"]["var"][0], prior, rtol=1e-10, atol=1e-12)


def _path(result):
    ctx = RunContext(seed=0)
    data = ctx.load_data(task="binary", n_train=TINY.n_train, n_test=1)
    ends = result.metrics["endpoints"]
    a = torch.as_tensor(result.metrics["alpha"])[:, None]
    return a * data.x_train[ends["x1_index"]] + (1 - a) * data.x_train[ends["x2_index"]]


def test_direction_at_the_end(result):
    m = result.metrics
    ntk, nngp = m["comparisons"]["ntk"][-1], m["comparisons"]["nngp"][-1]
    # the ensemble is closer to the NTK-GP than to the readout-only NNGP after training, in mean and variance
    assert ntk["rms_z"] < nngp["rms_z"]
    assert abs(math.log(ntk["variance_ratio"])) < abs(math.log(nngp["variance_ratio"]))
    # training fitted the two endpoints (training points of different classes): α = 1 is x1 (+1), α = 0 is x2 (-1)
    alpha = torch.as_tensor(m["alpha"])
    mean = m["ensemble"]["mean"][-1]
    assert mean[torch.isclose(alpha, torch.tensor(1.0, dtype=alpha.dtype))].item() == pytest.approx(1.0, abs=0.1)
    assert mean[torch.isclose(alpha, torch.tensor(0.0, dtype=alpha.dtype))].item() == pytest.approx(-1.0, abs=0.1)
    assert m["train_loss_per_network"][-1] < 0.05 * m["train_loss_per_network"][0]
    # the GP variance at the training points decays, so those points are left out at the end
    assert int(m["kept"][0].sum()) == 21 and int(m["kept"][-1].sum()) < 21


def test_ensemble_trains_each_network_as_alone():
    """One vmapped Ensemble trained with per_network_mse against each network trained by itself with
    MSELoss(mean) in the same SGD loop: equal parameters and outputs after 5 steps to float64 round-off."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)
    nets = [mlp(5, [7, 7], 1, activation="tanh", seed=s) for s in range(3)]
    ens = Ensemble([mlp(5, [7, 7], 1, activation="tanh", seed=s) for s in range(3)])
    assert sum(p.numel() for p in ens.parameters()) == 3 * sum(p.numel() for p in nets[0].parameters())
    train_full_batch(ens, x, y.expand(-1, 3), lr=0.05, steps=5, loss=per_network_mse)
    for net in nets:
        train_full_batch(net, x, y, lr=0.05, steps=5)
    with torch.no_grad():
        torch.testing.assert_close(ens(x), torch.cat([net(x) for net in nets], 1), rtol=1e-12, atol=1e-13)
    for p, name in zip(ens.stacked, [n for n, _ in nets[0].named_parameters()], strict=True):
        torch.testing.assert_close(p.detach(), torch.stack([dict(n.named_parameters())[name] for n in nets]).detach())


def test_cached_kernel_fn_equals_direct_kernels():
    net = mlp(4, [8], 1, activation="tanh", b_std=None, dtype=torch.float32)
    x, path = torch.randn(5, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    fn = _cached_kernel_fn(net, x, path)
    ref = mlp(4, [8], 1, activation="tanh", b_std=None)
    for a, b in ((x, x), (path, x), (path, path)):
        k = nk.kernel(ref, a, b)
        torch.testing.assert_close(fn(a, b)["nngp"], k.nngp, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(fn(a, b)["ntk"], k.ntk, rtol=1e-12, atol=1e-14)
    assert next(net.parameters()).dtype == torch.float32  # the network itself is not converted
    with pytest.raises(ValueError, match="only the training inputs"):
        fn(x.clone(), x)


def _c(z, v, c):
    return {"rms_z": z, "variance_ratio": v, "coverage": c}


LIMITS = Limits((0.6, 1.5), (0.9, 1.0))


@pytest.mark.parametrize(
    ("ntk", "nngp_last", "expected"),
    [
        ([_c(1, 1, 0.95), _c(1.5, 1.1, 0.94)], _c(5, 0.5, 0.8), True),
        ([_c(1, 1, 0.95), _c(1.5, 1.1, 0.94)], _c(1.2, 1.0, 0.95), None),  # NNGP indistinguishable at the end
        ([_c(1, 1, 0.95), _c(3.5, 1.1, 0.94)], _c(5, 0.5, 0.8), False),  # mean off
        ([_c(1, 1.7, 0.95), _c(1.5, 1.1, 0.94)], _c(5, 0.5, 0.8), False),  # variance off at t = 0
        ([_c(1, 1, 0.95), _c(1.5, 1.1, 0.85)], _c(5, 0.5, 0.8), False),  # coverage off
    ],
)
def test_judge_cases(ntk, nngp_last, expected):
    supported, verdict = _judge(TINY, {"ntk": ntk, "nngp": [ntk[0], nngp_last]}, LIMITS, [0, 10])
    assert supported is expected
    assert verdict.split(":")[0] == {True: "Supported", None: "Inconclusive", False: "Not supported"}[expected]


def test_limits_are_the_chi2_and_binomial_intervals():
    lim = Limits.for_ensemble(EnsembleConfig(n_networks=64))
    assert 0.5 < lim.variance[0] < 1 < lim.variance[1] < 1.7
    assert 0.85 < lim.coverage[0] < 0.9545 < lim.coverage[1] <= 1.0


def test_registered_with_quick_and_full_configurations():
    exp = EXPERIMENTS["E4"]
    assert exp.quick is QUICK and exp.full is FULL and exp.fn is ensemble_vs_gp
    assert FULL.n_networks >= 50 and 512 <= FULL.width <= 1024 and QUICK.n_networks >= 16
    assert len(FULL.times) >= 4 and FULL.times[0] == 0 and FULL.alpha_range == (-2.0, 3.0)
