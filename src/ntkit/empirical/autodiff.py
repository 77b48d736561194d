"""The context every torch.func transform of a user's model runs in.

- Scaled-dot-product attention uses the math backend: it has forward-mode derivatives (the fused CPU and
  CUDA kernels do not) and batching rules (the fused CPU kernel falls back to a per-example loop under
  ``vmap``, about 10x slower on a small transformer).
- A pass-through torch function mode is active, so ``nn.MultiheadAttention`` and
  ``nn.TransformerEncoderLayer`` never take their fused inference path (``_transformer_encoder_layer_fwd``),
  which has no forward-mode derivative and which they would otherwise pick under ``jvp`` in eval mode.
- Errors a user can fix are re-raised as ntkit errors (:func:`ntkit._functional.translate_transform_errors`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch.nn.attention import SDPBackend, sdpa_kernel

from .._functional import translate_transform_errors
from .interception import PassThroughMode

__all__ = ["autodiff_context"]


@contextlib.contextmanager
def autodiff_context() -> Iterator[None]:
    with translate_transform_errors(), sdpa_kernel(SDPBackend.MATH), PassThroughMode():
        yield
