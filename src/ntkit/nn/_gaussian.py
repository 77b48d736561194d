"""Gaussian expectations of elementwise functions: stable helpers, quadrature, cross terms.

Everything here works elementwise on broadcastable tensors ``var1``, ``cov``, ``var2`` describing, per
element, a centred Gaussian pair (u, v) ~ N(0, [[var1, cov], [cov, var2]]) (theory.md section 4.1).

- :func:`safe_sqrt`, :func:`clamp_cov`: the building blocks that keep closed forms finite, with finite
  gradients, at zero variance and at |ρ| = 1.
- :func:`gaussian_mean`, :func:`gaussian_cross`: Gaussian quadrature of E[f(u)] (d nodes) and E[f(u) g(v)]
  (d² nodes) with the lines u = 0, v = 0 as breakpoints (half-range Gauss-Hermite rules, polar in 2-D),
  chunked under a memory budget and checkpointed under autograd.
- :func:`cross_nngp`, :func:`cross_ntk_factor`: E[φ1(u) φ2(v)] and E[φ1'(u) φ2'(v)] for two activations of
  the same Gaussian (for sums of elementwise branches); closed forms where the pair has one, quadrature else.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.special import roots_legendre
from torch import nn
from torch.utils.checkpoint import checkpoint

from .._memory import check_fits, resolve_budget
from ..errors import DomainError

__all__ = [
    "DEFAULT_DEGREE",
    "check_degree",
    "clamp_cov",
    "clamp_cov_det",
    "cross_nngp",
    "cross_ntk_factor",
    "gaussian_cross",
    "gaussian_first_moment",
    "gaussian_mean",
    "is_identity",
    "safe_sqrt",
]

#: Quadrature degree used when none is given: d² function evaluations per 2-D expectation, d per 1-D one.
#: Accuracy measured in docs/infinite_activations.md ("Quadrature accuracy").
DEFAULT_DEGREE = 32

# Temporaries per quadrature node (node values, function values, the function's own intermediates), used to
# size chunks; and a cap on one chunk's node array so it stays cache-friendly even under a large budget.
_WORK_FACTOR = 4
_MAX_CHUNK_BYTES = 8 * 2**20

Fn = Callable[[torch.Tensor], torch.Tensor]


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """√max(x, 0) with gradient 0 (not ∞ or NaN) where x ≤ 0."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def clamp_cov(var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (cov clamped to |cov| ≤ √var1 √var2, √(var1 var2 − cov²)): round-off can push |ρ| past 1."""
    cov, det = clamp_cov_det(var1, cov, var2)
    return cov, safe_sqrt(det)


