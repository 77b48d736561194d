"""scikit-learn adapters (the ``sklearn`` extra, ``pip install 'ntkit[sklearn]'``; docs/integrations.md).

- :class:`NeuralKernel`: the infinite-width NNGP or NTK of an architecture as a
  ``sklearn.gaussian_process.kernels.Kernel``, with ``W_std`` and ``b_std`` (shared by all weight layers) as
  hyperparameters, so ``GaussianProcessRegressor`` fits them by maximising the marginal likelihood, and the
  kernel composes with ``WhiteKernel``, ``ConstantKernel``, sums and products;
- :class:`NTKRegressor`, :class:`NTKClassifier`: estimators that predict like the infinite ensemble of infinitely
  wide networks trained by gradient descent on MSE for ``t`` steps (``nk.predict.gradient_descent_mse_ensemble``;
  t = None: converged), of an MLP described by parameters or of any architecture.

Inputs are 2-D arrays (n_samples, n_features), as scikit-learn passes them; ``input_shape`` reshapes each row
for architectures that take images (e.g. ``input_shape=(1, 8, 8)`` for a CNN on NCHW digits).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from . import nn as N
from ._adapters import kernel_diagonal, kernel_matrix, require, with_shared_std
from .errors import InvalidArgumentError
from .infinite.compute import kernel
from .infinite.kernel_type import Kernel as NtkitKernel
from .predict import gradient_descent_mse_ensemble

require("sklearn", "sklearn", "ntkit.sklearn")

from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin  # noqa: E402
from sklearn.gaussian_process import kernels as sk_kernels  # noqa: E402
from sklearn.preprocessing import LabelEncoder  # noqa: E402
from sklearn.utils.multiclass import check_classification_targets  # noqa: E402
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data  # noqa: E402

__all__ = ["ACTIVATIONS", "NTKClassifier", "NTKRegressor", "NeuralKernel", "mlp"]

GETS = ("nngp", "ntk")

#: Activations of the MLP the estimators build from ``activation=``.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": N.ReLU,
    "erf": N.Erf,
    "gelu": N.GELU,
    "sin": N.Sin,
    "identity": N.Identity,
}

#: Nominal hidden width of the MLP built from parameters. Widths play no role in the NNGP nor in the
#: NTK-parameterization NTK; the standard-parameterization NTK is normalised by it (docs/infinite.md).
_HIDDEN_WIDTH = 512


def _check_get(get: object) -> str:
    if get not in GETS:
        raise InvalidArgumentError(f"get must be 'nngp' or 'ntk', got {get!r}.")
    return str(get)


def _check_architecture(architecture: object) -> nn.Module:
    if not isinstance(architecture, nn.Module):
        raise InvalidArgumentError(
            f"architecture must be a torch.nn.Module (ntkit.nn layers or registered torch layers), got "
            f"{type(architecture).__name__}."
        )
    return architecture


def _check_std(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise InvalidArgumentError(f"{name} must be a number >= 0, got {value!r}.")
    if not math.isfinite(float(value)) or float(value) < 0:
        raise InvalidArgumentError(f"{name} must be a finite number >= 0, got {value!r}.")
    return float(value)


def _as_inputs(X: object, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    """A 2-D array (n, d) as a float64 tensor (n, *input_shape) (input_shape None: (n, d))."""
    x = torch.tensor(np.asarray(X, dtype=np.float64))  # a copy: X may be read-only
    if input_shape is None:
        return x
    shape = tuple(int(s) for s in input_shape)
    if math.prod(shape) != x.shape[1]:
        raise InvalidArgumentError(
            f"input_shape {shape} has {math.prod(shape)} entries but the inputs have {x.shape[1]} features per row."
        )
    return x.reshape(x.shape[0], *shape)


def mlp(
    n_features: int, depth: int, activation: str, parameterization: str, W_std: float, b_std: float
) -> N.Sequential:
    """``depth`` hidden ``ntkit.nn.Linear`` layers, each followed by ``activation``, and a linear readout, all with
    ``W_std`` and ``b_std``; depth 0 is a linear model."""
    if isinstance(depth, bool) or not isinstance(depth, int | np.integer) or depth < 0:
        raise InvalidArgumentError(f"depth must be an int >= 0 (hidden layers), got {depth!r}.")
    if activation not in ACTIVATIONS:
        raise InvalidArgumentError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}.")
    layers: list[nn.Module] = []
    for i in range(int(depth)):
        fan_in = n_features if i == 0 else _HIDDEN_WIDTH
        layers += [
            N.Linear(fan_in, _HIDDEN_WIDTH, W_std=W_std, b_std=b_std, parameterization=parameterization),
            ACTIVATIONS[activation](),
        ]
    fan_in = n_features if depth == 0 else _HIDDEN_WIDTH
    layers.append(N.Linear(fan_in, 1, W_std=W_std, b_std=b_std, parameterization=parameterization))
    return N.Sequential(*layers)


class NeuralKernel(sk_kernels.Kernel):  # type: ignore[misc]
    """The infinite-width NNGP or NTK of ``architecture`` as a scikit-learn GP kernel.

    k(x, x') = K(x, x') (``get="nngp"``) or Θ(x, x') (``get="ntk"``, the NTK as a prior covariance: the NTK-GP),
    computed by ``nk.kernel`` in float64 for the architecture with every weight layer's ``W_std`` and ``b_std``
    replaced by the kernel's two hyperparameters (layers without a bias keep none).

    ``__call__(X, Y=None, eval_gradient=False)`` returns K (n_X, n_Y) and, with ``eval_gradient``, its gradient
    (n_X, n_X, n_free) with respect to the log-hyperparameters, θ ∂K/∂θ, by autograd (one double-backward pass
    per hyperparameter). A hyperparameter whose bounds are ``"fixed"`` is left out, as in scikit-learn.

    Args:
        architecture: a torch module made of ``ntkit.nn`` layers and/or registered torch layers (``nk.kernel``).
        get: "nngp" or "ntk".
        W_std, b_std: the shared weight and bias standard deviations (> 0: they are fitted in log space).
        W_std_bounds, b_std_bounds: (low, high) for the optimiser, or "fixed".
        input_shape: the shape each row of X is reshaped to (e.g. (1, 8, 8) for a CNN), or None.
    """

    def __init__(
        self,
        architecture: nn.Module,
        get: str = "ntk",
        W_std: float = 1.0,
        b_std: float = 0.1,
        W_std_bounds: tuple[float, float] | str = (1e-2, 1e2),
        b_std_bounds: tuple[float, float] | str = (1e-5, 1e2),
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.architecture = architecture
        self.get = get
        self.W_std = W_std
        self.b_std = b_std
        self.W_std_bounds = W_std_bounds
        self.b_std_bounds = b_std_bounds
        self.input_shape = input_shape

    @property
    def hyperparameter_W_std(self) -> sk_kernels.Hyperparameter:  # noqa: N802
        return sk_kernels.Hyperparameter("W_std", "numeric", self.W_std_bounds)

    @property
    def hyperparameter_b_std(self) -> sk_kernels.Hyperparameter:
        return sk_kernels.Hyperparameter("b_std", "numeric", self.b_std_bounds)

    def _net(self, W_std: float | torch.Tensor, b_std: float | torch.Tensor) -> nn.Module:
        return with_shared_std(_check_architecture(self.architecture), W_std, b_std)

    def __call__(
        self, X: np.ndarray, Y: np.ndarray | None = None, eval_gradient: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        get = _check_get(self.get)
        x1 = _as_inputs(X, self.input_shape)
        x2 = None if Y is None else _as_inputs(Y, self.input_shape)
        if not eval_gradient:
            with torch.no_grad():
                net = self._net(_check_std(self.W_std, "W_std"), _check_std(self.b_std, "b_std"))
                return kernel_matrix(net, x1, x2, get).numpy()
        if x2 is not None:
            raise InvalidArgumentError(
                "the gradient can only be evaluated when Y is None (scikit-learn's kernel contract)."
            )
        free = [h.name for h in self.hyperparameters if not h.fixed]
        values = {
            name: torch.tensor(_check_std(getattr(self, name), name), dtype=torch.float64, requires_grad=name in free)
            for name in ("W_std", "b_std")
        }
        k = kernel_matrix(self._net(values["W_std"], values["b_std"]), x1, None, get)
        grads = []
        for name in free:
            # ∂K/∂θ entrywise by double backward: g(v) = Σ_ij v_ij ∂K_ij/∂θ is linear in v, so ∂g/∂v = ∂K/∂θ.
            v = torch.zeros_like(k, requires_grad=True)
            (g,) = torch.autograd.grad(k, values[name], v, create_graph=True)
            (dk,) = torch.autograd.grad(g, v, allow_unused=True)
            dk = torch.zeros_like(k) if dk is None else dk
            grads.append((values[name].detach() * dk).numpy())  # d/d log θ = θ d/dθ
        gradient = np.stack(grads, axis=-1) if grads else np.empty((k.shape[0], k.shape[0], 0))
        return k.detach().numpy(), gradient

    def diag(self, X: np.ndarray) -> np.ndarray:
        """k(x_i, x_i) (n,), from blocks of the kernel (cost n·256 kernel entries, not n²)."""
        with torch.no_grad():
            net = self._net(_check_std(self.W_std, "W_std"), _check_std(self.b_std, "b_std"))
            return kernel_diagonal(net, _as_inputs(X, self.input_shape), _check_get(self.get)).numpy()

    def is_stationary(self) -> bool:
        """Neural kernels depend on the inputs' norms and angles, not only on their difference."""
        return False

    def __repr__(self) -> str:
        return (
            f"NeuralKernel({type(self.architecture).__name__}, get={self.get!r}, W_std={self.W_std:.3g}, "
            f"b_std={self.b_std:.3g})"
        )


class _KernelFunction:
    """``kernel_fn(x1, x2)`` of ``net`` for ``nk.predict`` (a class, so that fitted estimators pickle); equal
    inputs take the symmetric path (``x2 is x1``: train-train and test-test kernels)."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net

    def __call__(self, x1: torch.Tensor, x2: torch.Tensor) -> NtkitKernel:
        return kernel(self.net, x1, None if x2 is x1 else x2)


class _NTKEstimator(BaseEstimator):  # type: ignore[misc]
    """Shared parameters and the prediction of :class:`NTKRegressor` and :class:`NTKClassifier`."""

    def __init__(
        self,
        architecture: nn.Module | None = None,
        *,
        depth: int = 2,
        activation: str = "relu",
        W_std: float = 1.0,
        b_std: float = 0.1,
        parameterization: str = "ntk",
        get: str = "ntk",
        t: float | None = None,
        learning_rate: float = 1.0,
        diag_reg: float = 1e-4,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.architecture = architecture
        self.depth = depth
        self.activation = activation
        self.W_std = W_std
        self.b_std = b_std
        self.parameterization = parameterization
        self.get = get
        self.t = t
        self.learning_rate = learning_rate
        self.diag_reg = diag_reg
        self.input_shape = input_shape

    def _network(self, n_features: int) -> nn.Module:
        W_std, b_std = _check_std(self.W_std, "W_std"), _check_std(self.b_std, "b_std")
        if self.architecture is None:
            return mlp(n_features, self.depth, self.activation, self.parameterization, W_std, b_std)
        return with_shared_std(_check_architecture(self.architecture), W_std, b_std)

    def _fit_targets(self, X: Any, targets: np.ndarray) -> None:
        """Build the network and the ensemble predictor for float targets (n, O) or (n,)."""
        _check_get(self.get)
        self.kernel_fn_ = _KernelFunction(self._network(X.shape[1]))
        self.x_train_ = _as_inputs(X, self.input_shape)
        self.y_train_ = torch.tensor(targets, dtype=torch.float64)
        self._predictor = self._build_predictor()

    def _build_predictor(self) -> Any:
        """The ``nk.predict`` ensemble predictor of the fitted data (it caches the train kernel's factors)."""
        with torch.no_grad():
            # t = None is the converged ensemble: the same limit for every stable learning rate, computed as
            # gradient flow's so that no learning rate has to be chosen.
            return gradient_descent_mse_ensemble(
                self.kernel_fn_,
                self.x_train_,
                self.y_train_,
                self.learning_rate,
                diag_reg=self.diag_reg,
                continuous=self.t is None,
            )

    def __getstate__(self) -> dict[str, Any]:
        # the predictor holds closures (not picklable); it is rebuilt from the fitted data on first use
        state = dict(super().__getstate__())
        state.pop("_predictor", None)
        return state

    def _predict_targets(self, X: Any, return_std: bool) -> tuple[np.ndarray, np.ndarray | None]:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        x = _as_inputs(X, self.input_shape)
        if getattr(self, "_predictor", None) is None:
            self._predictor = self._build_predictor()
        with torch.no_grad():
            if not return_std:
                return self._predictor(self.t, x, get=self.get).numpy(), None
            mean, cov = self._predictor(self.t, x, get=self.get, compute_cov=True)
        return mean.numpy(), torch.diagonal(cov).clamp_min(0).sqrt().numpy()


class NTKRegressor(RegressorMixin, _NTKEstimator):  # type: ignore[misc]
    """The mean (and standard deviation) of the infinite ensemble of infinitely wide networks trained by gradient
    descent on MSE, as a scikit-learn regressor (``nk.predict.gradient_descent_mse_ensemble``).

    The network is ``architecture`` (any module ``nk.kernel`` accepts; every weight layer takes ``W_std`` and
    ``b_std``), or, when it is None, an MLP of ``depth`` hidden layers with ``activation`` ("relu", "erf",
    "gelu", "sin", "identity") in ``parameterization`` "ntk" or "standard"; widths play no role.

    Args:
        get: "ntk" (all layers trained) or "nngp" (only the readout trained: the NNGP posterior at t = None).
        t: training steps of ``torch.optim.SGD(lr=learning_rate)`` on ``MSELoss(reduction="mean")``; None: the
            converged ensemble (t = ∞).
        learning_rate: used only when ``t`` is finite.
        diag_reg: added to the train-train kernels' diagonals, times their mean diagonal (observation noise).
        input_shape: the shape each row of X is reshaped to for the architecture (e.g. (1, 8, 8)), or None.

    Attributes:
        kernel_fn_: the network's kernel function ``kernel_fn(x1, x2)`` for ``nk.predict``.
        x_train_: the training inputs as a float64 tensor (n, *input_shape).
        y_train_: the training targets as a float64 tensor.
        n_features_in_: the number of features seen in ``fit``.
    """

    def fit(self, X: Any, y: Any) -> NTKRegressor:
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        self._fit_targets(X, np.asarray(y, dtype=np.float64))
        return self

    def predict(self, X: Any, return_std: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """The ensemble mean (n,) or (n, n_targets); with ``return_std`` also its standard deviation per example
        (the same for every target: (n,), or (n, n_targets) for 2-D targets, as GaussianProcessRegressor)."""
        mean, std = self._predict_targets(X, return_std)
        if std is None:
            return mean
        return mean, (std if mean.ndim == 1 else np.repeat(std[:, None], mean.shape[1], axis=1))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


class NTKClassifier(ClassifierMixin, _NTKEstimator):  # type: ignore[misc]
    """Classification by regressing one-hot targets, centred to mean 0 over classes (1 − 1/C for the class,
    −1/C elsewhere, as Lee et al. 2019), with the infinite ensemble of :class:`NTKRegressor` (same parameters);
    the predicted class is the argmax of the mean. There is no ``predict_proba``: a regression on one-hot
    targets gives no probabilities.

    Attributes:
        classes_: the class labels, in the order of the regression's outputs.
        y_train_: the centred one-hot targets (n, n_classes); ``kernel_fn_``, ``x_train_`` and ``n_features_in_``
            as in :class:`NTKRegressor`.
    """

    def fit(self, X: Any, y: Any) -> NTKClassifier:
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        encoder = LabelEncoder().fit(column_or_1d(y, warn=True))
        self.classes_ = encoder.classes_
        n_classes = len(self.classes_)
        one_hot = np.eye(n_classes)[encoder.transform(y)] - 1.0 / n_classes
        self._fit_targets(X, one_hot)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """The class whose regressed one-hot score (the ensemble mean) is largest, (n,)."""
        scores = self._predict_targets(X, return_std=False)[0]
        labels: np.ndarray = self.classes_[np.argmax(scores, axis=1)]
        return labels
