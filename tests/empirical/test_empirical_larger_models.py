"""Larger models than the default zoo, against the dense float64 reference (slow: run by make test-all)."""

from __future__ import annotations

import pytest
import torch
from empirical_reference import TOL, kernel_from_jacobians
from torch import nn

import ntkit as nk
from reference import dense_jacobian, rel_err

DT = torch.float64
pytestmark = pytest.mark.slow


class Encoder(nn.Module):
    """The benchmark's transformer at a smaller width: Embedding, 2 encoder layers, mean pooling, 4 outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 4)

    def forward(self, ids):
        return self.head(self.encoder(self.emb(ids)).mean(1))


def resnet_like():
    block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1, stride=2)
            self.block = block
            self.head = nn.Linear(8, 5)

        def forward(self, x):
            h = torch.relu(self.stem(x))
            h = torch.relu(h + self.block(h))
            return self.head(h.mean((2, 3)))

    net = Net()
    net.block[1].running_mean.uniform_(-0.3, 0.3)
    net.block[1].running_var.uniform_(0.5, 1.5)
    return net.to(DT).eval(), torch.randn(8, 3, 12, 12, dtype=DT), torch.randn(6, 3, 12, 12, dtype=DT)


def encoder():
    return Encoder().to(DT).eval(), torch.randint(0, 50, (8, 10)), torch.randint(0, 50, (6, 10))


@pytest.mark.parametrize("make", [resnet_like, encoder])
@pytest.mark.parametrize("method", ["auto", "structured", "jacobian", "ntvp"])
def test_larger_models(make, method):
    torch.manual_seed(3)
    model, x1, x2 = make()
    J1, J2 = dense_jacobian(model, x1), dense_jacobian(model, x2)
    for trace_outputs in (True, False):
        got = nk.empirical_ntk(model, x1, x2, method=method, trace_outputs=trace_outputs, chunk_size=5)
        assert rel_err(got, kernel_from_jacobians(J1, J2, trace_outputs)) < TOL
    sym = nk.empirical_ntk(model, x1, method=method, trace_outputs=False, chunk_size=3)
    assert rel_err(sym, kernel_from_jacobians(J1, J1, False)) < TOL
