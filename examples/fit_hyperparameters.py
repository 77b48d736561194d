"""Fit W_std, b_std and diag_reg of an infinite-width network by maximising the marginal likelihood.

The kernel of an ``ntkit.nn`` network is differentiable in ``W_std`` and ``b_std`` given as tensors, and
``nk.predict.marginal_log_likelihood`` is differentiable in the kernel and in ``diag_reg``; so ``torch.optim`` fits
all three like any other parameters (docs/predict.md, "Fitting hyperparameters"). Here: the NNGP of a 3-layer
ReLU MLP on one of scikit-learn's bundled data sets (wine by default; breast_cancer, digits), standardised
features, regressing centred one-hot labels, half of the data for training. Printed: the log evidence of the
training targets and the test log likelihood (mean predictive log density of a test target entry), both per
target entry, and the test accuracy, at the layers' defaults (W_std = 1, b_std = 0, with diag_reg = 1e-3) and
after maximising the evidence by L-BFGS in log space.

    python examples/fit_hyperparameters.py [--data wine|breast_cancer|digits] [--steps 20]
"""

from __future__ import annotations

import argparse
import math

import torch
from sklearn.datasets import load_breast_cancer, load_digits, load_wine

import ntkit as nk


def mlp(d_in: int, W_std: torch.Tensor, b_std: torch.Tensor, depth: int = 3) -> nk.nn.Sequential:
    """ReLU MLP whose weight layers all share the (tensor) hyperparameters W_std, b_std; widths play no role."""
    layers: list[torch.nn.Module] = []
    for i in range(depth):
        layers += [nk.nn.Linear(d_in if i == 0 else 512, 512, W_std=W_std, b_std=b_std), nk.nn.ReLU()]
    return nk.nn.Sequential(*layers, nk.nn.Linear(512, 1, W_std=W_std, b_std=b_std))


def evaluate(log_theta: torch.Tensor, data: dict[str, torch.Tensor]) -> dict[str, float]:
    """Training log evidence (per target entry), test log likelihood (per entry) and test accuracy."""
    W_std, b_std, diag_reg = log_theta.detach().exp()
    net = mlp(data["x_train"].shape[1], W_std, b_std)
    k_dd = nk.kernel(net, data["x_train"], get="nngp").nngp
    k_test = nk.kernel(net, data["x_test"], data["x_train"], get="nngp")  # .cov1: K(x_i, x_i) of the test points
    evidence = nk.predict.marginal_log_likelihood(k_dd, data["y_train"], diag_reg) / data["y_train"].numel()
    noise = float(diag_reg) * float(k_dd.diagonal().mean())
    predict = nk.predict.gp_inference({"nngp": k_dd}, data["y_train"], diag_reg=float(diag_reg))
    mean, cov = predict("nngp", {"nngp": k_test.nngp}, {"nngp": torch.diag(k_test.cov1)})
    var = cov.diagonal().clamp_min(0)[:, None] + noise  # predictive variance of a noisy target
    log_lik = -0.5 * ((data["y_test"] - mean) ** 2 / var + torch.log(2 * math.pi * var))
    accuracy = (mean.argmax(1) == data["y_test"].argmax(1)).double().mean()
    return {"evidence": float(evidence), "test_log_lik": float(log_lik.mean()), "test_acc": float(accuracy)}


def fit(log_theta: torch.Tensor, data: dict[str, torch.Tensor], steps: int) -> torch.Tensor:
    """Maximise the log evidence over log W_std, log b_std, log diag_reg (log space keeps them > 0) with L-BFGS."""
    log_theta = log_theta.clone().requires_grad_()
    opt = torch.optim.LBFGS([log_theta], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        W_std, b_std, diag_reg = log_theta.exp()
        k_dd = nk.kernel(mlp(data["x_train"].shape[1], W_std, b_std), data["x_train"], get="nngp").nngp
        loss = -nk.predict.marginal_log_likelihood(k_dd, data["y_train"], diag_reg) / data["y_train"].numel()
        loss.backward()
        return loss

    opt.step(closure)
    return log_theta.detach()


LOADERS = {"breast_cancer": load_breast_cancer, "digits": load_digits, "wine": load_wine}


def load(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Standardised features and centred one-hot labels, split in halves at random."""
    data = LOADERS[name]()
    x = torch.tensor(data.data, dtype=torch.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    n_classes = int(data.target.max()) + 1
    y = torch.nn.functional.one_hot(torch.tensor(data.target), n_classes).double() - 1.0 / n_classes
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[: len(x) // 2], order[len(x) // 2 :]
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Prints the comparison; returns {"defaults": ..., "fitted": ...} of :func:`evaluate`'s numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=sorted(LOADERS), default="wine")
    parser.add_argument("--steps", type=int, default=20, help="L-BFGS iterations")
    args = parser.parse_args(argv)
    data = load(args.data)
    defaults = torch.tensor([1.0, 1e-6, 1e-3], dtype=torch.float64).log()  # b_std = 0 has no logarithm: 1e-6
    fitted = fit(defaults, data, args.steps)
    W_std, b_std, diag_reg = fitted.exp().tolist()
    n_train, n_test = len(data["x_train"]), len(data["x_test"])
    print(f"{args.data}: {n_train} training / {n_test} test examples, NNGP of a 3-layer ReLU MLP")
    print(f"fitted: W_std = {W_std:.3f}, b_std = {b_std:.3f}, diag_reg = {diag_reg:.3g}")
    print(f"{'':10} {'log evidence / entry':>21} {'test log lik / entry':>21} {'test accuracy':>14}")
    results = {}
    for name, theta in (("defaults", defaults), ("fitted", fitted)):
        r = results[name] = evaluate(theta, data)
        print(f"{name:10} {r['evidence']:21.4f} {r['test_log_lik']:21.4f} {r['test_acc']:14.4f}")
    return results


if __name__ == "__main__":
    main()
