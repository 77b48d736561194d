"""Gaussian quadrature of E[f(u)] and E[f(u) g(v)] for elementwise functions f, g.

Everything here works elementwise on broadcastable tensors ``var1``, ``cov``, ``var2`` describing, per
element, a centred Gaussian pair (u, v) ~ N(0, [[var1, cov], [cov, var2]]) (theory.md §4.2).
:func:`gaussian_mean`, :func:`gaussian_cross`: Gaussian quadrature of E[f(u)] (d nodes) and E[f(u) g(v)]
(d² nodes) with the lines u = 0, v = 0 as breakpoints (half-range Gauss-Hermite rules, polar in 2-D),
chunked under a memory budget and checkpointed under autograd, optionally checked against coarser rules.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.special import roots_legendre
from torch.utils.checkpoint import checkpoint

from .._memory import check_fits, resolve_budget
from ..errors import InvalidArgumentError, UnsupportedError
from .stable import angle, broadcast_shape, clamp_cov, safe_sqrt

__all__ = [
    "DEFAULT_DEGREE",
    "DEFAULT_TOLERANCE",
    "check_degree",
    "gaussian_cross",
    "gaussian_first_moment",
    "gaussian_mean",
]

#: Quadrature degree used when none is given: d² function evaluations per 2-D expectation, d per 1-D one.
#: Accuracy measured in docs/infinite_activations.md ("Quadrature accuracy").
DEFAULT_DEGREE = 32
#: Relative accuracy that Elementwise and compose() check their quadrature against (None: no check).
DEFAULT_TOLERANCE = 1e-4

# Temporaries per quadrature node (node values, function values, the function's own intermediates), used to
# size chunks; and a cap on one chunk's node array so it stays cache-friendly even under a large budget.
_WORK_FACTOR = 4
_MAX_CHUNK_BYTES = 8 * 2**20

Fn = Callable[[torch.Tensor], torch.Tensor]
#: A quadrature memory setting: bytes, a string such as "4G", or None for ntkit's default.
Budget = int | str | None
#: A quadrature rule: (points per dimension, coarser variant or None) -> (function of the flat arguments'
#: chunks, nodes per element).
Rule = Callable[[int, int | None], tuple[Callable[..., torch.Tensor], int]]
#: The Cauchy-Schwarz scale of each element: (degree, flat arguments) -> tensor.
Bound = Callable[[int, list[torch.Tensor]], torch.Tensor]


# Why not a tensor Gauss-Hermite grid: a product rule integrates smooth functions well, but the functions met
# here have kinks or jumps at 0 (ReLU-like ones, |erf|, chains through ReLU, derivatives of those), where a
# Hermite rule converges like 1/degree (measured: ReLU's Ṫ is 3% off at d = 64). Every such kink lies on a
# line through the origin of the (z1, z2) plane: u = 0 or v = 0. In polar coordinates these are 4 rays, so
# splitting the angle there leaves, on each sector, an integrand that is smooth in the angle and along each
# ray: Gauss-Legendre in the angle and a Gauss rule for the weight r·exp(−r²/2) on [0, ∞) (a half-range
# Hermite rule) in the radius then converge geometrically for piecewise-smooth functions with their
# breakpoints at 0, and are exact for positively homogeneous polynomials (ReLU, Abs) at any degree.


@functools.lru_cache(maxsize=64)
def _half_line_rule(power: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss nodes and weights for the weight r^power·exp(−r²/2) on [0, ∞), float64, n points.

    Recurrence coefficients by the discretized Stieltjes procedure on a Gauss-Legendre discretisation of
    [0, R] (R past the last node and the Gaussian's tail), then Golub-Welsch (eigenvalues of the Jacobi matrix).
    Weights are scaled to the exact mass ∫ r^power e^{−r²/2} dr = 2^{(power−1)/2} Γ((power+1)/2).
    """
    big_r = math.sqrt(2 * (2 * n + power)) + 12.0
    x, w = roots_legendre(max(1000, 6 * n))
    r = (x + 1) * (big_r / 2)
    wr = w * (big_r / 2) * r**power * np.exp(-r * r / 2)
    alpha, beta = np.zeros(n), np.zeros(n)
    p_prev, p, norm_prev = np.zeros_like(r), np.ones_like(r), 1.0
    for k in range(n):  # p: the k-th monic orthogonal polynomial at r, rescaled so the previous one has norm 1
        norm = float(np.dot(wr, p * p))
        alpha[k] = float(np.dot(wr, r * p * p)) / norm
        beta[k] = norm / norm_prev
        p_next = (r - alpha[k]) * p - (beta[k] if k else 0.0) * p_prev
        scale = math.sqrt(norm)
        p_prev, p, norm_prev = p / scale, p_next / scale, 1.0
    off = np.sqrt(beta[1:])
    nodes, vectors = np.linalg.eigh(np.diag(alpha) + np.diag(off, 1) + np.diag(off, -1))
    mass = 2 ** ((power - 1) / 2) * math.gamma((power + 1) / 2)
    return nodes, mass * vectors[0] ** 2


