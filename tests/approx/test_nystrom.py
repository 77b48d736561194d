"""nk.approx.nystrom against exact kernel regression (nk.predict.gp_inference on nk.kernel, float64): with every
training point as a landmark, ridge on Nyström features is the same linear map (ΦΦᵀ = K, Φ_*Φᵀ = K_*), so the
means agree to float64 round-off amplified by the condition number (tolerance 1e-7 at diag_reg = 1e-3)."""

from __future__ import annotations

import pytest
import torch

import ntkit as nk
from ntkit import nn as N
from ntkit.errors import InvalidArgumentError, NotPSDError, ShapeError


def _setup():
    net = N.Sequential(N.Linear(3, 64, W_std=1.5, b_std=0.1), N.Erf(), N.Linear(64, 1, W_std=1.2, b_std=0.1))
    x = torch.randn(40, 3, dtype=torch.float64)
    y = torch.sin(2 * x[:, :1])
    return net, x, y, torch.randn(12, 3, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["network", "function", "kernel-object"])
def test_all_points_as_landmarks_is_exact_kernel_regression(kind):
    net, x, y, x_test = _setup()
    source = {
        "network": net,
        "function": lambda a, b: nk.kernel(net, a, b).ntk,
        "kernel-object": lambda a, b: nk.kernel(net, a, b),
    }[kind]
    feats = nk.approx.nystrom(source, x, get="ntk", memory_budget=40 * 8 * 20)
    assert feats.n_features == 40 and len(list(feats.batches(x))) > 1
    fit = nk.approx.ridge(feats, x, y, diag_reg=1e-3)
    exact = nk.predict.gp_inference(nk.kernel(net, x), y, diag_reg=1e-3)("ntk", nk.kernel(net, x_test, x))
    torch.testing.assert_close(fit(x_test), exact, rtol=1e-7, atol=1e-9)
    phi = feats(x)
    torch.testing.assert_close(phi @ phi.T, nk.kernel(net, x).ntk, rtol=1e-9, atol=1e-10)


def test_fewer_landmarks_is_the_nystrom_approximation():
    """φ(x)·φ(y) = K_xz K_zz⁻¹ K_zy, computed here with a dense solve."""
    net, x, _, x_test = _setup()
    z = x[:10]
    feats = nk.approx.nystrom(net, z, get="nngp")
    k = lambda a, b: nk.kernel(net, a, b).nngp  # noqa: E731
    expected = k(x_test, z) @ torch.linalg.solve(k(z, z), k(z, x))
    torch.testing.assert_close(feats(x_test) @ feats(x).T, expected, rtol=1e-7, atol=1e-9)


def test_scale_store_landmarks_are_indices(tmp_path):
    """A stored K(x, x) over train and test examples: indices in, the same predictions as in memory."""
    pytest.importorskip("zarr")
    net, x, y, x_test = _setup()
    everything = torch.cat([x, x_test])
    store = nk.scale.kernel(net, everything, store=str(tmp_path / "k.zarr"), get="ntk", tile_size=16)
    train, test = torch.arange(40), torch.arange(40, 52)
    feats = nk.approx.nystrom(store, train, get="ntk")
    fit = nk.approx.ridge(feats, train, y, diag_reg=1e-3)
    exact = nk.predict.gp_inference(nk.kernel(net, x), y, diag_reg=1e-3)("ntk", nk.kernel(net, x_test, x))
    torch.testing.assert_close(fit(test), exact, rtol=1e-7, atol=1e-9)
    with pytest.raises(InvalidArgumentError, match="indices"):
        feats(torch.tensor([60]))
    with pytest.raises(InvalidArgumentError, match="holds"):
        nk.approx.nystrom(store, train, get="nngp")


def test_nystrom_errors():
    net, x, _, _ = _setup()
    with pytest.raises(NotPSDError, match="positive semi-definite"):
        nk.approx.nystrom(lambda a, b: -(a @ b.T), x)
    with pytest.raises(ShapeError, match="must return"):
        nk.approx.nystrom(lambda a, b: a @ b.T[:, :1], x)
    with pytest.raises(ShapeError, match="per-example shape"):
        nk.approx.nystrom(net, x)(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="get"):
        nk.approx.nystrom(net, x, get="both")
