"""nk.approx.ridge against closed forms in float64: the primal solve (ΦᵀΦ + λI)⁻¹Φᵀy from the dense Φ, and the
dual form Φ_* Φᵀ(ΦΦᵀ + λI)⁻¹y of nk.predict.gp_inference with the kernel ΦΦᵀ (an independent code path).
Both agree with the batched, accumulated fit to float64 round-off on well-conditioned systems (tolerance 1e-8)."""

from __future__ import annotations

import pytest
import torch

import ntkit as nk
from ntkit import nn as N
from ntkit.errors import IllConditionedError, InvalidArgumentError, ShapeError


def _setup(n_features=96, n_train=60):
    net = N.Sequential(N.Linear(4, 32, W_std=1.4, b_std=0.1), N.ReLU(), N.Linear(32, 2, W_std=1.2, b_std=0.1))
    x = torch.randn(n_train, 4, dtype=torch.float64)
    y = torch.stack([torch.sin(x.sum(1)), x[:, 0] * x[:, 1]], 1)
    x_test = torch.randn(15, 4, dtype=torch.float64)
    return nk.approx.features(net, n_features, get="ntk", seed=0, memory_budget=96 * 8 * 30), x, y, x_test


@pytest.mark.parametrize("n_features", [40, 96])  # fewer and more features than examples
def test_ridge_equals_closed_forms(n_features):
    feats, x, y, x_test = _setup(n_features)
    assert len(list(feats.batches(x))) > 1  # the fit accumulates over several batches
    fit = nk.approx.ridge(feats, x, y, diag_reg=1e-3)
    phi, phi_test = (torch.cat([p for _, p in feats.batches(a)]) for a in (x, x_test))
    lam = 1e-3 * float((phi * phi).sum()) / x.shape[0]  # relative to the mean diagonal of ΦΦᵀ, as nk.predict
    assert fit.regularization == pytest.approx(lam, rel=1e-12)
    primal = phi_test @ torch.linalg.solve(phi.T @ phi + lam * torch.eye(n_features, dtype=phi.dtype), phi.T @ y)
    dual = nk.predict.gp_inference({"nngp": phi @ phi.T}, y, diag_reg=1e-3)("nngp", {"nngp": phi_test @ phi.T})
    mean = fit(x_test)
    assert mean.shape == (15, 2) and mean.dtype == torch.float64
    torch.testing.assert_close(mean, primal, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(mean, dual, rtol=1e-8, atol=1e-10)


def test_ridge_vector_targets_absolute_reg_and_float32():
    feats, x, y, x_test = _setup()
    fit = nk.approx.ridge(feats, x.float(), y[:, 0].float(), diag_reg=0.5, diag_reg_absolute_scale=True)
    assert fit.regularization == 0.5
    two = nk.approx.ridge(feats, x.float(), y[:, :1].float(), diag_reg=0.5, diag_reg_absolute_scale=True)
    mean = fit(x_test.float())
    assert mean.shape == (15,) and mean.dtype == torch.float32
    torch.testing.assert_close(mean, two(x_test.float())[:, 0])


def test_ridge_errors():
    feats, x, y, _ = _setup()
    with pytest.raises(ShapeError, match="y_train"):
        nk.approx.ridge(feats, x, y[:-1])
    with pytest.raises(InvalidArgumentError, match="diag_reg"):
        nk.approx.ridge(feats, x, y, diag_reg=-1.0)
    with pytest.raises(IllConditionedError, match="diag_reg"):  # 96 features, 5 examples, no regularisation
        nk.approx.ridge(feats, x[:5], y[:5], diag_reg=0.0)