@functools.lru_cache(maxsize=64)
def _unit_legendre(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [0, 1]."""
    x, w = roots_legendre(m)
    return (x + 1) / 2, w / 2


def _as(arrays: Sequence[np.ndarray], like: torch.Tensor) -> list[torch.Tensor]:
    return [torch.as_tensor(a, dtype=like.dtype, device=like.device) for a in arrays]


def check_degree(degree: object) -> None:
    """Raise :class:`~ntkit.errors.InvalidArgumentError` unless ``degree`` is a positive integer."""
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise InvalidArgumentError(
            f"the quadrature degree must be a positive integer (default {DEFAULT_DEGREE}), got {degree}."
        )


def _points(degree: int) -> int:
    """Nodes per dimension for a ``degree``: ⌈degree/2⌉ in the radius and per angular sector (and ⌈degree/2⌉
    per half-line in 1-D), so a 2-D expectation costs degree² evaluations of each function, 1-D degree."""
    check_degree(degree)
    return (degree + 1) // 2


def _flatten(args: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Size]:
    """Broadcast ``args`` to one shape and flatten them (1-D, one floating dtype)."""
    tensors = [torch.as_tensor(a) for a in args]
    floats = [a.dtype for a in tensors if a.is_floating_point()]
    dtype = functools.reduce(torch.promote_types, floats) if floats else torch.get_default_dtype()
    shape = broadcast_shape(*(a.shape for a in tensors))
    return [a.to(dtype).expand(shape).reshape(-1) for a in tensors], shape


def _map_chunks(
    fn: Callable[..., torch.Tensor], flat: list[torch.Tensor], nodes_per_element: int, quadrature_budget: Budget
) -> torch.Tensor:
    """``fn`` on slices of the 1-D ``flat`` arguments, sized so ``nodes_per_element`` values per element stay
    under the memory budget; each slice is checkpointed when autograd records, so the graph keeps only
    inputs and outputs (not the node arrays) whatever the number of layers."""
    n, dtype, device = flat[0].numel(), flat[0].dtype, flat[0].device
    if n == 0:
        return torch.zeros(0, dtype=dtype, device=device)
    budget = resolve_budget(quadrature_budget, device)
    per_element = nodes_per_element * dtype.itemsize * _WORK_FACTOR
    check_fits(
        per_element, budget, "Gaussian quadrature of one element", "Raise quadrature_budget or lower the degree."
    )
    chunk = max(1, min(n, budget // per_element, _MAX_CHUNK_BYTES // per_element))
    record = torch.is_grad_enabled() and any(a.requires_grad for a in flat)
    outs = []
    for start in range(0, n, chunk):
        parts = [a[start : start + chunk] for a in flat]
        outs.append(checkpoint(fn, *parts, use_reentrant=False) if record else fn(*parts))
    return torch.cat(outs)


#: Values within this share of the Cauchy-Schwarz bound √(E f² E g²) count as converged whatever their
#: relative error (an expectation near 0 by cancellation cannot be checked relative to itself).
_FLOOR = 1e-10
#: ... or within this many units of round-off of that scale when the dtype cannot resolve _FLOOR (float32: a sum
#: of degree² terms each up to the bound carries about √(degree²)·eps of it, 4e-6 at degree 32).
_ROUNDOFF_FLOOR_ULPS = 64
#: With a tolerance, elements that fail the check are recomputed at twice the degree, at most this many times.
_REFINEMENTS = 2


def _coarser(n: int) -> int:
    return max(1, (3 * n) // 4)


def _expectation(
    rule: Rule,
    variants: int,
    args: Sequence[torch.Tensor],
    *,
    degree: int,
    quadrature_budget: Budget,
    tolerance: float | None,
    bound: Bound,
) -> torch.Tensor:
    """Elementwise quadrature with an optional accuracy check and adaptive refinement.

    ``rule(n, coarse)`` gives ``(chunk function over flat args, nodes per element)`` for n points per
    dimension; ``coarse`` in 0, 1, ... selects the coarser variants used as error estimates (``variants`` of
    them). ``bound(degree, flat args)``: the Cauchy-Schwarz scale √(E f² E g²) of each element.

    Without ``tolerance``: one rule at ``degree``. With it: each element is accepted where every coarser variant
    agrees within tolerance·|value| + floor·bound (floor: _FLOOR, or float32's round-off); the others are
    recomputed at twice the degree (up to _REFINEMENTS times) and :class:`~ntkit.errors.UnsupportedError`
    raised for any still failing.
    """
    flat, shape = _flatten(args)
    if tolerance is None:
        chunk, nodes = rule(_points(degree), None)
        return _map_chunks(chunk, flat, nodes, quadrature_budget).reshape(shape)
    todo = torch.arange(flat[0].numel(), device=flat[0].device)
    found_at, found = [], []
    for step in range(_REFINEMENTS + 1):
        d = degree * 2**step
        sub = flat if step == 0 else [a[todo] for a in flat]
        chunk, nodes = rule(_points(d), None)
        value = _map_chunks(chunk, sub, nodes, quadrature_budget)
        with torch.no_grad():
            floor = max(_FLOOR, _ROUNDOFF_FLOOR_ULPS * torch.finfo(value.dtype).eps)
            allowed = tolerance * value.abs() + floor * bound(d, sub)
            error = torch.zeros_like(value)
            for variant in range(variants):
                coarse_chunk, _ = rule(_points(d), variant)
                error = torch.maximum(error, (value - _map_chunks(coarse_chunk, sub, nodes, quadrature_budget)).abs())
            ok = error <= allowed  # False for NaN
        found_at.append(todo[ok])
        found.append(value[ok])
        todo, error, allowed = todo[~ok], error[~ok], allowed[~ok]
        if todo.numel() == 0:
            break
    else:
        _refuse(degree, d, tolerance, error, allowed, [a[todo] for a in flat])
    index, values = torch.cat(found_at), torch.cat(found)
    out = torch.zeros(index.numel(), dtype=values.dtype, device=values.device).index_put((index,), values)
    return out.reshape(shape)


def _refuse(
    degree: int,
    final_degree: int,
    tolerance: float,
    error: torch.Tensor,
    allowed: torch.Tensor,
    remaining: list[torch.Tensor],
) -> None:
    relative = float((error / allowed.clamp_min(torch.finfo(error.dtype).tiny)).nan_to_num(torch.inf).max())
    largest = max(float(v.detach().abs().max()) for v in remaining)
    raise UnsupportedError(
        f"Gaussian quadrature did not reach the relative tolerance {tolerance:g} at degree {degree} nor after "
        f"refining to {final_degree} for {remaining[0].numel()} element(s) (worst estimated error "
        f"{relative * tolerance:.2g}, or NaN from the function; inputs up to {largest:.3g}). Functions that "
        "saturate or oscillate on a scale much smaller than the standard deviation need more nodes: raise "
        "degree=, use a closed-form activation (Erf for tanh-like ones), normalise the inputs, or estimate the "
        "kernel with nk.monte_carlo_kernel. tolerance=None skips this check."
    )


def _half_line_rule_for(f: Fn, odd: bool) -> Rule:
    """E[f(√var z)] (``odd``: E[z f(√var z)]) as ∫_0^∞ (f(√var t) ± f(−√var t)) (t if odd) N(t) dt."""

    def rule(n: int, variant: int | None) -> tuple[Callable[..., torch.Tensor], int]:
        k = n if variant is None else _coarser(n)

        def chunk(v: torch.Tensor) -> torch.Tensor:
            t, w = _as(_half_line_rule(0, k), v)
            x = safe_sqrt(v)[:, None] * t
            if odd:
                return (f(x) - f(-x)) @ (w * t / math.sqrt(2 * math.pi))
            return (f(x) + f(-x)) @ (w / math.sqrt(2 * math.pi))

        return chunk, 2 * n

    return rule  # one coarser variant


def _half_line_expectation(
    f: Fn, var: torch.Tensor, degree: int, quadrature_budget: Budget, tolerance: float | None, *, odd: bool
) -> torch.Tensor:
    def bound(d: int, flat: list[torch.Tensor]) -> torch.Tensor:
        return torch.sqrt(gaussian_mean(lambda x: f(x) ** 2, flat[0], degree=d).abs())

    rule = _half_line_rule_for(f, odd)
    return _expectation(
        rule, 1, (var,), degree=degree, quadrature_budget=quadrature_budget, tolerance=tolerance, bound=bound
    )


def gaussian_mean(
    f: Fn,
    var: torch.Tensor,
    *,
    degree: int = DEFAULT_DEGREE,
    quadrature_budget: Budget = None,
    tolerance: float | None = None,
) -> torch.Tensor:
    """E[f(u)], u ~ N(0, var), elementwise for any shape of ``var`` (float32 or float64).

    The line is split at 0 and each half integrated by a ⌈degree/2⌉-point half-range Gauss-Hermite rule
    (weight e^{−t²/2} on [0, ∞)): degree evaluations of f, geometric convergence for f smooth on each side
    of 0 (ReLU, |x|, ELU: exact or nearly), algebraic for breakpoints elsewhere. ``tolerance``: see
    :func:`gaussian_cross`.
    """
    return _half_line_expectation(f, var, degree, quadrature_budget, tolerance, odd=False)


def gaussian_first_moment(
    f: Fn,
    var: torch.Tensor,
    *,
    degree: int = DEFAULT_DEGREE,
    quadrature_budget: Budget = None,
    tolerance: float | None = None,
) -> torch.Tensor:
    """E[z f(√var z)], z ~ N(0, 1), by the rule of :func:`gaussian_mean`.

    E[u f(v)] = cov/√var · E[z f(√var z)] for any f, continuous or not (regression of u on v).
    """
    return _half_line_expectation(f, var, degree, quadrature_budget, tolerance, odd=True)


#: Large variances: a function that changes on the scale |x| ~ 1 then does so within r < 1/√var of the origin,
#: inside the first radial node. Where r0 = _SPLIT_SCALE / √max(var1, var2) < _SPLIT_RADIUS (variance > 16),
#: the radius is split at r0: half the radial nodes Gauss-Legendre on [0, r0], half a half-range Hermite
#: rule on [r0, ∞) (r = r0 + t, weight e^{−t²/2}, the rest of r e^{−r²/2} in the integrand). Measured at
#: degree 32 (worst over ρ = −0.7, 0.5, 0.99): tanh's Ṫ at variance 100 from 1e-2 to 7e-5 relative error;
#: erf's Ṫ at variance 1e4, ρ = 0.3 and degree 64 from 90% off to 2e-10.
_SPLIT_SCALE, _SPLIT_RADIUS = 6.0, 1.5


def _radial_nodes(n: int, sd_max: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Radial nodes and weights for ∫_0^∞ h(r) r e^{−r²/2} dr, per element: (C, n) each."""
    r, omega = _as(_half_line_rule(1, n), sd_max)
    split = sd_max * _SPLIT_RADIUS > _SPLIT_SCALE
    if n < 2 or not bool(split.any()):
        return r.expand(sd_max.shape[0], n), omega.expand(sd_max.shape[0], n)
    n_in = n // 2
    x, w = _as(_unit_legendre(n_in), sd_max)
    t, wt = _as(_half_line_rule(0, n - n_in), sd_max)
    r0 = (_SPLIT_SCALE / torch.where(split, sd_max, torch.ones_like(sd_max)))[:, None]
    inner = r0 * x
    outer = r0 + t
    r_split = torch.cat([inner, outer], dim=1)
    omega_split = torch.cat(
        [r0 * w * inner * torch.exp(-inner * inner / 2), wt * outer * torch.exp(-r0 * t - r0 * r0 / 2)], 1
    )
    return torch.where(split[:, None], r_split, r), torch.where(split[:, None], omega_split, omega)


def _polar_chunk(f: Fn, g: Fn, same: bool, n_angle: int, n_radius: int) -> Callable[..., torch.Tensor]:
    def chunk(v1: torch.Tensor, c: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        if same:
            v1, v2 = torch.maximum(v1, v2), torch.minimum(v1, v2)
        x, w = _as(_unit_legendre(n_angle), v1)
        c, s = clamp_cov(v1, c, v2)
        sd1, sd2 = safe_sqrt(v1), safe_sqrt(v2)
        r, omega = _radial_nodes(n_radius, torch.maximum(sd1, sd2).detach())
        theta = angle(s, c)[:, None]  # (C, 1)
        rest = math.pi - theta
        phi = torch.cat([theta * x, theta + rest * x], dim=1)  # (C, 2 n_angle): the two sectors
        weight = torch.cat([theta * w, rest * w], dim=1) / (2 * math.pi)
        a = (sd1[:, None] * torch.sin(phi))[..., None] * r[:, None, :]  # (C, 2 n_angle, n_radius)
        b = (sd2[:, None] * torch.sin(phi - theta))[..., None] * r[:, None, :]
        values = f(a) * g(b) + f(-a) * g(-b)
        return ((values * omega[:, None, :]).sum(dim=2) * weight).sum(dim=1)

    return chunk


def gaussian_cross(
    f: Fn,
    g: Fn | None,
    var1: torch.Tensor,
    cov: torch.Tensor,
    var2: torch.Tensor,
    *,
    degree: int = DEFAULT_DEGREE,
    quadrature_budget: Budget = None,
    tolerance: float | None = None,
) -> torch.Tensor:
    """E[f(u) g(v)], (u, v) ~ N(0, [[var1, cov], [cov, var2]]), by a Gauss rule in polar coordinates.

    With the Cholesky factor, (u, v) = r·(√var1 sin φ, √var2 sin(φ − ϑ)) for z = r(cos, sin)(φ + π/2) ~ N(0, I₂),
    ϑ = atan2(√(var1 var2 − cov²), cov) ∈ [0, π] the angle between the inputs, r·e^{−r²/2} dr dφ / 2π.
    u = 0 and v = 0 are the rays φ ∈ {0, π} and φ ∈ {ϑ, ϑ + π}; folding φ + π onto φ (r → −r) leaves the
    sectors [0, ϑ] and [ϑ, π], each with m = ⌈degree/2⌉ Gauss-Legendre angles, times m radial nodes of
    the half-range rule for r·e^{−r²/2}:

    E ≈ Σ_{sectors, i, j} (|sector| w_i / 2π) ω_j (f(r_j a_i) g(r_j b_i) + f(−r_j a_i) g(−r_j b_i)),

    degree² evaluations of f and of g per element. Zero variances and |ρ| = 1 (a sector of zero width) need
    no special case. ``g=None`` means g = f; then the larger variance is put first, so the result is exactly
    symmetric in (var1, var2), as kernel matrices must be. Broadcastable inputs, float32 or float64. Memory:
    chunks of at most ``quadrature_budget`` bytes (default: ntkit's budget) of node arrays; under autograd each
    chunk is checkpointed (recomputed in backward), so memory does not grow with the number of layers.

    ``tolerance``: if given, each element is recomputed (without autograd) with ¾ of the angular nodes and
    with ¾ of the radial ones; where either differs by more than tolerance·|E| (+1e-10 of the Cauchy-Schwarz
    bound √(E f(u)² E g(v)²)), the element is recomputed at twice the degree, then four times, and
    :class:`~ntkit.errors.UnsupportedError` raised if it still fails: accurate or refused, never silently
    wrong. The check costs 1.5x the evaluations; refinement only where needed.
    """
    same = g is None
    g_: Fn = f if g is None else g

    def rule(m: int, variant: int | None) -> tuple[Callable[..., torch.Tensor], int]:
        """Two coarser variants: ¾ of the angular points, and ¾ of the radial ones."""
        n_angle, n_radius = (m, m) if variant is None else ((_coarser(m), m), (m, _coarser(m)))[variant]
        return _polar_chunk(f, g_, same, n_angle, n_radius), 4 * m * m

    def bound(d: int, flat: list[torch.Tensor]) -> torch.Tensor:
        return torch.sqrt(
            gaussian_mean(lambda x: f(x) ** 2, flat[0], degree=d).abs()
            * gaussian_mean(lambda x: g_(x) ** 2, flat[2], degree=d).abs()
        )

    args = (var1, cov, var2)
    return _expectation(
        rule, 2, args, degree=degree, quadrature_budget=quadrature_budget, tolerance=tolerance, bound=bound
    )
