"""Training of a linear model on MSE, solved exactly along each eigenmode of the train kernel.

Along an eigenvector of the train kernel with eigenvalue λ the train residual r = f − y evolves on its
own (theory.md §2.2-2.5). With the loop's units (``lr``, the MSE gradient scale s of
:func:`~ntkit.predict.args.loss_scale`, c = lr·s) and r_0 = 1, this module returns for every time t

- ``phi`` φ_t(λ) = r_t, the factor the residual is multiplied by, and
- ``coef`` g_t(λ) = (1 − φ_t(λ)) / λ, the dual coefficient: f_t − f_0 = −Θ(·, X) V diag(g_t) Vᵀ r_0,

computed without dividing by λ. λ = 0 is the null space (exact zeros and the eigenvalues at round-off level that
:func:`~ntkit.predict.eigen.check_spectrum` sets to 0): φ = 1 and g = 0 there at every t. In exact arithmetic
the null space of Θ(X, X) = J Jᵀ is that of Jᵀ, so Θ(x, X) v = 0 and Jᵀ v = 0 for a null vector v: its
coefficient moves neither the outputs nor the parameters, and 0 keeps round-off in Θ(x, X) v from being
multiplied by the limit c·t of g. The four regimes:

- discrete GD (torch.optim.SGD, no momentum): φ = (1 − cλ)^t, g = −expm1(t·log1p(−cλ))/λ;
- gradient flow (``continuous``, time t·lr): φ = e^{−cλt}, g = −expm1(−cλt)/λ;
- heavy ball (SGD with momentum β as torch implements it: v ← βv + ∇θL, θ ← θ − lr·v): per mode the
  state (r, v, a) (residual, function-space velocity, accumulated coefficient) obeys
  v' = βv + c·r, r' = r − λv', a' = a + v', a 3x3 linear map M(λ); (r, v, a)_t = M^t (1, 0, 0), by
  binary powering (:func:`_matrix_power`: log2(t) squarings, any t, 2**70 or 2**300 as well), exact for every λ,
  repeated or complex roots alike;
- continuous heavy ball (theory.md §2.5, as in neural-tangents): with h = √lr, time τ = t·h and damping
  γ = (1 − β)/h, ṙ = −λp, ṗ = s·r − γp, ȧ = p; (r, p, a)(τ) = exp(Aτ)(1, 0, 0) by
  ``torch.linalg.matrix_exp``. This is the small-lr limit of the heavy-ball loop.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import InvalidArgumentError, NumericalWarning
from .args import check_learning_rate, check_momentum, check_reduction, loss_scale

__all__ = ["Schedule", "check_limit_exists", "check_times", "mode_factors", "warn_if_divergent"]


@dataclass(frozen=True)
class Schedule:
    """The training loop: learning rate, MSE gradient scale s (∇_f L = s·(f − y)), momentum, continuous."""

    lr: float
    scale: float
    momentum: float = 0.0
    continuous: bool = False

    @classmethod
    def from_loop(
        cls, learning_rate: object, momentum: object, reduction: object, continuous: object, n_entries: int
    ) -> Schedule:
        """The schedule of ``torch.optim.SGD(lr, momentum)`` on ``MSELoss(reduction)`` over ``n_entries`` = N·O
        target entries, with the arguments checked."""
        return cls(
            lr=check_learning_rate(learning_rate),
            scale=loss_scale(check_reduction(reduction), n_entries),
            momentum=check_momentum(momentum),
            continuous=bool(continuous),
        )

    @property
    def c(self) -> float:
        """Step size in function space per unit eigenvalue: c = lr·s."""
        return self.lr * self.scale

    @property
    def c_max(self) -> float:
        """The discrete iteration converges iff c·λ < c_max = 2(1 + β) for every eigenvalue λ > 0."""
        return 2 * (1 + self.momentum)

    def max_learning_rate(self, lam_max: float) -> float:
        """The learning rate at which the discrete iteration stops converging: 2(1 + β) / (s·λ_max)."""
        return self.c_max / (self.scale * lam_max)


def warn_if_divergent(sched: Schedule, lam_max: float) -> None:
    """A :class:`NumericalWarning` when the discrete iteration diverges (c·λ_max > 2(1 + β))."""
    if sched.continuous or sched.c * lam_max <= sched.c_max:
        return
    warnings.warn(
        f"learning_rate = {sched.lr:g} is {sched.c * lam_max / sched.c_max:.3g} x the largest stable one "
        f"({sched.max_learning_rate(lam_max):.4g} for this kernel, see max_learning_rate): gradient descent "
        "diverges, and the predicted outputs grow without bound.",
        NumericalWarning,
        stacklevel=4,
    )


def check_limit_exists(sched: Schedule, k: torch.Tensor, lam_max: Callable[[], float]) -> None:
    """At t = inf the discrete iteration must converge: c·λ_max < 2(1 + β). The row-sum bound
    λ_max <= max_i Σ_j |K_ij| settles most cases before ``lam_max()`` (an eigendecomposition) is called."""
    if sched.continuous or sched.c * float(k.abs().sum(1).max()) < sched.c_max:
        return
    largest = lam_max()
    if sched.c * largest >= sched.c_max:
        raise InvalidArgumentError(
            f"t = inf asks for the converged outputs, but at learning_rate = {sched.lr:g} gradient descent does not "
            f"converge (the largest stable learning rate for this kernel is {sched.max_learning_rate(largest):.4g})."
            " Pass a smaller learning_rate, finite t, or continuous=True."
        )


def check_times(times: torch.Tensor, evals: torch.Tensor, sched: Schedule) -> None:
    """Reject times the discrete iteration does not define: non-integer steps where a factor is negative
    (plain GD) or with momentum (the heavy-ball recursion has no real interpolation between steps). Any whole
    number of steps is accepted in every mode, however large (every float above 2**53 is a whole number)."""
    if sched.continuous:
        return
    finite = times[torch.isfinite(times)]
    non_integer = finite != finite.round()
    if not bool(non_integer.any()):
        return
    example = float(finite[non_integer][0])
    if sched.momentum > 0:
        raise InvalidArgumentError(
            f"t = {example} is not a whole number of steps; the heavy-ball iteration is defined at whole steps "
            "only. Pass integers, or continuous=True for the continuous-time limit."
        )
    n_neg = int((sched.c * evals > 1).sum())
    if n_neg:
        raise InvalidArgumentError(
            f"t = {example} is not a whole number of steps, and at this learning rate {n_neg} eigenmode(s) flip sign "
            "every step (1 - c*lambda < 0), so a fractional step is undefined. Pass integers, a smaller learning "
            "rate, or continuous=True."
        )


def _safe_ratio(num: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """num / λ, and 0 where λ = 0 (the null space, module docs)."""
    zero = lam == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(lam), lam))


def _plain(lam: torch.Tensor, t: torch.Tensor, sched: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
    x = sched.c * lam  # (1, D)
    if sched.continuous:
        phi = torch.exp(-x * t)
        return phi, _safe_ratio(-torch.expm1(-x * t), lam)
    positive = x < 1
    log_base = torch.log1p(-torch.where(positive, x, torch.zeros_like(x)))
    phi_pos = torch.exp(t * log_base)
    phi_neg = torch.pow(1 - x, t)  # whole steps only (checked): exact sign
    phi = torch.where(positive, phi_pos, phi_neg)
    num = torch.where(positive, -torch.expm1(t * log_base), 1 - phi_neg)
    return phi, _safe_ratio(num, lam)


def _heavy_ball(lam: torch.Tensor, times: torch.Tensor, sched: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
    beta, c = sched.momentum, sched.c
    d = lam.numel()
    m = torch.zeros(d, 3, 3, dtype=lam.dtype, device=lam.device)
    m[:, 0, 0] = 1 - c * lam
    m[:, 0, 1] = -beta * lam
    m[:, 1, 0] = c
    m[:, 1, 1] = beta
    m[:, 2, 0] = c
    m[:, 2, 1] = beta
    m[:, 2, 2] = 1
    phi = torch.empty(times.numel(), d, dtype=lam.dtype, device=lam.device)
    coef = torch.empty_like(phi)
    powers: dict[int, torch.Tensor] = {}
    for i, t in enumerate(times.tolist()):
        n = int(t)
        if n not in powers:
            powers[n] = _matrix_power(m, n)[:, :, 0]
        phi[i], coef[i] = powers[n][:, 0], powers[n][:, 2]
    return phi, coef


def _matrix_power(m: torch.Tensor, n: int) -> torch.Tensor:
    """m^n for a batch of square matrices m (..., k, k) and a Python int n >= 0 of any size, by binary powering
    (``torch.linalg.matrix_power`` takes int64 only, so it stopped at 2**63 steps)."""
    result = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device).expand_as(m)
    base = m
    while n:
        if n & 1:
            result = result @ base
        n >>= 1
        if n:
            base = base @ base
    return result


def _heavy_ball_flow(lam: torch.Tensor, times: torch.Tensor, sched: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
    h = math.sqrt(sched.lr)
    gamma = (1 - sched.momentum) / h
    d = lam.numel()
    a = torch.zeros(d, 3, 3, dtype=lam.dtype, device=lam.device)
    a[:, 0, 1] = -lam
    a[:, 1, 0] = sched.scale
    a[:, 1, 1] = -gamma
    a[:, 2, 1] = 1
    tau = (times * h).to(lam)
    first_column = torch.linalg.matrix_exp(a.unsqueeze(0) * tau[:, None, None, None])[..., 0]  # (T, D, 3)
    return first_column[..., 0], first_column[..., 2]


def mode_factors(evals: torch.Tensor, times: torch.Tensor, sched: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """(φ_t(λ), g_t(λ)) of shape (T, D) for eigenvalues ``evals`` (D,) >= 0 and finite ``times`` (T,) (module docs);
    φ = 1 and g = 0 where λ = 0."""
    if sched.momentum == 0:
        return _plain(evals.unsqueeze(0), times.to(evals).unsqueeze(1), sched)
    if sched.continuous:
        phi, coef = _heavy_ball_flow(evals, times, sched)
    else:
        phi, coef = _heavy_ball(evals, times, sched)
    null = evals == 0
    return phi.masked_fill(null, 1.0), coef.masked_fill(null, 0.0)
