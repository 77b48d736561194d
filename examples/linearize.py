"""A wide network and its linearization trained side by side (docs/linearize.md; theory.md §2.1).

``nk.linearize(net)`` is the module f0(x) + J0(x)(θ − θ0). Both models start from the same θ0, see the same
minibatches and are trained by the same optimizer (SGD with momentum, cross-entropy: nothing here is
specific to MSE). The wider the network (NTK parameterization), the closer the two stay: the script prints
the RMSE between their test logits, relative to the logits' scale, at two widths.

    python examples/linearize.py [--widths 64 1024] [--steps 200]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import ntkit as nk


def train_side_by_side(width: int, steps: int, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor) -> float:
    """Relative RMSE between the test logits of the network and its linearization after ``steps`` steps."""
    torch.manual_seed(1)
    net = nk.nn.Sequential(
        nk.nn.Linear(x.shape[1], width, W_std=2**0.5, b_std=0.1),
        nk.nn.ReLU(),
        nk.nn.Linear(width, width, W_std=2**0.5, b_std=0.1),
        nk.nn.ReLU(),
        nk.nn.Linear(width, 4, W_std=2**0.5, b_std=0.1),
    )
    lin = nk.linearize(net)  # a copy at θ0; net is left alone
    models = {"network": net, "linearized": lin}
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9) for name, m in models.items()}
    batches = torch.Generator().manual_seed(2)
    for _ in range(steps):
        batch = torch.randint(0, x.shape[0], (32,), generator=batches)
        for name, model in models.items():
            optimizers[name].zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizers[name].step()
    with torch.no_grad():
        f_net, f_lin = net(x_test), lin(x_test)
        return float((f_net - f_lin).pow(2).mean().sqrt() / f_lin.pow(2).mean().sqrt())


def main(argv: list[str] | None = None) -> dict[int, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    centres = 2 * torch.randn(4, 10)  # four classes around random centres
    y = torch.randint(0, 4, (256,))
    x = centres[y] + torch.randn(256, 10)
    x_test = centres[torch.arange(64) % 4] + torch.randn(64, 10)
    x, x_test = x / x.norm(dim=1, keepdim=True), x_test / x_test.norm(dim=1, keepdim=True)

    rmse = {width: train_side_by_side(width, args.steps, x, y, x_test) for width in args.widths}
    for width, value in rmse.items():
        print(f"width {width:5d}: relative RMSE between network and linearization {value:.3f}")
    return rmse


if __name__ == "__main__":
    main()
