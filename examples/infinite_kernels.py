"""Infinite-width NNGP and NTK kernels in closed form (docs/infinite.md; theory.md §4).

One architecture definition gives both a finite torch network and its infinite-width kernels: ``nk.kernel``
computes K and Θ of ``ntkit.nn`` layers (here an MLP and a CNN with global average pooling) and of plain
``torch.nn`` layers through the registry (standard parameterization). The widths play no role in the kernels.

    python examples/infinite_kernels.py
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import ntkit as nk


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="number of inputs")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    mlp = nk.nn.Sequential(
        nk.nn.Linear(16, 512, W_std=1.5, b_std=0.1), nk.nn.Erf(), nk.nn.Linear(512, 1, W_std=1.5, b_std=0.1)
    )
    x = torch.randn(args.n, 16, dtype=torch.float64)
    k = nk.kernel(mlp, x)  # nk.Kernel: k.nngp and k.ntk, (n, n) per output
    k_cross = nk.kernel(mlp, x[:5], x, get="ntk")  # (5, n)

    cnn = nk.nn.Sequential(
        nk.nn.Conv2d(3, 64, 3, W_std=1.4, b_std=0.1),
        nk.nn.ReLU(),
        nk.nn.Conv2d(64, 64, 3, W_std=1.4, b_std=0.1),
        nk.nn.ReLU(),
        nk.nn.GlobalAvgPool(),
        nk.nn.Linear(64, 10, W_std=1.4),
    )
    images = torch.randn(6, 3, 8, 8, dtype=torch.float64)  # NCHW
    k_cnn = nk.kernel(cnn, images)

    plain = nn.Sequential(nn.Linear(16, 512), nn.ReLU(), nn.Linear(512, 1))  # registry, standard parameterization
    k_plain = nk.kernel(plain, x)

    smallest = {
        name: float(torch.linalg.eigvalsh(kernel.ntk).min() / torch.linalg.eigvalsh(kernel.ntk).max())
        for name, kernel in [("mlp", k), ("cnn", k_cnn), ("plain torch", k_plain)]
    }
    print(f"MLP: K {tuple(k.nngp.shape)}, Θ {tuple(k.ntk.shape)}, Θ(x[:5], x) {tuple(k_cross.ntk.shape)}")
    print(f"MLP: K[0, :3] = {k.nngp[0, :3].tolist()}, Θ[0, :3] = {k.ntk[0, :3].tolist()}")
    print(f"CNN with global average pooling: Θ {tuple(k_cnn.ntk.shape)}, Θ[0, :3] = {k_cnn.ntk[0, :3].tolist()}")
    print(f"plain torch MLP (standard parameterization): K[0, :3] = {k_plain.nngp[0, :3].tolist()}")
    print("smallest / largest eigenvalue of each NTK (positive definite): " + ", ".join(
        f"{name} {value:.1e}" for name, value in smallest.items()
    ))  # fmt: skip
    return smallest


if __name__ == "__main__":
    main()
