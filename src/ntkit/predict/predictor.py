"""The predictor interface shared by :func:`gradient_descent_mse` and :func:`gradient_descent`.

``p(t, fx_train_0, fx_test_0=None, ntk_test_train=None)`` returns the train outputs at time(s) ``t``,
or ``(fx_train_t, fx_test_t)`` when a test kernel is given. A subclass computes, for the train set, the
outputs f_t(X) and the dual coefficients α_t with f_t − f_0 = −Θ(·, X) α_t (theory.md §2.4: every
full-batch first-order method on the linearized model moves in the span of the train gradients), so
test outputs follow as f_t(x) = f_0(x) − Θ(x, X) α_t.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._validation import check_tensor, format_shape
from ..errors import InvalidArgumentError, ShapeError
from .args import parse_times
from .eigen import stacked_matmul
from .layout import Layout, check_device, promote_dtype

__all__ = ["Evolve", "FunctionSpacePredictor", "outputs_argument"]

#: ``evolve(times (T,), f0 (D, C), layout) -> (train outputs, dual coefficients)``, each (T, D, C).
Evolve = Callable[[torch.Tensor, torch.Tensor, Layout], tuple[torch.Tensor, torch.Tensor]]


def outputs_argument(
    value: object, name: str, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """A number (broadcast) or a tensor of exactly ``shape``, on ``device``, as ``dtype``."""
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be a tensor of shape {format_shape(shape)} or a number, got a bool.")
    if isinstance(value, int | float):
        return torch.full(shape, float(value), dtype=dtype, device=device)
    value = check_tensor(value, name)
    if tuple(value.shape) != shape:
        raise ShapeError(f"{name} has shape {format_shape(value.shape)}; expected {format_shape(shape)}.")
    check_device(value, name, device)
    return value.to(dtype)


class FunctionSpacePredictor:
    """Base class: argument handling and result assembly. Subclasses set ``_kernel`` (the train kernel
    as given), ``dtype`` (of the linear algebra) and ``_out_dtype``, and implement :meth:`_layout` and
    :meth:`_evolve`."""

    _kernel: torch.Tensor
    dtype: torch.dtype
    _out_dtype: torch.dtype

    @property
    def device(self) -> torch.device:
        return self._kernel.device

    def _layout(self, fx_train_0: object) -> Layout:
        raise NotImplementedError

    def _evolve(self, times: torch.Tensor, f0: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
        """Train outputs and dual coefficients at ``times`` (T,), each of shape (T, D, C), from f0 (D, C)."""
        raise NotImplementedError

    def _setup(self, fx_train_0: object, options: dict[str, object]) -> tuple[Layout, object, Evolve]:
        """The layout, the initial train outputs and the function that evolves them, for a call with these
        ``options`` (none here; a subclass with options of its own overrides this)."""
        if options:
            raise InvalidArgumentError(f"unexpected argument(s) {', '.join(sorted(options))} for this predictor.")
        return self._layout(fx_train_0), fx_train_0, self._evolve

    def _train_start(self, fx_train_0: object, layout: Layout) -> torch.Tensor:
        shape = layout.outputs_shape(layout.n_train)
        return layout.to_matrix(outputs_argument(fx_train_0, "fx_train_0", shape, self.device, self.dtype))

    def coefficients(self, t: object, fx_train_0: object = 0.0) -> torch.Tensor:
        """Dual coefficients α_t of shape (N, O) (or (T, N, O)): f_t(x) = f_0(x) − Θ(x, X) α_t.

        The parameter change of the linearized model is ω_t = −J(X)ᵀ α_t (theory.md §2.2, eq. 8, and §2.4).
        """
        times, scalar = parse_times(t)
        layout = self._layout(fx_train_0)
        _, coef = self._evolve(times, self._train_start(fx_train_0, layout), layout)
        return self._result(coef, layout, scalar, self._result_dtype(fx_train_0))

    def __call__(
        self,
        t: object = None,
        fx_train_0: object = 0.0,
        fx_test_0: object = None,
        ntk_test_train: torch.Tensor | None = None,
        **options: object,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Outputs at time(s) ``t`` (steps; None or inf: converged).

        Args:
            t: an int or float, a 1-D tensor of times (results are stacked along a new first axis), or
                None / ``math.inf`` for the converged limit.
            fx_train_0: outputs at initialization on the train set, (N, O) like ``y_train`` (or a number).
            fx_test_0: outputs at initialization on the test set, (M, O) (or a number; None means 0).
            ntk_test_train: test-train kernel, (M, N) for a per-output train kernel or (M, N, O, O) for a
                full one. Outputs with more axes (N, *F) (``trace_axes``): (M, N, *pairs of the kept axes),
                like the train kernel.
            options: a predictor's own keyword arguments (``start``, ``progress`` of ``gradient_descent``'s).

        Returns:
            ``fx_train_t`` of shape ([T,] N, O), or ``(fx_train_t, fx_test_t)`` when ``ntk_test_train`` is given.
        """
        layout, fx_train_0, evolve = self._setup(fx_train_0, options)
        times, scalar = parse_times(t)
        f0 = self._train_start(fx_train_0, layout)
        out_dtype = self._result_dtype(fx_train_0, fx_test_0, ntk_test_train)
        if ntk_test_train is None:
            if fx_test_0 is not None:
                raise ShapeError("fx_test_0 was given without ntk_test_train; pass the test-train kernel as well.")
            train, _ = evolve(times, f0, layout)
            return self._result(train, layout, scalar, out_dtype)
        k_test = check_tensor(ntk_test_train, "ntk_test_train", min_ndim=2)
        check_device(k_test, "ntk_test_train", self.device)
        k_test = layout.kernel_matrix(k_test, "ntk_test_train").to(self.dtype)
        n_test = ntk_test_train.shape[0]
        shape = layout.outputs_shape(n_test)
        f_test_0 = layout.to_matrix(
            outputs_argument(0.0 if fx_test_0 is None else fx_test_0, "fx_test_0", shape, self.device, self.dtype)
        )
        train, coef = evolve(times, f0, layout)
        test = f_test_0 - stacked_matmul(k_test, coef)
        return self._result(train, layout, scalar, out_dtype), self._result(test, layout, scalar, out_dtype)

    def _result_dtype(self, *args: object) -> torch.dtype:
        """The promotion of ``_out_dtype`` (the kernel's and targets') and the dtypes of tensor arguments."""
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        return promote_dtype(torch.empty(0, dtype=self._out_dtype), *tensors)

    @staticmethod
    def _result(m: torch.Tensor, layout: Layout, scalar: bool, dtype: torch.dtype) -> torch.Tensor:
        out = layout.from_matrix(m).to(dtype)
        return out[0] if scalar else out
