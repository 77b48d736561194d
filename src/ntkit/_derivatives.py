"""Whether derivatives of a computation are being taken, in reverse mode or in forward mode.

Kernel maps use faster formulas (in place, one-sided at kinks, worker threads writing into preallocated results)
when nothing is differentiated, and everywhere-differentiable out-of-place ones when something is. Reverse mode
shows itself through ``requires_grad``; forward mode does not: ``torch.autograd.forward_ad`` dual tensors and
the ``torch.func`` transforms (jvp, jacfwd, hessian, vmap, grad) carry their tangents or batches outside
``requires_grad``, so while any of them is active every computation counts as differentiated.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as forward_ad

__all__ = ["forward_mode_active", "tracks_derivatives"]


def forward_mode_active() -> bool:
    """True inside a ``torch.func`` transform or a ``torch.autograd.forward_ad.dual_level``."""
    return torch._C._functorch.maybe_current_level() is not None or forward_ad._current_level >= 0


def tracks_derivatives(*ts: object) -> bool:
    """True if derivatives of results computed from the tensors ``ts`` may be taken: reverse-mode autograd
    records one of them, or a forward-mode transform is active."""
    if forward_mode_active():
        return True
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in ts)
