"""Truncated Taylor series of a function of the parameters, along one direction, without any Jacobian.

For ``apply(p) -> Tensor`` (the model's output at parameters ``p``), base parameters θ0 and a
direction δ (dicts of tensors with the same keys, shapes and dtypes), both functions here return

    T_k = Σ_{j=0}^{k} D^j f(θ0)[δ, …, δ] / j!          (theory.md §2.1; k = 1 gives f0 + J0 δ)

with the shape of ``apply``'s output, differentiable with respect to δ by ordinary autograd (so a
loss on T_k can be back-propagated to the parameters that δ was computed from). Two routes:

- :func:`taylor_series_jvp`: nested forward-mode products (``torch.func.jvp``), one per order; the
  default. Costs about 2^k forward passes for degree k (k = 1: one jvp, i.e. f0 and J0 δ together).
- :func:`taylor_series_double_vjp`: reverse mode only. With φ(t) = f(θ0 + tδ) and a dummy cotangent u,
  h(t, u) = ⟨φ(t), u⟩; each reverse pass in the scalar t gives ∂ʲh/∂tʲ = ⟨φ⁽ʲ⁾(t), u⟩, and one reverse
  pass in u of Σ_j ∂ʲh/∂tʲ / j! returns T_k (for k = 1 this is the double-vjp identity
  J v = ∂/∂u ⟨Jᵀu, v⟩). For models whose operations have no forward-mode derivative but a
  differentiable backward (custom ``autograd.Function`` without ``jvp``, fused multi-head attention).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch.func import jvp

from .errors import UnsupportedError

__all__ = ["TAYLOR_METHODS", "taylor_series_double_vjp", "taylor_series_jvp"]

Params = dict[str, torch.Tensor]
Apply = Callable[[Params], torch.Tensor]

_MATH_BACKEND = (
    "run the model under the math attention backend: `with torch.nn.attention.sdpa_kernel("
    "torch.nn.attention.SDPBackend.MATH): out = lin(x)` (around the forward call; the backward follows)"
)
_FASTPATH = (
    "disable PyTorch's fused attention fast path with `torch.backends.mha.set_fastpath_enabled(False)`, "
    "or pass method='double_vjp'"
)


def _sum_terms(terms: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Σ_j terms[j] / j!, without dividing the first two terms by 1."""
    total = terms[0]
    for j, term in enumerate(terms[1:], start=1):
        total = total + (term if j == 1 else term / math.factorial(j))
    return total


def taylor_series_jvp(apply: Apply, theta0: Params, delta: Params, degree: int) -> torch.Tensor:
    """T_k by ``degree`` nested ``torch.func.jvp`` calls (see the module docstring).

    Level j returns (f, Df[δ], …, Dʲf[δ,…,δ]) at its point; the jvp of level j − 1 along δ supplies the
    new last entry. No Jacobian is formed; memory is that of 2^k forward passes.
    """

    def derivatives(p: Params, order: int) -> tuple[torch.Tensor, ...]:
        if order == 0:
            return (apply(p),)
        primal, tangent = jvp(lambda q: derivatives(q, order - 1), (p,), (delta,))  # type: ignore[misc]  # torch types jvp's result as a 2- or 3-tuple whatever has_aux is
        return (*primal, tangent[-1])

    with _forward_mode_errors():
        return _sum_terms(derivatives(theta0, degree))


def taylor_series_double_vjp(apply: Apply, theta0: Params, delta: Params, degree: int) -> torch.Tensor:
    """T_k by reverse-mode products only (see the module docstring); needs no forward-mode rule.

    Runs with autograd enabled even under ``torch.no_grad()`` (the result is then detached). Costs one
    forward and k + 1 reverse passes over graphs that grow with the order.
    """
    if torch.is_inference_mode_enabled():
        raise UnsupportedError(
            "method='double_vjp' differentiates the model inside its forward pass, which torch.inference_mode() "
            "forbids; evaluate under torch.no_grad() instead."
        )
    keep_graph = torch.is_grad_enabled()
    with torch.enable_grad(), _double_backward_errors():
        t = next(iter(theta0.values())).new_zeros((), requires_grad=True)
        out = apply({name: theta0[name] + t * delta[name] for name in theta0})
        u = torch.zeros_like(out, requires_grad=True)
        derivative = (out * u).sum()
        terms = [derivative]
        for _ in range(degree):
            (derivative,) = torch.autograd.grad(derivative, t, create_graph=True, allow_unused=True)
            if derivative is None:  # f is a polynomial of lower degree along δ: the higher terms vanish
                break
            terms.append(derivative)
        (series,) = torch.autograd.grad(_sum_terms(tuple(terms)), u, create_graph=keep_graph)
    return series if keep_graph else series.detach()


TAYLOR_METHODS: dict[str, Callable[[Apply, Params, Params, int], torch.Tensor]] = {
    "jvp": taylor_series_jvp,
    "double_vjp": taylor_series_double_vjp,
}


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


@contextlib.contextmanager
def _forward_mode_errors() -> Iterator[None]:
    """Re-raise "no forward-mode derivative" errors as :class:`UnsupportedError` saying what to do."""
    try:
        yield
    except RuntimeError as err:  # NotImplementedError is a RuntimeError
        text = str(err)
        if "scaled_dot_product" in text:
            fix = _MATH_BACKEND
        elif "_native_multi_head_attention" in text or "_transformer_encoder_layer_fwd" in text:
            fix = _FASTPATH
        elif "autograd.Function" in text:
            fix = (
                "give the custom autograd.Function a `jvp` staticmethod (and `setup_context`, see "
                "https://pytorch.org/docs/stable/notes/extending.func.html), or pass method='double_vjp', "
                "which only needs its backward"
            )
        elif "forward AD" in text or "forward mode" in text or "forward-mode" in text:
            fix = "pass method='double_vjp', which uses reverse mode only"
        else:
            raise
        raise UnsupportedError(
            f"the model has an operation without a forward-mode derivative, which method='jvp' needs. To fix: "
            f"{fix}. Original error: {_first_line(err)}"
        ) from err


@contextlib.contextmanager
def _double_backward_errors() -> Iterator[None]:
    """Re-raise "not twice differentiable" errors as :class:`UnsupportedError` saying what to do."""
    try:
        yield
    except RuntimeError as err:
        text = str(err)
        if not ("derivative for" in text and "not implemented" in text) and "once_differentiable" not in text:
            raise
        fix = _MATH_BACKEND if "scaled_dot_product" in text else "use method='jvp' (forward mode)"
        raise UnsupportedError(
            "method='double_vjp' differentiates the model's backward pass, and an operation of the model has no "
            f"derivative of its backward. To fix: {fix}. Original error: {_first_line(err)}"
        ) from err
