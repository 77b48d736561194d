"""Closed-form training dynamics and GP inference: kernels in, predictions out (docs/predict.md).

Time counts optimizer steps, and ``learning_rate``, ``momentum`` and ``reduction`` mean what they mean in
a PyTorch loop ``torch.optim.SGD(params, lr, momentum)`` on ``torch.nn.MSELoss(reduction)``.

- :func:`gradient_descent_mse`: one linearized network (empirical NTK), closed form, any t;
- :func:`gradient_descent`: any loss (e.g. cross-entropy), exact steps or an ODE solution;
- :func:`gradient_descent_mse_ensemble`: the infinite ensemble of infinite-width networks, mean and covariance;
- :func:`gp_inference`: NNGP / NTK / NTK-GP posteriors (t = inf);
- :func:`marginal_log_likelihood`: the GP log evidence, differentiable, to fit kernel hyperparameters;
- :func:`max_learning_rate`, :func:`critical_learning_rate`: learning-rate limits;
- :func:`weight_change`: the parameter change of the linearized model.
"""

from .ensemble import gradient_descent_mse_ensemble
from .evidence import marginal_log_likelihood
from .gp import gp_inference
from .learning_rate import critical_learning_rate, max_learning_rate
from .mse import gradient_descent_mse
from .ode import gradient_descent
from .weight_change import weight_change

__all__ = [
    "critical_learning_rate",
    "gp_inference",
    "gradient_descent",
    "gradient_descent_mse",
    "gradient_descent_mse_ensemble",
    "marginal_log_likelihood",
    "max_learning_rate",
    "weight_change",
]
