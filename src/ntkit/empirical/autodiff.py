"""The context every torch.func transform of a user's model runs in.

- Scaled-dot-product attention uses the math backend: it has forward-mode derivatives (the fused CPU and
  CUDA kernels do not) and batching rules (the fused CPU kernel falls back to a per-example loop under
  ``vmap``).
- A pass-through torch function mode is active, so ``nn.MultiheadAttention`` and
  ``nn.TransformerEncoderLayer`` never take their fused inference path (``_transformer_encoder_layer_fwd``),
  which has no forward-mode derivative and which they would otherwise pick under ``jvp`` in eval mode (a
  caller that passes a module without such layers skips it).
- Errors a user can fix are re-raised as ntkit errors (:func:`ntkit._functional.translate_transform_errors`).

:func:`jacobian_vector_product` computes J t by forward mode, or, for a model with an operation that has no
forward-mode derivative (a custom ``autograd.Function`` without ``jvp``), exactly by two reverse passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.func import jvp, vjp
from torch.nn.attention import SDPBackend, sdpa_kernel

from .._functional import translate_transform_errors
from .interception import PassThroughMode

__all__ = ["autodiff_context", "jacobian_vector_product"]


#: Layers with a fused inference path (taken unless a torch function mode is active).
FUSED_LAYERS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


@contextlib.contextmanager
def autodiff_context(model: object = None) -> Iterator[None]:
    """The context above. ``model``: a module none of whose layers is in ``FUSED_LAYERS`` runs without the
    pass-through mode, whose Python dispatch of every torch call costs more than a small model's arithmetic
    (0.17 ms of a 0.8 ms ``vmap(jacrev)`` of a two-layer MLP); ``None`` or a plain function gets the mode."""
    fused = not isinstance(model, nn.Module) or any(isinstance(m, FUSED_LAYERS) for m in model.modules())
    with (
        translate_transform_errors(),
        sdpa_kernel(SDPBackend.MATH),
        PassThroughMode() if fused else contextlib.nullcontext(),
    ):
        yield


def _no_forward_derivative(err: Exception) -> bool:
    text = str(err).lower()
    return "forward ad" in text or "forward mode" in text or "forward-mode" in text


def jacobian_vector_product(
    f: Callable[[dict[str, torch.Tensor]], torch.Tensor], params: dict[str, torch.Tensor], tangent: dict[str, Any]
) -> torch.Tensor:
    """J t for J = ∂f/∂params at ``params``: one jvp, or where an operation lacks a forward-mode derivative
    the transpose of the vjp: g(u) = Jᵀu is linear in u, so the vjp of g with cotangent t is J t."""
    try:
        product: torch.Tensor = jvp(f, (params,), (tangent,))[1]
        return product
    except (RuntimeError, NotImplementedError) as err:
        if not _no_forward_derivative(err):
            raise
    out, pull = vjp(f, params)  # type: ignore[misc]  # torch types vjp's result as a 2- or 3-tuple whatever has_aux is
    _, pull_transposed = vjp(lambda u: pull(u)[0], torch.zeros_like(out))  # type: ignore[misc]  # torch types vjp's result as a 2- or 3-tuple whatever has_aux is
    transposed: torch.Tensor = pull_transposed(tangent)[0]
    return transposed
