"""Independent references for the tests: dense Jacobians by plain autograd, one gradient per output.

Nothing here uses torch.func or ntkit, so the library's results are checked against a separate route.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def dense_jacobian(model: nn.Module, x: torch.Tensor, names: Sequence[str] | None = None) -> torch.Tensor:
    """J of shape (N, O, P): d model(x)[n, o] / d θ_p for the named parameters (default: all trainable),
    in the order of ``model.named_parameters()``, one ``torch.autograd.grad`` call per (n, o)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and (names is None or n in names)]
    ps = [p for _, p in named]
    out = model(x)
    out = out.reshape(out.shape[0], -1) if out.ndim > 1 else out.unsqueeze(1)
    rows = []
    for n in range(out.shape[0]):
        per_output = []
        for o in range(out.shape[1]):
            grads = torch.autograd.grad(out[n, o], ps, retain_graph=True, allow_unused=True)
            per_output.append(
                torch.cat(
                    [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, ps, strict=True)]
                )
            )
        rows.append(torch.stack(per_output))
    return torch.stack(rows).detach()


def dense_ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    names: Sequence[str] | None = None,
    trace_outputs: bool = True,
) -> torch.Tensor:
    """Θ̂ = J1 J2ᵀ from :func:`dense_jacobian`: (N1, N2) averaged over outputs, or (N1, N2, O, O)."""
    j1 = dense_jacobian(model, x1, names)
    j2 = j1 if x2 is None else dense_jacobian(model, x2, names)
    full = torch.einsum("nap,mbp->nmab", j1, j2)
    return full.diagonal(dim1=2, dim2=3).mean(-1) if trace_outputs else full


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ (Frobenius), the error measure the tests bound."""
    return float(torch.linalg.norm((a - b).reshape(-1)) / torch.linalg.norm(b.reshape(-1)))