def clamp_cov_det(var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (cov clamped to |cov| ≤ b = √var1 √var2, var1 var2 − cov² = (b − cov)(b + cov) ≥ 0).

    Use the determinant itself (not the square of √det) where a formula is polynomial in it: its gradient in
    cov stays −2·cov at |ρ| = 1 instead of 0. The factored forms do not overflow before the variances do.
    """
    bound = safe_sqrt(var1) * safe_sqrt(var2)
    # torch.where, not minimum/maximum: at a tie (duplicate inputs) the gradient goes to cov, not half of it.
    cov = torch.where(cov > bound, bound, torch.where(cov < -bound, -bound, cov))
    return cov, (bound - cov) * (bound + cov)


def is_identity(act: object) -> bool:
    """True for the identity map in cross terms: ``None`` or a ``torch.nn.Identity`` (or subclass)."""
    return act is None or isinstance(act, nn.Identity)


# --------------------------------------------------------------------------------------------- quadrature
#
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


def _as(arrays, like: torch.Tensor) -> list[torch.Tensor]:
    return [torch.as_tensor(a, dtype=like.dtype, device=like.device) for a in arrays]


def check_degree(degree: object) -> None:
    """Raise :class:`~ntkit.errors.DomainError` unless ``degree`` is a positive integer."""
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise DomainError(f"the quadrature degree must be a positive integer (default {DEFAULT_DEGREE}), got {degree}.")


def _points(degree: int) -> int:
    """Nodes per dimension for a ``degree``: ⌈degree/2⌉ in the radius and per angular sector (and ⌈degree/2⌉
    per half-line in 1-D), so a 2-D expectation costs degree² evaluations of each function, 1-D degree."""
    check_degree(degree)
    return (degree + 1) // 2


def _map_chunks(fn, args: tuple[torch.Tensor, ...], nodes_per_element: int, memory_budget) -> torch.Tensor:
    """``fn`` on 1-D slices of the broadcast ``args``, sized so ``nodes_per_element`` values per element stay
    under the memory budget; each slice is checkpointed when autograd records, so the graph keeps only
    inputs and outputs (not the node arrays) whatever the number of layers. Returns the broadcast shape."""
    args = tuple(torch.as_tensor(a) for a in args)
    floats = [a.dtype for a in args if a.is_floating_point()]
    dtype = functools.reduce(torch.promote_types, floats) if floats else torch.get_default_dtype()
    shape = torch.broadcast_shapes(*(a.shape for a in args))
    device = args[0].device
    flat = [a.to(dtype).expand(shape).reshape(-1) for a in args]
    n = flat[0].numel()
    if n == 0:
        return torch.zeros(shape, dtype=dtype, device=device)
    budget = resolve_budget(memory_budget, device)
    per_element = nodes_per_element * dtype.itemsize * _WORK_FACTOR
    check_fits(per_element, budget, "Gaussian quadrature of one element", "Raise memory_budget or lower the degree.")
    chunk = max(1, min(n, budget // per_element, _MAX_CHUNK_BYTES // per_element))
    record = torch.is_grad_enabled() and any(a.requires_grad for a in flat)
    outs = []
    for start in range(0, n, chunk):
        parts = [a[start : start + chunk] for a in flat]
        outs.append(checkpoint(fn, *parts, use_reentrant=False) if record else fn(*parts))
    return torch.cat(outs).reshape(shape)


def _half_line_expectation(f: Fn, var: torch.Tensor, degree: int, memory_budget, *, odd: bool) -> torch.Tensor:
    """E[f(√var z)] (``odd``: E[z f(√var z)]) as ∫_0^∞ (f(√var t) ± f(−√var t)) (t if odd) N(t) dt."""
    n = _points(degree)

    def chunk(v: torch.Tensor) -> torch.Tensor:
        t, w = _as(_half_line_rule(0, n), v)
        x = safe_sqrt(v)[:, None] * t
        if odd:
            return (f(x) - f(-x)) @ (w * t / math.sqrt(2 * math.pi))
        return (f(x) + f(-x)) @ (w / math.sqrt(2 * math.pi))

    return _map_chunks(chunk, (torch.as_tensor(var),), 2 * n, memory_budget)


def gaussian_mean(f: Fn, var: torch.Tensor, *, degree: int = DEFAULT_DEGREE, memory_budget=None) -> torch.Tensor:
    """E[f(u)], u ~ N(0, var), elementwise for any shape of ``var`` (float32 or float64).

    The line is split at 0 and each half integrated by a ⌈degree/2⌉-point half-range Gauss-Hermite rule
    (weight e^{−t²/2} on [0, ∞)): degree evaluations of f, geometric convergence for f smooth on each side
    of 0 (ReLU, |x|, ELU: exact or nearly), algebraic for breakpoints elsewhere.
    """
    return _half_line_expectation(f, var, degree, memory_budget, odd=False)


def gaussian_first_moment(
    f: Fn, var: torch.Tensor, *, degree: int = DEFAULT_DEGREE, memory_budget=None
) -> torch.Tensor:
    """E[z f(√var z)], z ~ N(0, 1), by the rule of :func:`gaussian_mean`.

    E[u f(v)] = cov/√var · E[z f(√var z)] for any f, continuous or not (regression of u on v).
    """
    return _half_line_expectation(f, var, degree, memory_budget, odd=True)


def gaussian_cross(
    f: Fn,
    g: Fn | None,
    var1: torch.Tensor,
    cov: torch.Tensor,
    var2: torch.Tensor,
    *,
    degree: int = DEFAULT_DEGREE,
    memory_budget=None,
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
    chunks of at most ``memory_budget`` bytes (default: ntkit's budget) of node arrays; under autograd each
    chunk is checkpointed (recomputed in backward), so memory does not grow with the number of layers.
    """
    same = g is None
    g = f if same else g
    m = _points(degree)

    def chunk(v1: torch.Tensor, c: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        if same:
            v1, v2 = torch.maximum(v1, v2), torch.minimum(v1, v2)
        x, w = _as(_unit_legendre(m), v1)
        r, omega = _as(_half_line_rule(1, m), v1)
        c, s = clamp_cov(v1, c, v2)
        theta = torch.atan2(s, c)[:, None]  # (C, 1)
        rest = math.pi - theta
        phi = torch.cat([theta * x, theta + rest * x], dim=1)  # (C, 2m): the two sectors
        weight = torch.cat([theta * w, rest * w], dim=1) / (2 * math.pi)
        a = (safe_sqrt(v1)[:, None] * torch.sin(phi))[..., None] * r  # (C, 2m, m)
        b = (safe_sqrt(v2)[:, None] * torch.sin(phi - theta))[..., None] * r
        values = f(a) * g(b) + f(-a) * g(-b)
        return ((values @ omega) * weight).sum(dim=1)

    return _map_chunks(chunk, (var1, cov, var2), 4 * m * m, memory_budget)


# --------------------------------------------------------------------------------------------- cross terms


def cross_nngp(act1, act2, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
    """E[φ1(u) φ2(v)] for (u, v) ~ N(0, [[var1, cov], [cov, var2]]), elementwise on broadcastable tensors.

    ``act1``, ``act2``: :class:`~ntkit.nn.Activation` instances, or ``None`` / ``torch.nn.Identity`` for the
    identity. Used for sums of elementwise branches of one Gaussian (a residual x + φ(x) is the pair
    (identity, φ)): the NNGP of φ1(h) + φ2(h) is Σ_ij cross_nngp(φi, φj).

    Rules, in order: both identity → cov; one identity → E[u φ(v)] = cov·E[φ'(v)] (Stein's lemma, or its
    jump-aware form for Sign, or quadrature); a pair with a joint closed form (ABReLU family, Erf family,
    Sin/Cos/RBF, Exp, Gaussian, polynomials, an activation with itself) → that; else 2-D quadrature at the
    coarser of the two activations' degrees.
    """
    return _cross(act1, act2, var1, cov, var2, derivative=False)


def cross_ntk_factor(act1, act2, var1: torch.Tensor, cov: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
    """E[φ1'(u) φ2'(v)] (a.e. derivatives; the identity's is 1), same arguments and rules as :func:`cross_nngp`.

    The NTK of φ1(h) + φ2(h) is Θ_h · Σ_ij cross_ntk_factor(φi, φj).
    """
    return _cross(act1, act2, var1, cov, var2, derivative=True)


def _cross(act1, act2, var1, cov, var2, *, derivative: bool) -> torch.Tensor:
    var1, cov, var2 = (torch.as_tensor(t) for t in (var1, cov, var2))
    id1, id2 = is_identity(act1), is_identity(act2)
    if id1 and id2:
        if derivative:
            return torch.ones(_shape(var1, cov, var2), dtype=cov.dtype, device=cov.device)
        return _broadcast(cov, var1, var2)
    if id1 or id2:
        act, var = (act2, var2) if id1 else (act1, var1)
        out = act.mean_derivative(var) if derivative else act.identity_cross(cov, var)
        return _broadcast(out, var1, cov, var2)
    if act1 is act2:
        return act1.ntk_factor(var1, cov, var2) if derivative else act1.nngp(var1, cov, var2)
    out = act1.joint_expectation(act2, var1, cov, var2, derivative=derivative)
    if out is None:
        out = act2.joint_expectation(act1, var2, cov, var1, derivative=derivative)
    if out is not None:
        return out
    f, g = (act1.derivative, act2.derivative) if derivative else (act1.fn, act2.fn)
    degree = max(getattr(act1, "degree", DEFAULT_DEGREE), getattr(act2, "degree", DEFAULT_DEGREE))
    return gaussian_cross(f, g, var1, cov, var2, degree=degree, memory_budget=getattr(act1, "memory_budget", None))


def _shape(*ts) -> torch.Size:
    return torch.broadcast_shapes(*(torch.as_tensor(t).shape for t in ts))


def _broadcast(out: torch.Tensor, *others) -> torch.Tensor:
    shape = _shape(out, *others)
    return out if out.shape == shape else out.expand(shape)
