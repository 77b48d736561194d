"""Training dynamics and GP inference in closed form (docs/predict.md; theory.md §2-3).

Kernels in, predictions out, at any number of optimizer steps without running the training:

1. the infinite ensemble of infinitely wide networks on a 1-D regression: its mean and standard deviation
   after t steps of gradient descent (``gradient_descent_mse_ensemble``) and at convergence, with the NNGP
   posterior (``gp_inference``) beside it;
2. one finite network: the train loss that ``gradient_descent_mse`` predicts from its empirical NTK, against
   the loss of its linearization actually trained by ``torch.optim.SGD`` on ``MSELoss`` for the same steps.

    python examples/predict.py [--steps 100]
"""

from __future__ import annotations

import argparse
import math

import torch

import ntkit as nk


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps of the finite network")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    net = nk.nn.Sequential(
        nk.nn.Linear(1, 512, W_std=1.5, b_std=0.5), nk.nn.ReLU(), nk.nn.Linear(512, 1, W_std=1.5, b_std=0.5)
    ).double()
    x_train = torch.linspace(-3, 3, 12, dtype=torch.float64).unsqueeze(1)
    y_train = torch.sin(x_train)
    x_test = torch.linspace(-3, 3, 50, dtype=torch.float64).unsqueeze(1)

    # 1. The infinite ensemble: all layers trained ("ntk") for t steps of SGD(lr) on MSELoss, and at t = inf.
    def kernel_fn(a: torch.Tensor, b: torch.Tensor) -> nk.Kernel:
        return nk.kernel(net, a, b)

    k_train = nk.kernel(net, x_train)
    lr_ensemble = 0.5 * nk.predict.max_learning_rate(k_train.ntk)  # half the largest stable rate
    ensemble = nk.predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, learning_rate=lr_ensemble)
    times = [10, 1000, math.inf]
    means, covs = zip(*(ensemble(t, x_test, "ntk", compute_cov=True) for t in times), strict=True)
    gp = nk.predict.gp_inference(k_train, y_train, diag_reg=1e-8)
    nngp_mean, nngp_cov = gp("nngp", nk.kernel(net, x_test, x_train), nk.kernel(net, x_test))  # eq. 13
    truth = torch.sin(x_test)
    for t, mean, cov in zip(times, means, covs, strict=True):
        rmse = float((mean - truth).pow(2).mean().sqrt())
        print(f"NTK ensemble after {t} steps: test RMSE {rmse:.3f}, mean sd {float(cov.diagonal().sqrt().mean()):.3f}")
    nngp_rmse = float((nngp_mean - truth).pow(2).mean().sqrt())
    print(f"NNGP posterior: test RMSE {nngp_rmse:.3f}, mean sd {float(nngp_cov.diagonal().sqrt().mean()):.3f}")

    # 2. One finite network: predicted against trained.
    ntk = nk.empirical_ntk(net, x_train)
    with torch.no_grad():
        f0 = net(x_train)
    lr = 0.5 * nk.predict.max_learning_rate(ntk)
    predicted = nk.predict.gradient_descent_mse(ntk, y_train, lr)(args.steps, f0)
    lin = nk.linearize(net)
    opt = torch.optim.SGD(lin.parameters(), lr=lr)
    for _ in range(args.steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(lin(x_train), y_train).backward()
        opt.step()
    with torch.no_grad():
        trained = lin(x_train)
    difference = float((predicted - trained).abs().max() / trained.abs().max())
    print(
        f"finite network, {args.steps} steps at lr {lr:.3g}: train loss predicted "
        f"{float((predicted - y_train).pow(2).mean()):.3e}, trained {float((trained - y_train).pow(2).mean()):.3e} "
        f"(outputs differ by {difference:.1e} relative)"
    )
    return {"difference": difference, "ensemble_rmse": float((means[-1] - truth).pow(2).mean().sqrt())}


if __name__ == "__main__":
    main()
