"""Shared pieces of the ntkit.predict tests: models linear in their parameters, an explicit torch training
loop (the reference every closed form is checked against), and a small analytic kernel."""

from __future__ import annotations

import math

import torch
from torch import nn

from reference import dense_ntk


class RandomFeatures(nn.Module):
    """f(x) = (cos(x W + b) θ_W + θ_b) C: linear in its parameters (θ_W, θ_b), so it equals its linearization and
    gradient descent on it is exactly the linearized dynamics. W, b are fixed random Fourier features of a
    narrow Gaussian kernel (a well-conditioned NTK, cond ~ 10); C (O, O) is a fixed output mixing (identity:
    the NTK is Θ̃ ⊗ I and a per-output kernel is exact; otherwise only the full one is)."""

    def __init__(self, d_in: int, n_features: int, n_outputs: int, mix: bool = False):
        super().__init__()
        self.register_buffer("w", 2 * torch.randn(d_in, n_features))
        self.register_buffer("b", 2 * math.pi * torch.rand(n_features))
        self.readout = nn.Linear(n_features, n_outputs)
        mixing = torch.eye(n_outputs) + (0.2 * torch.randn(n_outputs, n_outputs) if mix else 0)
        self.register_buffer("mix", mixing)

    def forward(self, x):
        return self.readout(torch.cos(x @ self.w + self.b)) @ self.mix


def kernels(model: nn.Module, x_train: torch.Tensor, x_test: torch.Tensor, full: bool):
    """Train-train and test-train NTKs by plain autograd (tests/reference.py, independent of ntkit): full
    (N, N, O, O), or per-output (N, N) (exact for RandomFeatures without mixing, where Θ = Θ̃ ⊗ I)."""
    return (
        dense_ntk(model, x_train, trace_outputs=not full),
        dense_ntk(model, x_test, x_train, trace_outputs=not full),
    )


def sgd_loop(model, x_train, y_train, loss_fn, lr, steps, *, momentum=0.0, record=(), x_record=None):
    """Train ``model`` in place with torch.optim.SGD on ``loss_fn(model(x_train), y_train)`` for ``steps`` steps.

    Returns {step: (outputs on x_record, {param name: θ_step − θ_0})} for each step in ``record``.
    """
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    out = {}
    for step in range(steps + 1):
        if step in record:
            with torch.no_grad():
                out[step] = (
                    model(x_record).clone(),
                    {n: p.detach() - theta0[n] for n, p in model.named_parameters()},
                )
        if step == steps:
            break
        opt.zero_grad()
        loss_fn(model(x_train), y_train).backward()
        opt.step()
    return out


def relu_kernels(x1: torch.Tensor, x2: torch.Tensor) -> dict[str, torch.Tensor]:
    """NNGP and NTK of a one-hidden-layer ReLU network (NTK parameterization, σ_w² = 2, σ_b² = 0.1;
    theory.md §4.1-4.2), per output: a PSD pair with K ≠ Θ, computed directly from the closed forms."""
    d = x1.shape[1]
    k11 = (x1 * x1).sum(1) / d + 0.1
    k22 = (x2 * x2).sum(1) / d + 0.1
    k12 = x1 @ x2.T / d + 0.1
    norms = torch.sqrt(k11[:, None] * k22[None, :])
    cos = (k12 / norms).clamp(-1, 1)
    theta = torch.arccos(cos)
    t = norms / (2 * math.pi) * (torch.sin(theta) + (math.pi - theta) * cos)
    t_dot = (math.pi - theta) / (2 * math.pi)
    nngp = 2 * t + 0.1
    return {"nngp": nngp, "ntk": nngp + 2 * k12 * t_dot}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖."""
    return float((a - b).norm() / b.norm())
