"""Small float64 models and helpers shared by the linearization tests."""

from __future__ import annotations

import torch
from torch import nn

import ntkit as nk
from reference import dense_jacobian


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def cnn() -> nn.Module:
    """Output (N, 4, 2, 2): a multi-dimensional output whose shape the linearized model must keep."""
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Conv2d(3, 4, 3, stride=2)).double()


def bn_model() -> nn.Module:
    """Conv + BatchNorm (eval, non-trivial running statistics) + Linear: a model with buffers."""
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    model = model.double().eval()
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    return model


class LastStepLSTM(nn.Module):
    """An LSTM read out at its last time step (RNN modules keep a flat list of their weights)."""

    def __init__(self):
        super().__init__()
        self.rnn, self.out = nn.LSTM(3, 4, batch_first=True), nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.rnn(x)[0][:, -1])


def lstm() -> nn.Module:
    return LastStepLSTM().double()


# (id, model factory, per-example input shape, params selection)
CASES = [
    ("mlp", mlp, (5,), None),
    ("cnn", cnn, (2, 6, 6), None),
    ("batchnorm-eval", bn_model, (2, 6, 6), None),
    ("lstm", lstm, (6, 3), None),
    ("mlp-subset", mlp, (5,), ["0.*", "4.bias"]),
    ("batchnorm-subset", bn_model, (2, 6, 6), ["1.*", "4.weight"]),
]


def set_delta(lin: nk.TaylorExpandedModel, delta: dict[str, torch.Tensor]) -> None:
    """θ ← θ0 + δ in place."""
    theta0 = lin.theta0()
    params = dict(lin.theta.named_parameters())
    with torch.no_grad():
        for name, d in delta.items():
            params[name].copy_(theta0[name] + d)


def random_delta(lin: nk.TaylorExpandedModel, scale: float = 0.3) -> dict[str, torch.Tensor]:
    return {name: scale * torch.randn_like(p) for name, p in lin.theta.named_parameters()}


def flat(delta: dict[str, torch.Tensor], names: tuple[str, ...]) -> torch.Tensor:
    """δ as one vector, in the order of ``names`` (the dense Jacobian's column order)."""
    return torch.cat([delta[n].reshape(-1) for n in names])


def dense_linearization(model: nn.Module, x: torch.Tensor, delta: dict[str, torch.Tensor]) -> torch.Tensor:
    """f0(x) + J0(x) δ from the dense autograd Jacobian, in the model's output shape (the tests' reference)."""
    names = tuple(n for n, _ in model.named_parameters() if n in delta)  # the Jacobian's column order
    f0 = model(x).detach()
    return f0 + (dense_jacobian(model, x, names) @ flat(delta, names)).reshape(f0.shape)
