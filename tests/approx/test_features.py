"""nk.approx.features against the exact kernels of nk.kernel (the independent reference: closed-form recursions).

Unbiasedness is tested over independent seeds with z-scores: the mean of S draws of φ(x)·φ(y) minus the exact
kernel, in units of its standard error (sample standard deviation / √S); |z| < 5 on every entry (about 20 entries
per case: a false alarm has probability ~1e-5 per case, while a wrong scale, bias or missing term shifts the mean
by many standard errors). Consistency: the RMS relative Frobenius error over seeds falls like F^-1/2.
"""

from __future__ import annotations

import pytest
import torch

import ntkit as nk
from approx_reference import rms_errors, slope, z_scores
from ntkit import nn as N
from ntkit.errors import InvalidArgumentError, MemoryBudgetError, ShapeError, UnsupportedError

D = 5


def _mlp(act, depth=1, parameterization="ntk", b_std=0.2):
    layers = [N.Linear(D, 32, W_std=1.3, b_std=b_std, parameterization=parameterization), act]
    for _ in range(depth - 1):
        layers += [N.Linear(32, 48, W_std=1.2, b_std=b_std, parameterization=parameterization), act]
    layers.append(N.Linear(layers[-2].out_features, 1, W_std=0.9, b_std=b_std, parameterization=parameterization))
    return N.Sequential(*layers)


def _inputs(n=6):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    x[1] = 0.5 * x[0] + 0.1 * x[1]  # a correlated pair
    x[2] = 0.0  # a zero input
    return x


def _z_scores(net, get, method, n_features, n_seeds, **kw):
    return z_scores(net, _inputs(), get, method, n_features, n_seeds, **kw)


@pytest.mark.parametrize("get", ["nngp", "ntk"])
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("act", [N.ReLU(), N.LeakyReLU(0.2), N.Erf(), N.GELU()], ids=lambda a: type(a).__name__)
def test_random_features_unbiased_one_hidden_layer(act, parameterization, get):
    """Given exact input features every step is unbiased, so with one hidden layer E[φ(x)·φ(y)] is the kernel."""
    z, _, _ = _z_scores(_mlp(act, parameterization=parameterization), get, "random_features", 16, 300)
    assert z.abs().max() < 5


@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_sketch_unbiased_for_a_polynomial_activation(get):
    """A polynomial of degree <= q has a finite Hermite series (no tail), so the sketch is exactly unbiased: the
    reference is nk.kernel's own closed form for Polynomial (Isserlis' theorem), independent of ``hermite``."""
    act = N.Polynomial([0.3, 1.0, 0.5, -0.2])
    z, _, _ = _z_scores(_mlp(act), get, "sketch", 64, 300, degree=3)
    assert z.abs().max() < 5


def test_sketch_truncation_bias_is_small_for_relu():
    """ReLU's series is infinite: the sketch is unbiased for the series truncated at q with its tail moved into
    degree q + 1, so the mean over seeds is within the tail bound of the exact kernel (2·r·|ρ|^{q+1} <= 2r with
    r <= E[φ²] − Σ_{j<=8} c_j² ≈ 0.3% of E[φ²]); 5 standard errors of the mean are added for the noise."""
    z, exact, mean = _z_scores(_mlp(N.ReLU()), "nngp", "sketch", 64, 300, degree=8)
    stderr = (mean - exact).abs() / z.abs().clamp_min(1e-12)
    assert torch.all((mean - exact).abs() <= 0.006 * exact.abs().max() + 5 * stderr)


def test_error_falls_like_inverse_sqrt_features():
    """One hidden layer, unbiased features: E‖error‖² = Σ Var/F, so the RMS error over seeds has slope −1/2
    (fit over F = 2^6..2^11, 16 seeds each; measured −0.50; tolerance 0.1 as the issue asks)."""
    sizes = [2**k for k in range(6, 12)]
    x = torch.randn(12, D, dtype=torch.float64)
    errors = rms_errors(_mlp(N.ReLU()), "ntk", "random_features", sizes, 16, x)
    assert abs(slope(sizes, errors) + 0.5) < 0.1


