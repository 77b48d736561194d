"""An ExactGP whose covariance is the NTK of an MLP or of a small CNN, fitted by GPyTorch's
ExactMarginalLogLikelihood, on scikit-learn's digits (8x8 images, NCHW for the CNN through ``input_shape``;
one-vs-rest regression of the label "is it a 3?", ±1 targets).

The kernel's W_std and b_std and the likelihood's noise are fitted with Adam. The script then checks that GPyTorch's
posterior equals ``nk.predict.gp_inference``'s "ntkgp" posterior at the fitted values (the NTK as prior
covariance), and prints the test accuracy of the sign of the posterior mean.

    python examples/gpytorch_exact_gp.py [--arch mlp|cnn] [--n-train 300] [--steps 30]

The CNN's kernel (all pairs of positions of the 8x8 images) is much slower than the MLP's: use --n-train 60
with it.
"""

from __future__ import annotations

import argparse

import gpytorch
import torch
from sklearn.datasets import load_digits

import ntkit as nk
import ntkit.gpytorch

IMAGE = (1, 8, 8)


def mlp(W_std: float = 1.0, b_std: float = 0.1) -> nk.nn.Sequential:
    return nk.nn.Sequential(
        nk.nn.Flatten(), nk.nn.Linear(64, 512, W_std=W_std, b_std=b_std), nk.nn.ReLU(),
        nk.nn.Linear(512, 512, W_std=W_std, b_std=b_std), nk.nn.ReLU(), nk.nn.Linear(512, 1, W_std=W_std, b_std=b_std),
    )  # fmt: skip


def cnn(W_std: float = 1.0, b_std: float = 0.1) -> nk.nn.Sequential:
    return nk.nn.Sequential(
        nk.nn.Conv2d(1, 8, 3, W_std=W_std, b_std=b_std), nk.nn.ReLU(),
        nk.nn.Conv2d(8, 8, 3, W_std=W_std, b_std=b_std), nk.nn.ReLU(),
        nk.nn.Flatten(), nk.nn.Linear(8 * 64, 1, W_std=W_std, b_std=b_std),
    )  # fmt: skip


class NTKGP(gpytorch.models.ExactGP):  # type: ignore[misc]
    def __init__(self, x: torch.Tensor, y: torch.Tensor, architecture: nk.nn.Sequential) -> None:
        super().__init__(x, y, gpytorch.likelihoods.GaussianLikelihood())
        self.mean_module = gpytorch.means.ZeroMean()
        self.covar_module = nk.gpytorch.NeuralKernel(architecture, get="ntk", input_shape=IMAGE)

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Prints the fit and the comparison; returns the evidence before and after, the two relative differences
    from nk.predict and the test accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float64) / 16.0
    y = torch.tensor(digits.target == 3, dtype=torch.float64) * 2 - 1
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[: args.n_train], order[args.n_train : args.n_train + args.n_test]

    make = mlp if args.arch == "mlp" else cnn
    model = NTKGP(x[train], y[train], make()).double()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model.train()
    evidence = []
    for step in range(args.steps + 1):
        opt.zero_grad()
        loss = -mll(model(x[train]), y[train])
        evidence.append(-loss.item())
        if step % 10 == 0 or step == args.steps:
            print(f"step {step:3d}: log evidence / N = {evidence[-1]:.4f}")
        if step < args.steps:
            loss.backward()
            opt.step()

    model.eval()
    with torch.no_grad():
        posterior = model(x[test])
        W_std, b_std = model.covar_module.W_std.item(), model.covar_module.b_std.item()
        noise = model.likelihood.noise.item()
        net, images = make(W_std, b_std), x.reshape(-1, *IMAGE)
        predict = nk.predict.gp_inference(nk.kernel(net, images[train]), y[train], noise, diag_reg_absolute_scale=True)
        mean, cov = predict("ntkgp", nk.kernel(net, images[test], images[train]), nk.kernel(net, images[test]))
    print(f"fitted W_std = {W_std:.3f}, b_std = {b_std:.3f}, noise = {noise:.3g}")
    err_mean = float((posterior.mean - mean).abs().max() / mean.abs().max())
    err_cov = float((posterior.covariance_matrix - cov).abs().max() / cov.abs().max())
    print(f"max |GPyTorch - nk.predict| / max: mean {err_mean:.1e}, covariance {err_cov:.1e}")
    accuracy = float((posterior.mean.sign() == y[test]).double().mean())
    print(f"test accuracy of 'is it a 3?': {accuracy:.3f} (always 'no': {float((y[test] < 0).double().mean()):.3f})")
    return {"evidence_start": evidence[0], "evidence_end": evidence[-1], "mean_difference": err_mean,
            "cov_difference": err_cov, "accuracy": accuracy}  # fmt: skip


if __name__ == "__main__":
    main()
