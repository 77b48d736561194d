"""ntkit.sklearn: NeuralKernel's values and log-space gradients against nk.kernel and central differences, the
marginal likelihood and its optimum against nk.predict.marginal_log_likelihood fitted with torch.optim,
composition with scikit-learn kernels, and the estimators against nk.predict and scikit-learn's own checks."""

import numpy as np
import pytest
import torch
from adapter_models import IMAGE, cnn, mlp, regression_data, shared
from sklearn.base import clone
from sklearn.datasets import load_iris
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, WhiteKernel
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import ntkit as nk
from ntkit.errors import InvalidArgumentError, UnsupportedError
from ntkit.sklearn import NeuralKernel, NTKClassifier, NTKRegressor

# scikit-learn's estimator checks. None is expected to fail (no expected_failed_checks); a few are skipped by
# scikit-learn itself where the test environment lacks what they need: pandas (check_*_data_not_an_array,
# check_dataframe_column_names_consistency) and SCIPY_ARRAY_API (check_array_api_input).


@parametrize_with_checks([NTKRegressor(), NTKClassifier()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_kernel_values_are_nk_kernel(get):
    x, _, xt, _ = regression_data(12, 5, 4)
    k = NeuralKernel(mlp(), get=get, W_std=1.3, b_std=0.2)
    net = shared(mlp(), 1.3, 0.2)
    # the same computation (nk.kernel in float64) behind both: equal to round-off
    np.testing.assert_allclose(k(x.numpy()), getattr(nk.kernel(net, x), get).numpy(), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(k(xt.numpy(), x.numpy()), getattr(nk.kernel(net, xt, x), get).numpy(), rtol=1e-13)
    np.testing.assert_allclose(k.diag(xt.numpy()), np.diag(k(xt.numpy())), rtol=1e-13)
    assert not k.is_stationary()
    assert k.requires_vector_input


@pytest.mark.parametrize(("make", "input_shape", "d"), [(mlp, None, 4), (cnn, IMAGE, 36)])
def test_gradient_is_log_space_central_difference(make, input_shape, d):
    # K_gradient[..., i] = ∂K/∂ log θ_i; central differences in log θ with h = 1e-5 have truncation error
    # ~h² ≈ 1e-10 and round-off ~1e-16/h ≈ 1e-11 relative: 1e-6 relative to the largest entry.
    x = regression_data(10, 0, d)[0].numpy()
    kernel = NeuralKernel(make(), W_std=1.3, b_std=0.2, input_shape=input_shape)
    _, grad = kernel(x, eval_gradient=True)
    assert grad.shape == (10, 10, 2)
    assert [h.name for h in kernel.hyperparameters] == ["W_std", "b_std"]
    h = 1e-5
    for i in range(2):
        step = np.zeros(2)
        step[i] = h
        fd = (kernel.clone_with_theta(kernel.theta + step)(x) - kernel.clone_with_theta(kernel.theta - step)(x)) / (
            2 * h
        )
        assert np.abs(grad[..., i] - fd).max() < 1e-6 * np.abs(fd).max()
    # a fixed hyperparameter is left out of theta and of the gradient
    fixed = NeuralKernel(make(), W_std=1.3, b_std=0.2, b_std_bounds="fixed", input_shape=input_shape)
    assert fixed(x, eval_gradient=True)[1].shape == (10, 10, 1)
    np.testing.assert_allclose(fixed(x, eval_gradient=True)[1][..., 0], grad[..., 0], rtol=1e-12)


def test_composes_with_sklearn_kernels():
    x = regression_data(8, 0, 4)[0].numpy()
    base = NeuralKernel(mlp(), W_std=1.3, b_std=0.2)
    composed = ConstantKernel(2.0) * base + WhiteKernel(0.1)
    np.testing.assert_allclose(composed(x), 2.0 * base(x) + 0.1 * np.eye(8), rtol=1e-13)
    _, grad = composed(x, eval_gradient=True)
    assert grad.shape == (8, 8, 4)  # constant, W_std, b_std, noise
    np.testing.assert_allclose(grad[..., 1:3], 2.0 * base(x, eval_gradient=True)[1], rtol=1e-12)
    product = base * base
    np.testing.assert_allclose(product(x), base(x) ** 2, rtol=1e-13)
    params = composed.get_params()
    assert params["k1__k2__W_std"] == 1.3 and params["k1__k2__b_std"] == 0.2
    cloned = clone(composed)
    np.testing.assert_allclose(cloned(x), composed(x), rtol=0)
    assert cloned.k1.k2.architecture is not base.architecture  # cloning copies the module


def test_marginal_likelihood_is_nk_predict_and_the_optimum_agrees():
    # GaussianProcessRegressor.log_marginal_likelihood with NeuralKernel + WhiteKernel is
    # nk.predict.marginal_log_likelihood with an absolute diag_reg (same float64 formula: 1e-10 relative).
    # Then both optimisers (scikit-learn's L-BFGS-B on its own gradients, torch's L-BFGS on autograd through
    # nk.kernel) start from the same point and must reach the same maximum: log-hyperparameters to 1e-3.
    # The targets are a draw from the model (W_std 1.5, b_std 0.3, noise 0.05), so the maximum is interior.
    x = regression_data(60, 0, 4)[0]
    k_true = nk.kernel(shared(mlp(), 1.5, 0.3), x, get="nngp").nngp + 0.05 * torch.eye(60, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    y = torch.linalg.cholesky(k_true) @ torch.randn(60, generator=g, dtype=torch.float64)
    start = {"W_std": 1.0, "b_std": 0.5, "noise": 0.5}
    kernel = NeuralKernel(mlp(), get="nngp", W_std=start["W_std"], b_std=start["b_std"]) + WhiteKernel(
        start["noise"], noise_level_bounds=(1e-5, 1e2)
    )
    gpr = GaussianProcessRegressor(kernel, optimizer=None).fit(x.numpy(), y.numpy())

    def evidence(log_theta):
        W_std, b_std, noise = log_theta.exp()
        k = nk.kernel(shared(mlp(), W_std, b_std), x, get="nngp").nngp
        return nk.predict.marginal_log_likelihood(k, y, noise, diag_reg_absolute_scale=True)

    log_start = torch.tensor(list(start.values()), dtype=torch.float64).log()
    assert abs(gpr.log_marginal_likelihood(log_start.numpy()) - float(evidence(log_start))) < 1e-10 * abs(
        float(evidence(log_start))
    )

    fitted = GaussianProcessRegressor(kernel, n_restarts_optimizer=0).fit(x.numpy(), y.numpy())
    sk_theta = fitted.kernel_.theta

    log_theta = log_start.clone().requires_grad_()
    opt = torch.optim.LBFGS([log_theta], max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -evidence(log_theta)
        loss.backward()
        return loss

    opt.step(closure)
    torch_theta = log_theta.detach()
    assert float(evidence(torch_theta)) > float(evidence(log_start)) + 1.0  # fitting raised the evidence
    np.testing.assert_allclose(torch_theta.numpy(), sk_theta, atol=1e-3)
    assert abs(fitted.log_marginal_likelihood_value_ - float(evidence(torch_theta))) < 1e-6


@pytest.mark.parametrize("t", [None, 30.0])
@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_regressor_is_the_ensemble_prediction(get, t):
    # NTKRegressor on the MLP it builds from parameters against gradient_descent_mse_ensemble called on the same
    # architecture built by hand (at t = None: its continuous-time limit); same computation, 1e-12.
    x, y, xt, _ = regression_data(30, 8, 4)
    est = NTKRegressor(depth=2, activation="erf", W_std=1.4, b_std=0.3, get=get, t=t, learning_rate=0.5,
                       diag_reg=1e-3).fit(x.numpy(), y.numpy())  # fmt: skip
    from ntkit import nn as N

    net = N.Sequential(
        N.Linear(4, 512, W_std=1.4, b_std=0.3), N.Erf(), N.Linear(512, 512, W_std=1.4, b_std=0.3), N.Erf(),
        N.Linear(512, 1, W_std=1.4, b_std=0.3),
    )  # fmt: skip

    def reference(targets):
        predictor = nk.predict.gradient_descent_mse_ensemble(
            lambda a, b: nk.kernel(net, a, None if a is b else b), x, targets, 0.5, diag_reg=1e-3, continuous=t is None
        )
        mean, cov = predictor(t, xt, get=get, compute_cov=True)
        return mean.numpy(), cov.diagonal().sqrt().numpy()

    mean, std = reference(y)
    got_mean, got_std = est.predict(xt.numpy(), return_std=True)
    np.testing.assert_allclose(got_mean, mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_std, std, rtol=1e-10)
    # 2-D targets: one column per target, the same std for each (at finite t the mean-reduced loss of two
    # outputs trains each one at half the speed, hence the 2-D reference)
    y2 = torch.stack([y, -y], 1)
    two = NTKRegressor(depth=2, activation="erf", W_std=1.4, b_std=0.3, get=get, t=t, learning_rate=0.5,
                       diag_reg=1e-3).fit(x.numpy(), y2.numpy())  # fmt: skip
    m2, s2 = two.predict(xt.numpy(), return_std=True)
    mean2, std2 = reference(y2)
    np.testing.assert_allclose(m2, mean2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s2, np.stack([std2, std2], 1), rtol=1e-10)


def test_classifier_regresses_centred_one_hot_targets():
    x, y = load_iris(return_X_y=True)
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    clf = NTKClassifier(depth=1).fit(x, labels)
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"]
    reg = NTKRegressor(depth=1).fit(x, np.eye(3)[y] - 1 / 3)
    np.testing.assert_array_equal(clf.predict(x), clf.classes_[reg.predict(x).argmax(1)])
    assert clf.score(x, labels) > 0.95
    assert not hasattr(clf, "predict_proba")


def test_pipeline_and_grid_search():
    x, y = load_iris(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), NTKClassifier())
    grid = {"ntkclassifier__depth": [1, 3], "ntkclassifier__W_std": [1.0, 2.0], "ntkclassifier__diag_reg": [1e-4, 0.1]}
    grid = GridSearchCV(pipe, grid, cv=3)
    grid.fit(x, y)
    assert grid.best_score_ > 0.9
    assert set(grid.best_params_) == {"ntkclassifier__depth", "ntkclassifier__W_std", "ntkclassifier__diag_reg"}


def test_architecture_and_input_shape():
    # a CNN given as architecture=, rows reshaped by input_shape, equals the ensemble on the images
    x, y, xt, _ = regression_data(20, 5, 36)
    est = NTKRegressor(cnn(), W_std=1.2, b_std=0.1, input_shape=IMAGE).fit(x.numpy(), y.numpy())
    net = shared(cnn(), 1.2, 0.1)
    images = x.reshape(-1, *IMAGE)
    predictor = nk.predict.gradient_descent_mse_ensemble(
        lambda a, b: nk.kernel(net, a, None if a is b else b), images, y, diag_reg=1e-4, continuous=True
    )
    np.testing.assert_allclose(
        est.predict(xt.numpy()), predictor(None, xt.reshape(-1, *IMAGE)).numpy(), rtol=1e-12, atol=1e-12
    )


def test_bad_parameters_are_clear_errors():
    x, y, _, _ = regression_data(10, 0, 4)
    with pytest.raises(InvalidArgumentError, match="activation must be one of"):
        NTKRegressor(activation="swish").fit(x.numpy(), y.numpy())
    with pytest.raises(InvalidArgumentError, match="depth must be"):
        NTKRegressor(depth=-1).fit(x.numpy(), y.numpy())
    with pytest.raises(InvalidArgumentError, match="get must be"):
        NTKRegressor(get="ntkgp").fit(x.numpy(), y.numpy())
    with pytest.raises(InvalidArgumentError, match="input_shape"):
        NTKRegressor(cnn(), input_shape=(1, 5, 5)).fit(x.numpy(), y.numpy())
    with pytest.raises(InvalidArgumentError, match=r"torch\.nn\.Module"):
        NeuralKernel("mlp")(x.numpy())
    with pytest.raises(UnsupportedError, match="no weight layer"):
        NeuralKernel(torch.nn.ReLU())(x.numpy())