@pytest.mark.slow
@pytest.mark.parametrize("get", ["nngp", "ntk"])
@pytest.mark.parametrize("method", ["random_features", "sketch"])
def test_error_falls_like_inverse_sqrt_features_deep(method, get):
    """Three hidden layers: the features are consistent, not unbiased (T is applied to an estimate of K), with a
    bias O(1/F) below the O(F^-1/2) noise; the sketch also has the series' truncation bias (ReLU, q = 8), below
    the noise at these sizes. Slope over F = 2^8..2^13 (8 seeds) within 0.1 of −1/2."""
    sizes = [2**k for k in range(8, 14)]
    x = torch.randn(16, D, dtype=torch.float64)
    errors = rms_errors(_mlp(N.ReLU(), depth=3), get, method, sizes, 8, x)
    assert abs(slope(sizes, errors) + 0.5) < 0.1


@pytest.mark.parametrize("method", ["random_features", "sketch"])
def test_deterministic_given_seed_and_global_rng_untouched(method):
    net, x = _mlp(N.ReLU(), depth=2), _inputs()
    state = torch.get_rng_state()
    a = nk.approx.features(net, 256, method=method, seed=3)(x)
    b = nk.approx.features(net, 256, method=method, seed=3)(x)
    c = nk.approx.features(net, 256, method=method, seed=4)(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("get", ["nngp", "ntk"])
@pytest.mark.parametrize("method", ["random_features", "sketch"])
def test_shape_dtype_and_batches(method, get):
    """Exactly n_features columns, x's dtype; a tiny memory budget (many batches) gives the same features."""
    net, x = _mlp(N.GELU(), depth=2), torch.randn(40, D)
    feats = nk.approx.features(net, 300, get=get, method=method, seed=0)
    phi = feats(x)
    assert phi.shape == (40, 300) and phi.dtype == torch.float32
    small = nk.approx.features(net, 300, get=get, method=method, seed=0, memory_budget=300 * 4 * 40)
    assert len(list(small.batches(x))) > 1
    torch.testing.assert_close(small(x), phi, rtol=1e-4, atol=1e-5)  # FFT round-off varies with the batch
    torch.testing.assert_close(feats(x[:7]), phi[:7], rtol=1e-4, atol=1e-5)  # features are per example


def test_consecutive_activations_are_composed():
    """ReLU then Erf without a Linear between: the kernel of Erf(ReLU(u)), as nk.kernel computes it."""
    net = N.Sequential(N.Linear(D, 16, W_std=1.2, b_std=0.1), N.ReLU(), N.Erf(), N.Linear(16, 1))
    z, _, _ = _z_scores(net, "nngp", "random_features", 16, 300)
    assert z.abs().max() < 5


def test_errors():
    net = _mlp(N.ReLU())
    with pytest.raises(UnsupportedError, match=r"Dropout.*nk\.kernel.*nystrom"):
        nk.approx.features(N.Sequential(N.Linear(D, 8), N.ReLU(), N.Dropout(0.1), N.Linear(8, 1)))
    with pytest.raises(UnsupportedError, match=r"Build the network from ntkit\.nn layers"):
        nk.approx.features(torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.ReLU()))
    with pytest.raises(UnsupportedError, match="no activation"):
        nk.approx.features(N.Sequential(N.Linear(D, 4)))
    with pytest.raises(UnsupportedError, match="network input"):
        nk.approx.features(N.Sequential(N.ReLU(), N.Linear(D, 4)))
    with pytest.raises(UnsupportedError, match="mixes"):
        nk.approx.features(N.Sequential(N.Linear(D, 4), N.ReLU(), N.Linear(4, 1, parameterization="standard")))
    with pytest.raises(InvalidArgumentError, match="get"):
        nk.approx.features(net, get="both")
    with pytest.raises(InvalidArgumentError, match="method"):
        nk.approx.features(net, method="exact")
    with pytest.raises(InvalidArgumentError, match="n_features"):
        nk.approx.features(net, n_features=2)
    with pytest.raises(InvalidArgumentError, match="too small"):
        nk.approx.features(net, n_features=6, method="sketch")
    feats = nk.approx.features(net, 64)
    with pytest.raises(ShapeError, match=r"\(N, 5\)"):
        feats(torch.randn(3, D + 1))
    with pytest.raises(MemoryBudgetError, match="ridge"):
        nk.approx.features(net, 64, memory_budget=1000)(torch.randn(100, D))
