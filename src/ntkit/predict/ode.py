"""Gradient descent on any loss of the outputs, in function space (theory.md §2.5-2.6).

A linearized model trained by ``torch.optim.SGD(lr, momentum)`` on a loss L(f(X), Y) moves in function
space as (v: gradient-space velocity, torch's momentum buffer seen through J)

    g_t = ∇_f L(f_t, Y),   w_{t+1} = β w_t + g_t,   f_{t+1} = f_t − lr Θ w_{t+1},

and test outputs follow as f_t(x) = f_0(x) − Θ(x, X) α_t with α_t = lr Σ_{k<=t} w_k. Whole steps are
iterated exactly like this. ``continuous=True`` integrates the ODE limit with
``scipy.integrate.solve_ivp``: α̇ = ∇_f L(f_0 − Θα) in time t·lr (gradient flow), or with momentum
α̈ = −γ α̇ + ∇_f L(f_0 − Θα), γ = (1 − β)/√lr, in time t·√lr (theory.md §2.5).

The iteration is resumable: :meth:`LossPredictor.state` returns a :class:`GradientDescentState` (f_t, w_t,
α_t at step t), and ``start=state`` continues from it instead of from step 0 (the same numbers as one call,
since the steps are the same).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.integrate import solve_ivp

from .._progress import Progress, progress_bar
from .._validation import check_tensor, format_shape
from ..errors import InvalidArgumentError, NonFiniteError, NtkitError, ShapeError, UnsupportedError
from .args import check_dtype, check_learning_rate, check_momentum, check_nonnegative, parse_times
from .layout import Layout, check_device, layout_of, promote_dtype
from .predictor import Evolve, FunctionSpacePredictor
from .train_kernels import TrainKernels

__all__ = ["GradientDescentState", "LossPredictor", "gradient_descent"]


def gradient_descent(
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ntk_train_train: torch.Tensor,
    y_train: torch.Tensor,
    learning_rate: float = 1.0,
    *,
    momentum: float = 0.0,
    continuous: bool = False,
    ode_method: str = "DOP853",
    rtol: float = 1e-10,
    atol: float = 1e-12,
    dtype: torch.dtype = torch.float64,
    trace_axes: int | tuple[int, ...] | None = None,
) -> LossPredictor:
    """Predictor of gradient-descent training of a linearized model on any loss of its outputs.

    Args:
        loss: ``loss(f, y) -> scalar tensor`` with f the outputs (N, O) (or (N,) for 1-D float targets), e.g.
            ``torch.nn.CrossEntropyLoss()`` (with integer class labels (N,) or class probabilities (N, O)) or
            ``torch.nn.MSELoss()``. Its gradient with respect to f is taken by autograd.
        ntk_train_train: per-output (N, N) or full (N, N, O, O) NTK on the training set (with ``trace_axes``:
            (N, N, *pairs of the kept output axes)).
        y_train: targets passed to ``loss`` as they are (integer labels stay integer).
        learning_rate, momentum: ``lr`` and ``momentum`` of torch.optim.SGD.
        continuous: integrate the ODE limit (time t·lr, or t·√lr with momentum) instead of iterating steps.
        ode_method, rtol, atol: ``scipy.integrate.solve_ivp`` method and tolerances (on α, for ``continuous``).
            For very long, stiff horizons ``"LSODA"`` or ``"Radau"`` can be faster.
        dtype: dtype of the computation (float64 by default).
        trace_axes: output axes over which the kernel is Θ ⊗ I, as :func:`gradient_descent_mse`'s (axes of the
            outputs f (N, *F); e.g. (1,) for outputs (N, C, H, W) and a kernel (N, N, H, H', W, W')).

    Returns:
        A :class:`LossPredictor` with the interface of :func:`gradient_descent_mse`'s predictor. There is no
        converged limit in general (cross-entropy logits grow without bound), so ``t`` must be finite. Its calls
        also take ``start=`` (a :class:`GradientDescentState` from :meth:`LossPredictor.state`: continue from
        there instead of step 0) and ``progress=True`` (a tqdm bar over the steps).
    """
    if not callable(loss):
        raise InvalidArgumentError(f"loss must be a callable loss(f, y) -> scalar, got {type(loss).__name__}.")
    k = check_tensor(ntk_train_train, "ntk_train_train", min_ndim=2)
    y = check_tensor(y_train, "y_train", min_ndim=1, allow_integer=True)
    check_device(y, "y_train", k.device)
    if k.shape[0] != y.shape[0]:
        raise ShapeError(
            f"ntk_train_train has shape {format_shape(k.shape)} but y_train {format_shape(y.shape)}: both must "
            "have the N training examples first."
        )
    solver = _Solver(ode_method, check_nonnegative(rtol, "rtol"), check_nonnegative(atol, "atol"))
    lr, beta = check_learning_rate(learning_rate), check_momentum(momentum)
    predictor = LossPredictor(loss, k, y, lr, beta, bool(continuous), solver, check_dtype(dtype), trace_axes)
    if trace_axes is not None and y.is_floating_point():
        predictor._layout(0.0)  # checks trace_axes against the kernel now
    return predictor


@dataclass(frozen=True)
class _Solver:
    """``scipy.integrate.solve_ivp`` settings."""

    method: str
    rtol: float
    atol: float


@dataclass(frozen=True)
class _Segment:
    """One call's iteration: to ``times`` (T,) from ``state`` = (f, velocity, α) (D, C) at time ``t0``, with
    initial outputs ``f0``, train kernel ``k`` (D, D) and progress ``bar``."""

    times: torch.Tensor
    f0: torch.Tensor
    k: torch.Tensor
    layout: Layout
    t0: float
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    bar: Progress


#: Train outputs and dual coefficients at the times (T, D, C), and (f, velocity, α) at the last time.
_SegmentResult = tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class GradientDescentState:
    """Gradient descent after ``t`` steps (time t for ``continuous``), returned by :meth:`LossPredictor.state`
    and accepted by its calls as ``start=``. ``fx_train`` is f_t on the training set, shaped like ``y_train``.

    The rest is the iteration in the predictor's matrix layout (D, C) (see ``ntkit.predict.layout``): the
    initial outputs ``f0``, the outputs ``f``, the velocity (the momentum buffer w_t; dα/dτ for the ODE) and
    the dual coefficients α_t, with f_t = f_0 − Θ α_t.
    """

    t: float
    layout: Layout
    f0: torch.Tensor
    f: torch.Tensor
    velocity: torch.Tensor
    coefficients: torch.Tensor
    predictor: LossPredictor = field(repr=False, compare=False)

    @property
    def fx_train(self) -> torch.Tensor:
        return self.layout.from_matrix(self.f)


class LossPredictor(FunctionSpacePredictor):
    """See :func:`gradient_descent`. ``p(t, fx_train_0, fx_test_0, ntk_test_train, *, start=None,
    progress=False)``: ``start`` continues from a :class:`GradientDescentState` (then ``fx_train_0`` comes from it
    and must be left out; every t must be >= ``start.t``); ``progress`` draws a tqdm bar over the steps.
    ``p.state(t, fx_train_0, *, start=None, progress=False)`` returns the state after t steps."""

    def __init__(
        self,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        kernel: torch.Tensor,
        y: torch.Tensor,
        lr: float,
        momentum: float,
        continuous: bool,
        solver: _Solver,
        dtype: torch.dtype,
        trace_axes: object = None,
    ):
        self.loss, self.lr, self.momentum, self.continuous, self.solver = loss, lr, momentum, continuous, solver
        self.dtype, self._kernel, self._out_dtype = dtype, kernel, promote_dtype(kernel, y)
        self._y = y.to(dtype) if y.is_floating_point() else y
        self._layouts: dict[tuple[int, ...], tuple[Layout, TrainKernels]] = {}
        self._trace_axes = trace_axes

    def _layout(self, fx_train_0: object) -> Layout:
        """The outputs' shape (N, *F) comes from float targets, else from ``fx_train_0``, else from a full
        (N, N, O, O) kernel (F = (O,))."""
        k, y = self._kernel, self._y
        regression_vector = y.is_floating_point() and y.ndim == 1
        if y.is_floating_point():
            out_shape = tuple(y.shape[1:]) or (1,)
        elif isinstance(fx_train_0, torch.Tensor) and fx_train_0.ndim >= 2:
            out_shape = tuple(fx_train_0.shape[1:])
        elif k.ndim == 4 and self._trace_axes is None:
            out_shape = (k.shape[2],)
        else:
            raise ShapeError(
                "with integer targets the shape of the outputs is unknown; pass fx_train_0 as a tensor of shape "
                "(N, O) (or (N, *F))."
            )
        if out_shape not in self._layouts:
            layout = layout_of(k, k.shape[0], out_shape, regression_vector, "ntk_train_train", self._trace_axes)
            matrix = layout.kernel_matrix(k, "ntk_train_train")
            kernels = TrainKernels(
                lambda _: matrix, lambda _: "ntk_train_train", diag_reg=0.0, absolute=False, dtype=self.dtype
            )
            self._layouts[out_shape] = (layout, kernels)
        return self._layouts[out_shape][0]

    def state(
        self,
        t: object,
        fx_train_0: object = 0.0,
        *,
        start: GradientDescentState | None = None,
        progress: bool = False,
    ) -> GradientDescentState:
        """The :class:`GradientDescentState` after ``t`` steps (one time), from step 0 or from ``start``."""
        times, scalar = parse_times(t)
        if not scalar:
            raise ShapeError("state(t) takes one time t, not several.")
        start = self._checked_start(start)
        layout, fx_train_0 = self._start_layout(start, fx_train_0)
        _, _, end = self._run(times, self._train_start(fx_train_0, layout), layout, start, progress)
        return end

    def _setup(self, fx_train_0: object, options: dict[str, object]) -> tuple[Layout, object, Evolve]:
        """Calls take ``start`` (continue from a :class:`GradientDescentState`; ``fx_train_0`` then comes from
        it) and ``progress`` (a tqdm bar over the steps)."""
        start, progress = self._checked_start(options.pop("start", None)), options.pop("progress", False)
        if options:
            raise InvalidArgumentError(f"unexpected argument(s) {', '.join(sorted(options))}; this predictor takes "
                                       "start= and progress= besides the outputs and kernels.")  # fmt: skip
        layout, fx_train_0 = self._start_layout(start, fx_train_0)

        def evolve(times: torch.Tensor, f0: torch.Tensor, lay: Layout) -> tuple[torch.Tensor, torch.Tensor]:
            train, coef, _ = self._run(times, f0, lay, start, progress)
            return train, coef

        return layout, fx_train_0, evolve

    def _checked_start(self, start: object) -> GradientDescentState | None:
        if start is not None and (not isinstance(start, GradientDescentState) or start.predictor is not self):
            raise InvalidArgumentError(
                "start must be a GradientDescentState returned by this predictor's state(...), got "
                + ("one from another predictor" if isinstance(start, GradientDescentState) else type(start).__name__)
                + "."
            )
        return start

    def _start_layout(self, start: GradientDescentState | None, fx_train_0: object) -> tuple[Layout, object]:
        """The layout and initial train outputs of a call: from ``start`` when given."""
        if start is None:
            return self._layout(fx_train_0), fx_train_0
        if not (isinstance(fx_train_0, int | float) and fx_train_0 == 0.0):
            raise InvalidArgumentError("pass either start= or fx_train_0 (the state holds the initial outputs).")
        return start.layout, start.layout.from_matrix(start.f0)

    def _gradient(self, f: torch.Tensor, layout: Layout) -> torch.Tensor:
        """∇_f L at outputs f (D, C), by autograd, in the same (D, C) layout."""
        with torch.enable_grad():
            f_user = layout.from_matrix(f).detach().requires_grad_(True)
            value = self.loss(f_user, self._y)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise UnsupportedError(
                    "loss(f, y) must return a scalar tensor (use reduction='mean' or 'sum'), got "
                    f"{type(value).__name__} {tuple(getattr(value, 'shape', ()))}."
                )
            (grad,) = torch.autograd.grad(value.reshape(()), f_user)
        if not bool(torch.isfinite(grad).all()):
            raise NonFiniteError(
                "the loss gradient is not finite; the outputs have diverged (learning rate too large?)."
            )
        return layout.to_matrix(grad)

    def _evolve(self, times: torch.Tensor, f0: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
        train, coef, _ = self._run(times, f0, layout, None, False)
        return train, coef

    def _run(
        self,
        times: torch.Tensor,
        f0: torch.Tensor,
        layout: Layout,
        start: GradientDescentState | None,
        progress: object,
    ) -> tuple[torch.Tensor, torch.Tensor, GradientDescentState]:
        """Train outputs and dual coefficients at ``times`` (T, D, C), and the state at the last time."""
        if not bool(torch.isfinite(times).all()):
            raise InvalidArgumentError(
                "t = inf: gradient descent on a general loss has no closed-form limit (cross-entropy logits grow "
                "without bound); pass finite times, or use gradient_descent_mse for MSE."
            )
        t0 = 0.0 if start is None else start.t
        if bool((times < t0).any()):
            raise InvalidArgumentError(
                f"t = {times[times < t0][0].item()} is before the start state's t = {t0}; a state can only be "
                "continued forwards."
            )
        k = self._layouts[layout.out_shape][1].matrix("ntk")
        zeros = torch.zeros_like(f0)
        state = (f0.clone(), zeros, zeros) if start is None else (start.f, start.velocity, start.coefficients)
        run = self._integrate if self.continuous else self._iterate
        desc = "gradient_descent (ODE)" if self.continuous else "gradient_descent"
        total = float(times.max()) - t0
        with progress_bar(progress, total if self.continuous else int(total), desc, "step") as bar:
            train, coef, end = run(_Segment(times, f0, k, layout, t0, state, bar))
        last = float(times.max())
        return train, coef, GradientDescentState(last, layout, f0, *end, predictor=self)

    def _iterate(self, seg: _Segment) -> _SegmentResult:
        times, k, layout, t0, bar = seg.times, seg.k, seg.layout, seg.t0, seg.bar
        if bool((times != times.round()).any()):
            raise InvalidArgumentError(
                f"t = {times[times != times.round()][0].item()} is not a whole number of steps; pass integers or "
                "continuous=True."
            )
        steps = [int(s) for s in times.tolist()]
        wanted = set(steps)
        f, w, alpha = seg.state
        saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for step in range(int(t0), max(steps) + 1):
            if step in wanted:
                saved[step] = (f.clone(), alpha.clone())
            if step == max(steps):
                break
            w = self.momentum * w + self._gradient(f, layout)
            f = f - self.lr * (k @ w)
            alpha = alpha + self.lr * w
            bar.update(1)
        train = torch.stack([saved[s][0] for s in steps])
        coef = torch.stack([saved[s][1] for s in steps])
        return train, coef, (f, w, alpha)

    def _integrate(self, seg: _Segment) -> _SegmentResult:
        times, f0, k, layout, t0, state, bar = seg.times, seg.f0, seg.k, seg.layout, seg.t0, seg.state, seg.bar
        shape, size = f0.shape, f0.numel()
        h = math.sqrt(self.lr)
        # gradient flow in τ = t·lr; heavy ball in τ = t·√lr with damping γ
        unit = h if self.momentum > 0 else self.lr
        tau, tau0 = (times * unit).numpy(), t0 * unit
        gamma = (1 - self.momentum) / h
        reached = [tau0]

        def advance(tau_now: float) -> None:
            if tau_now > reached[0]:
                bar.update((tau_now - reached[0]) / unit)
                reached[0] = tau_now

        def grad_at(alpha_flat: np.ndarray) -> np.ndarray:
            alpha = torch.from_numpy(alpha_flat).reshape(shape).to(device=self.device, dtype=self.dtype)
            g = self._gradient(f0 - k @ alpha, layout)
            return g.reshape(-1).to(device="cpu", dtype=torch.float64).numpy()

        if self.momentum > 0:

            def rhs(tau_now: float, y: np.ndarray) -> np.ndarray:
                advance(tau_now)
                alpha, speed = y[:size], y[size:]
                return np.concatenate([speed, -gamma * speed + grad_at(alpha)])

        else:

            def rhs(tau_now: float, y: np.ndarray) -> np.ndarray:
                advance(tau_now)
                return grad_at(y)

        _, speed0, alpha0 = (s.reshape(-1).to(device="cpu", dtype=torch.float64).numpy() for s in state)
        y0 = np.concatenate([alpha0, speed0]) if self.momentum > 0 else alpha0
        if float(tau.max()) == tau0:
            coef = state[2].expand(tau.size, *shape).clone()
            return f0 - torch.einsum("ij,tjc->tic", k, coef), coef, state
        order = np.argsort(tau, kind="stable")
        sol = solve_ivp(
            rhs,
            (tau0, float(tau.max())),
            y0,
            method=self.solver.method,
            t_eval=tau[order],
            rtol=self.solver.rtol,
            atol=self.solver.atol,
        )
        if not sol.success:
            raise NtkitError(
                f"the ODE solver ({self.solver.method}) failed: {sol.message}. Try ode_method='LSODA' or 'Radau', "
                "looser rtol/atol, or whole steps (continuous=False)."
            )
        alphas = np.empty((tau.size, size))
        alphas[order] = sol.y[:size].T
        coef = torch.from_numpy(alphas).to(device=self.device, dtype=self.dtype).reshape(tau.size, *shape)
        train = f0 - torch.einsum("ij,tjc->tic", k, coef)
        speed = (
            torch.from_numpy(sol.y[size:, -1].copy()).to(device=self.device, dtype=self.dtype).reshape(shape)
            if self.momentum > 0
            else state[1]
        )
        last = int(np.argmax(tau))
        return train, coef, (train[last], speed, coef[last])
