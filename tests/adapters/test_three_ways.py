"""The same GP posterior three ways: nk.predict.gp_inference on nk.kernel matrices, scikit-learn's
GaussianProcessRegressor with ntkit.sklearn.NeuralKernel (optimizer=None) and GPyTorch's ExactGP with
ntkit.gpytorch.NeuralKernel, for an MLP and a small CNN, NNGP and NTK (the NTK as prior covariance is
gp_inference's "ntkgp"). All three solve the same float64 system by Cholesky, so they agree to round-off
amplified by the condition number (~1e3 here): 1e-8 relative to the largest entry."""

import gpytorch
import numpy as np
import pytest
import torch
from adapter_models import IMAGE, cnn, mlp, regression_data, shared
from sklearn.gaussian_process import GaussianProcessRegressor

import ntkit as nk
import ntkit.gpytorch as nkg
import ntkit.sklearn as nks

NOISE = 0.05


class ExactGP(gpytorch.models.ExactGP):
    def __init__(self, x, y, kernel):
        super().__init__(x, y, gpytorch.likelihoods.GaussianLikelihood())
        self.mean_module = gpytorch.means.ZeroMean()
        self.covar_module = kernel

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("get", ["nngp", "ntk"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_posterior_three_ways(kind, get):
    if kind == "mlp":
        make, input_shape, d = mlp, None, 4
    else:
        make, input_shape, d = cnn, IMAGE, 36
    x, y, xt, _ = regression_data(25, 7, d)

    # GPyTorch first: its parameters live behind a softplus, so the values it really uses are read back and
    # given to the other two (a W_std set before .double() is rounded to float32).
    model = ExactGP(x, y, nkg.NeuralKernel(make(), get=get, input_shape=input_shape)).double()
    model.covar_module.W_std, model.covar_module.b_std, model.likelihood.noise = 1.3, 0.2, NOISE
    with torch.no_grad():
        W_std, b_std = model.covar_module.W_std.item(), model.covar_module.b_std.item()
        noise = model.likelihood.noise.item()
    model.eval()
    with torch.no_grad():
        f = model(xt)
        gp_mean, gp_cov = f.mean, f.covariance_matrix

    net = shared(make(), W_std, b_std)
    shape = (-1, *IMAGE) if kind == "cnn" else (-1, d)
    xs, xts = x.reshape(shape), xt.reshape(shape)
    predict = nk.predict.gp_inference(nk.kernel(net, xs), y, noise, diag_reg_absolute_scale=True)
    k_tt = nk.kernel(net, xts)
    ref_mean, ref_cov = predict("nngp" if get == "nngp" else "ntkgp", nk.kernel(net, xts, xs), k_tt)

    kernel = nks.NeuralKernel(make(), get=get, W_std=W_std, b_std=b_std, input_shape=input_shape)
    gpr = GaussianProcessRegressor(kernel, alpha=noise, optimizer=None).fit(x.numpy(), y.numpy())
    sk_mean, sk_cov = gpr.predict(xt.numpy(), return_cov=True)

    assert rel(sk_mean, ref_mean) < 1e-8 and rel(sk_cov, ref_cov) < 1e-8
    assert rel(gp_mean, ref_mean) < 1e-8 and rel(gp_cov, ref_cov) < 1e-8
    # and the posterior is not trivial: the data reduce the prior variance at the test points
    assert bool((ref_cov.diagonal() < 0.9 * getattr(k_tt, get).diagonal()).all())
