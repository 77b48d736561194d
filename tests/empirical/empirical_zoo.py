"""Small float64 models of every kind the empirical kernels must handle, with inputs for them.

Each factory returns (model in eval mode, x1, x2). Sizes are tiny so that the dense reference (one autograd
gradient per example and output) stays fast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DT = torch.float64


def _randomise_norm_stats(model: nn.Module) -> None:
    """Give BatchNorm layers non-trivial running statistics and affine parameters (eval mode uses them)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)


def mlp():
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3))
    return model.to(DT).eval(), torch.randn(4, 5, dtype=DT), torch.randn(3, 5, dtype=DT)


def cnn1d():
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv1d(4, 4, 3, stride=2, groups=2, padding_mode="circular", padding=1),
        nn.Tanh(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    return model.to(DT).eval(), torch.randn(3, 2, 8, dtype=DT), torch.randn(2, 2, 8, dtype=DT)


def cnn2d():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding="same"),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 2, padding=1, dilation=1, stride=1),
        nn.GroupNorm(2, 4),
        nn.Tanh(),
        nn.Conv2d(4, 6, 2, padding="same", dilation=2, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    _randomise_norm_stats(model)
    return model.to(DT).eval(), torch.randn(3, 3, 6, 6, dtype=DT), torch.randn(2, 3, 6, 6, dtype=DT)


class ResidualMLP(nn.Module):
    """x -> Linear -> [x + Linear(ReLU(LayerNorm(x)))] x 2 -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 6)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 6)) for _ in range(2))
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def residual():
    model = ResidualMLP()
    _randomise_norm_stats(model)
    return model.to(DT).eval(), torch.randn(4, 5, dtype=DT), torch.randn(3, 5, dtype=DT)


class AttentionClassifier(nn.Module):
    """Token ids -> Embedding (padding index 0) -> self-attention -> mean over positions -> 3 outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 8, padding_idx=0)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        h = self.emb(ids)
        a, _ = self.attn(h, h, h)
        return self.head((h + a).mean(1))


def attention():
    ids1 = torch.randint(0, 11, (3, 5))
    ids1[0, -1] = 0  # a padding position
    return AttentionClassifier().to(DT).eval(), ids1, torch.randint(0, 11, (2, 5))


class TinyTransformer(nn.Module):
    """Embedding + 2-layer nn.TransformerEncoder (eval) + mean pooling + 2 outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(13, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 2)

    def forward(self, ids):
        return self.head(self.encoder(self.emb(ids)).mean(1))


def transformer():
    model = TinyTransformer()
    _randomise_norm_stats(model)
    return model.to(DT).eval(), torch.randint(0, 13, (3, 4)), torch.randint(0, 13, (2, 4))


def batchnorm_mlp():
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    _randomise_norm_stats(model)
    return model.to(DT).eval(), torch.randn(4, 5, dtype=DT), torch.randn(3, 5, dtype=DT)


class TiedLM(nn.Module):
    """Embedding whose table is also the output layer (module-level weight tying, as in language models),
    a linear layer applied twice, and the table read once more through F.linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(9, 6)
        self.mix = nn.Linear(6, 6)
        self.head = nn.Linear(6, 9, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        h = torch.tanh(self.mix(torch.tanh(self.mix(self.emb(ids))))).mean(1)
        return self.head(h) + 0.5 * F.linear(torch.tanh(h), self.emb.weight)


def tied():
    return TiedLM().to(DT).eval(), torch.randint(0, 9, (3, 4)), torch.randint(0, 9, (2, 4))


class LoRALinear(nn.Module):
    """A frozen base layer plus a low-rank adapter written with raw parameters: W x + B (A x)."""

    def __init__(self, d_in: int, d_out: int, rank: int = 2) -> None:
        super().__init__()
        self.base = nn.Linear(d_in, d_out)
        self.lora_A = nn.Parameter(torch.randn(rank, d_in) * 0.3)
        self.lora_B = nn.Parameter(torch.randn(d_out, rank) * 0.3)

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.T) @ self.lora_B.T


def lora():
    model = nn.Sequential(LoRALinear(5, 6), nn.Tanh(), LoRALinear(6, 2))
    return model.to(DT).eval(), torch.randn(4, 5, dtype=DT), torch.randn(3, 5, dtype=DT)


MODELS = {
    "mlp": mlp,
    "cnn1d": cnn1d,
    "cnn2d": cnn2d,
    "residual": residual,
    "attention": attention,
    "transformer": transformer,
    "batchnorm": batchnorm_mlp,
    "tied": tied,
    "lora": lora,
}


def functional_mlp():
    """A plain function f(params, x) (one F.linear, one matmul) with its parameters, and inputs."""
    params = {
        "w1": torch.randn(6, 4, dtype=DT),
        "b1": torch.randn(6, dtype=DT),
        "w2": torch.randn(2, 6, dtype=DT),
    }

    def f(p, x):
        return torch.tanh(F.linear(x, p["w1"], p["b1"])) @ p["w2"].T

    return f, params, torch.randn(4, 4, dtype=DT), torch.randn(3, 4, dtype=DT)
