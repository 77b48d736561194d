"""Bayesian optimisation with BoTorch and an infinite-width network's NNGP as the surrogate's covariance.

The objective is the negated 2-D Branin function on the unit square (its maximum is −0.398). Each round fits a
SingleTaskGP whose covariance is ``ntkit.gpytorch.NeuralKernel`` (NNGP of a 3-layer ReLU MLP; W_std, b_std and
the noise by ``fit_gpytorch_mll``), maximises the log expected improvement and evaluates the chosen point.

    python examples/botorch_optimize.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import math

import torch
from botorch.acquisition import LogExpectedImprovement
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.optim import optimize_acqf
from gpytorch.mlls import ExactMarginalLogLikelihood

import ntkit as nk
import ntkit.gpytorch


def neg_branin(x: torch.Tensor) -> torch.Tensor:
    """−Branin on [0, 1]² (rescaled to its usual domain [−5, 10] × [0, 15]), (n, 2) -> (n, 1)."""
    x1, x2 = 15 * x[:, 0] - 5, 15 * x[:, 1]
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return -((x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * torch.cos(x1) + 10)[:, None]


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Prints each round; returns the best value of the initial design and the best value found."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    bounds = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    x = torch.rand(6, 2, dtype=torch.float64)
    y = neg_branin(x)
    initial_best = y.max().item()
    layers = [nk.nn.Linear(2, 512), nk.nn.ReLU(), nk.nn.Linear(512, 512), nk.nn.ReLU(), nk.nn.Linear(512, 1)]
    arch = nk.nn.Sequential(*layers)
    for round_ in range(args.rounds):
        model = SingleTaskGP(x, y, covar_module=nk.gpytorch.NeuralKernel(arch, get="nngp"))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        acquisition = LogExpectedImprovement(model, best_f=y.max())
        candidate, _ = optimize_acqf(acquisition, bounds, q=1, num_restarts=4, raw_samples=64)
        x, y = torch.cat([x, candidate]), torch.cat([y, neg_branin(candidate)])
        print(f"round {round_ + 1:2d}: f = {y[-1].item():8.3f}, best so far {y.max().item():8.3f}")
    print(f"best point {x[y.argmax()].tolist()}, value {y.max().item():.3f} (optimum -0.398)")
    return {"initial_best": initial_best, "best": y.max().item()}


if __name__ == "__main__":
    main()
