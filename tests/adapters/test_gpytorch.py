"""ntkit.gpytorch.NeuralKernel: values against nk.kernel, diag and batch shapes against the full kernel, the
positive constraint, training of ExactGP by ExactMarginalLogLikelihood (its value against
nk.predict.marginal_log_likelihood), and BoTorch's SingleTaskGP fitted by fit_gpytorch_mll."""

import pytest
import torch
from adapter_models import mlp, regression_data, shared
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from gpytorch.mlls import ExactMarginalLogLikelihood
from test_three_ways import ExactGP

import ntkit as nk
from ntkit.errors import InvalidArgumentError
from ntkit.gpytorch import NeuralKernel


def make_kernel(**kwargs):
    kernel = NeuralKernel(mlp(), **kwargs).double()
    kernel.W_std, kernel.b_std = 1.3, 0.2
    return kernel


@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_values_and_diag_are_nk_kernel(get):
    x, _, xt, _ = regression_data(12, 5, 4)
    kernel = make_kernel(get=get)
    with torch.no_grad():
        W_std, b_std = kernel.W_std.item(), kernel.b_std.item()
        net = shared(mlp(), W_std, b_std)
        # same computation behind both: round-off only
        torch.testing.assert_close(kernel(x).to_dense(), getattr(nk.kernel(net, x), get), rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(kernel(xt, x).to_dense(), getattr(nk.kernel(net, xt, x), get), rtol=1e-13, atol=0)
        torch.testing.assert_close(
            kernel(xt, diag=True), getattr(nk.kernel(net, xt), get).diagonal(), rtol=1e-13, atol=0
        )
    assert not kernel.is_stationary
    assert {n for n, _ in kernel.named_parameters()} == {"raw_W_std", "raw_b_std"}  # no network weights


def test_batches_are_computed_entry_by_entry():
    x = regression_data(24, 0, 4)[0].reshape(3, 8, 4)
    kernel = NeuralKernel(mlp(), batch_shape=torch.Size([3])).double()
    kernel.W_std = torch.tensor([1.0, 1.5, 2.0], dtype=torch.float64).reshape(3, 1, 1)
    with torch.no_grad():
        out = kernel(x).to_dense()
        diag = kernel(x, diag=True)
        assert out.shape == (3, 8, 8) and diag.shape == (3, 8)
        for i, w in enumerate([1.0, 1.5, 2.0]):
            net = shared(mlp(), w, kernel.b_std[i].item())
            torch.testing.assert_close(out[i], nk.kernel(net, x[i]).ntk, rtol=1e-13, atol=1e-14)
            torch.testing.assert_close(diag[i], out[i].diagonal(), rtol=1e-13, atol=0)
        # inputs with a batch shape and a kernel without one broadcast
        plain = make_kernel()
        assert plain(x).to_dense().shape == (3, 8, 8)


def test_parameters_are_positive():
    kernel = make_kernel()
    with torch.no_grad():
        kernel.raw_W_std.fill_(-30.0)
    assert kernel.W_std.item() > 0
    with pytest.raises(InvalidArgumentError, match="W_std must be"):
        NeuralKernel(mlp(), W_std=-1.0)
    with pytest.raises(InvalidArgumentError, match="get must be"):
        NeuralKernel(mlp(), get="ntkgp")


def test_exact_gp_trains_by_marginal_likelihood():
    # ExactMarginalLogLikelihood is log p(y) / N: equal to nk.predict's at the same hyperparameters (1e-10,
    # same float64 Cholesky formula), and Adam on it raises it.
    x, y, _, _ = regression_data(40, 0, 4)
    model = ExactGP(x, y, NeuralKernel(mlp())).double()
    mll = ExactMarginalLogLikelihood(model.likelihood, model)

    def evidence():
        model.train()
        return mll(model(x), y)

    with torch.no_grad():
        start = evidence().item()
        W_std, b_std = model.covar_module.W_std.item(), model.covar_module.b_std.item()
        noise = model.likelihood.noise.item()
        k = nk.kernel(shared(mlp(), W_std, b_std), x, get="ntk").ntk
        ref = nk.predict.marginal_log_likelihood(k, y, noise, diag_reg_absolute_scale=True).item() / 40
    assert abs(start - ref) < 1e-10 * abs(ref)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(15):
        opt.zero_grad()
        (-evidence()).backward()
        assert model.covar_module.raw_W_std.grad is not None and model.covar_module.raw_W_std.grad.abs() > 0
        opt.step()
    assert evidence().item() > start + 0.05


def test_botorch_single_task_gp():
    x, y, _, _ = regression_data(20, 0, 2)
    x = (x - x.min(0).values) / (x.max(0).values - x.min(0).values)  # BoTorch expects inputs in the unit cube
    model = SingleTaskGP(x, y[:, None], covar_module=NeuralKernel(mlp(2)))
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    model.train()
    with torch.no_grad():
        start = mll(model(*model.train_inputs), model.train_targets).item()
    fit_gpytorch_mll(mll)
    model.train()
    with torch.no_grad():
        end = mll(model(*model.train_inputs), model.train_targets).item()
    assert end > start
    # a q-batch of candidates (b, q, d), as acquisition functions evaluate them
    posterior = model.posterior(torch.rand(5, 3, 2, dtype=torch.float64))
    assert posterior.mean.shape == (5, 3, 1)
    assert bool((posterior.variance > 0).all())
