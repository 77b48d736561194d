"""The parameter change ω_t = θ_t − θ_0 of a linearized model trained on MSE (theory.md §2.2, eq. 8, and §2.3-2.5).

Every full-batch first-order method moves the linearized model's parameters in the row space of the
train Jacobian J = ∂f(X)/∂θ (theory.md §2.4), so ω_t = −Jᵀ α_t with the dual coefficients α_t of
:meth:`MSEPredictor.coefficients`: α_t = Θ⁻¹(I − (I − cΘ)^t)(f_0 − Y) for SGD (Θ⁻¹(I − e^{−cΘt})(f_0 − Y)
for gradient flow, eq. 8), and the heavy-ball analogue with momentum. ω_t is one vector-Jacobian product
of α_t per time; the Jacobian is never formed.
"""

from __future__ import annotations

import torch
from torch.func import vjp

from .._functional import ModelArg, ParamsArg, check_input_dtype, functionalize, translate_transform_errors
from .._validation import check_tensor, format_shape
from ..empirical import empirical_ntk
from ..errors import ShapeError
from .mse import gradient_descent_mse

__all__ = ["weight_change"]


def weight_change(
    model: ModelArg,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    learning_rate: float,
    t: object,
    *,
    fx_train_0: torch.Tensor | None = None,
    params: ParamsArg = None,
    momentum: float = 0.0,
    reduction: str = "mean",
    continuous: bool = False,
    diag_reg: float = 0.0,
    ntk_train_train: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """ω_t = θ_t − θ_0 of the linearized ``model`` after ``t`` steps of SGD on MSE, without training.

    Args:
        model: a torch.nn.Module (or ``f(params, x)`` with ``params`` a dict), linearized at its current
            parameters.
        x_train: training inputs (N, ...).
        y_train: targets (N, O) (or (N,) for one output).
        learning_rate, t, momentum, reduction, continuous, diag_reg: as in :func:`gradient_descent_mse`.
        fx_train_0: the model's outputs on ``x_train`` (N, O), if already computed.
        params: which parameters are trained (None: all with requires_grad; names, patterns, a predicate or a
            dict of values; see ntkit._functional).
        ntk_train_train: the full empirical NTK (N, N, O, O) if already computed; by default
            ``nk.empirical_ntk(model, x_train, params=params, trace_outputs=False)``.

    Returns:
        A dict keyed like the selected parameters; each value has the parameter's shape, with a leading time
        axis (T, ...) when ``t`` is a 1-D tensor of times.
    """
    fm = functionalize(model, params)
    x = check_tensor(x_train, "x_train", min_ndim=1, allow_integer=True)
    check_input_dtype(fm, x)
    if fx_train_0 is None:
        with torch.no_grad(), translate_transform_errors():
            fx_train_0 = fm.fn(fm.params, x)
    f0 = check_tensor(fx_train_0, "fx_train_0", ndim=2)
    y = check_tensor(y_train, "y_train", min_ndim=1)
    if y.ndim == 1 and f0.shape[1] == 1:
        y = y.unsqueeze(1)
    if tuple(y.shape) != tuple(f0.shape):
        raise ShapeError(
            f"y_train has shape {format_shape(y.shape)} but the model's outputs on x_train have shape "
            f"{format_shape(f0.shape)}; they must match."
        )
    if ntk_train_train is None:
        ntk_train_train = empirical_ntk(model, x, params=params, trace_outputs=False)
    predictor = gradient_descent_mse(
        ntk_train_train,
        y,
        learning_rate,
        momentum=momentum,
        reduction=reduction,
        diag_reg=diag_reg,
        continuous=continuous,
    )
    alpha = predictor.coefficients(t, f0).to(fm.dtype)
    with translate_transform_errors():
        _, pullback = vjp(lambda p: fm.fn(p, x), fm.params)  # type: ignore[misc]  # torch types vjp's result as a 2- or 3-tuple whatever has_aux is
        if alpha.ndim == 2:
            (grads,) = pullback(alpha)
            return {name: -g for name, g in grads.items()}
        per_time = [pullback(a)[0] for a in alpha]
    return {name: -torch.stack([g[name] for g in per_time]) for name in fm.params}
