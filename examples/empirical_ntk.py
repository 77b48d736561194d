"""The empirical NTK and NNGP of an ordinary PyTorch network (docs/empirical.md; theory.md §1.3).

Θ̂(x1, x2) = J(x1) J(x2)ᵀ with J = ∂f/∂θ, for any ``torch.nn.Module``: averaged over the outputs (N1, N2),
in full (N1, N2, O, O), and as an operator v ↦ Θ̂ v that never forms the kernel. The script checks the
operator against the full kernel and prints a few entries.

    python examples/empirical_ntk.py [--width 256] [--n 32]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import ntkit as nk


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256, help="hidden width")
    parser.add_argument("--n", type=int, default=32, help="number of inputs")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, args.width), nn.Tanh(), nn.Linear(args.width, 3)).double()
    x = torch.randn(args.n, 8, dtype=torch.float64)
    x_test = torch.randn(5, 8, dtype=torch.float64)

    ntk = nk.empirical_ntk(model, x)  # (n, n): the mean of the 3 diagonal output blocks
    full = nk.empirical_ntk(model, x, trace_outputs=False)  # (n, n, 3, 3)
    ntk_test = nk.empirical_ntk(model, x_test, x)  # (5, n)
    nngp = nk.empirical_nngp(model, x)  # f(x1)·f(x2) / 3
    v = torch.randn(args.n, 3, dtype=torch.float64)
    product = nk.ntk_vector_product(model, x, x, v)  # Θ̂ v for the full kernel, (n, 3)

    operator_error = float((product - torch.einsum("nmab,mb->na", full, v)).abs().max() / product.abs().max())
    trace_error = float((ntk - full.diagonal(dim1=2, dim2=3).mean(-1)).abs().max() / ntk.abs().max())
    print(f"Θ̂(x, x): {tuple(ntk.shape)}, full {tuple(full.shape)}, Θ̂(x_test, x): {tuple(ntk_test.shape)}")
    print(f"Θ̂[0, :3] = {ntk[0, :3].tolist()}")
    print(f"K̂[0, :3] = {nngp[0, :3].tolist()}")
    print(f"Θ̂ v against the full kernel: relative difference {operator_error:.1e}")
    print(f"mean of the output blocks against trace_outputs=True: relative difference {trace_error:.1e}")
    return {"operator_error": operator_error, "trace_error": trace_error}


if __name__ == "__main__":
    main()
