"""A wide network and its linearization trained side by side (the weight-space experiment of Lee et al. 2019,
Fig. S3 style), on scikit-learn's digits data set (8x8 images, 10 classes; shipped with scikit-learn).

A ReLU MLP with two hidden layers in the NTK parameterization (σ_w² = 2, σ_b² = 0.1) and
``ntkit.linearize`` of it, f0(x) + J0(x)(θ − θ0), are trained from the same θ0 with the same minibatches,
by SGD with momentum on cross-entropy. The figure shows the logits of a few test points over training
(network solid, linearization dashed), the loss and accuracy of both, and the RMSE between their test
logits. The wider the network, the closer the two curves (``--width``).

    PYTHONPATH=src python examples/weight_space.py [--steps 300] [--width 1024] [--out weight_space.png]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import ntkit as nk


def load_digits_split(n_test: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits as float32 features standardised with the training statistics: x (N, 64), labels (N,)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = torch.tensor(x[order], dtype=torch.float32), torch.tensor(y[order])
    x_train, x_test = x[n_test:], x[:n_test]
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-3)
    return (x_train - mean) / std, y[n_test:], (x_test - mean) / std, y[:n_test]


class NTKLinear(nn.Module):
    """Dense layer in the NTK parameterization: z = σ_w/√n_in · x W + σ_b b, with W, b ~ N(0, 1) trained."""

    def __init__(self, n_in: int, n_out: int, w_std: float, b_std: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in))
        self.bias = nn.Parameter(torch.randn(n_out))
        self.w_scale, self.b_std = w_std / math.sqrt(n_in), b_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_scale * (x @ self.weight.T) + self.b_std * self.bias


def make_mlp(n_in: int, width: int, n_out: int, w_std: float = math.sqrt(2.0), b_std: float = math.sqrt(0.1)):
    return nn.Sequential(
        NTKLinear(n_in, width, w_std, b_std),
        nn.ReLU(),
        NTKLinear(width, width, w_std, b_std),
        nn.ReLU(),
        NTKLinear(width, n_out, w_std, b_std),
    )


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """Mean cross-entropy, accuracy and logits (N, 10) on a full set."""
    with torch.no_grad():
        logits = model(x)
    return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean()), logits


def train_side_by_side(args: argparse.Namespace) -> dict:
    """Train the network and its linearization on the same minibatches; return the logged history."""
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load_digits_split(args.n_test, args.seed)
    net = make_mlp(x_train.shape[1], args.width, 10)
    lin = nk.linearize(net)  # a deep copy at θ0: training net afterwards does not move it
    models = {"network": net, "linearized": lin}
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=args.lr, momentum=args.momentum) for k, m in models.items()}
    log_steps = sorted({0, args.steps, *np.unique(np.geomspace(1, args.steps, 30).astype(int)).tolist()})
    history: dict = {"step": [], "watch": list(range(args.n_watch))}
    for name in models:
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "logits"):
            history[f"{name}/{key}"] = []
    history["test_rmse"] = []
    batches = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps + 1):
        if step in log_steps:
            history["step"].append(step)
            test_logits = {}
            for name, model in models.items():
                train_loss, train_acc, _ = evaluate(model, x_train, y_train)
                test_loss, test_acc, test_logits[name] = evaluate(model, x_test, y_test)
                for key, value in zip(
                    ("train_loss", "train_acc", "test_loss", "test_acc"),
                    (train_loss, train_acc, test_loss, test_acc),
                    strict=True,
                ):
                    history[f"{name}/{key}"].append(value)
                history[f"{name}/logits"].append(test_logits[name][: args.n_watch].tolist())
            diff = test_logits["network"] - test_logits["linearized"]
            history["test_rmse"].append(float(diff.square().mean().sqrt()))
        if step == args.steps:
            break
        idx = torch.randint(0, len(x_train), (args.batch_size,), generator=batches)
        for name, model in models.items():
            optimizers[name].zero_grad()
            nn.functional.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            optimizers[name].step()
    return history


def plot(history: dict, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.asarray(history["step"]) + 1  # log axis: step 0 is drawn at 1
    n_watch = len(history["watch"])
    fig, axes = plt.subplots(2, max(n_watch, 3), figsize=(4.2 * max(n_watch, 3), 7.5), squeeze=False)
    colors = plt.get_cmap("tab10")(np.arange(10))
    for i in range(n_watch):
        ax = axes[0, i]
        for name, style in (("network", "-"), ("linearized", "--")):
            logits = np.asarray(history[f"{name}/logits"])[:, i, :]
            for c in range(logits.shape[1]):
                ax.plot(steps, logits[:, c], style, color=colors[c], lw=1.2)
        ax.set(xscale="log", xlabel="step + 1", ylabel="logit", title=f"test point {i}: logits (— net, -- lin)")
    panels = [("loss", "cross-entropy"), ("acc", "accuracy")]
    for ax, (key, label) in zip(axes[1, :2], panels, strict=True):
        for name, style in (("network", "-"), ("linearized", "--")):
            ax.plot(steps, history[f"{name}/train_{key}"], style, color="C0", label=f"{name}, train")
            ax.plot(steps, history[f"{name}/test_{key}"], style, color="C1", label=f"{name}, test")
        ax.set(xscale="log", xlabel="step + 1", ylabel=label)
        ax.legend(fontsize=8)
    ax = axes[1, 2]
    ax.plot(steps, history["test_rmse"], color="k")
    ax.set(xscale="log", xlabel="step + 1", ylabel="RMSE", title="RMSE(network, linearized) of test logits")
    for ax in axes[1, 3:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="SGD steps")
    parser.add_argument("--width", type=int, default=1024, help="hidden width")
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-test", type=int, default=397, help="held-out examples (of 1797)")
    parser.add_argument("--n-watch", type=int, default=3, help="test points whose logits are plotted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("weight_space.png"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    history = train_side_by_side(args)
    title = (
        f"digits, ReLU MLP width {args.width} (NTK param.) vs its linearization: SGD lr={args.lr}, "
        f"momentum={args.momentum}, batch {args.batch_size}, cross-entropy"
    )
    plot(history, args.out, title)
    for name in ("network", "linearized"):
        print(
            f"{name:>10}: test loss {history[f'{name}/test_loss'][-1]:.4f}, "
            f"test accuracy {history[f'{name}/test_acc'][-1]:.3f}"
        )
    print(f"RMSE of test logits {history['test_rmse'][-1]:.4f}; {time.perf_counter() - start:.1f} s; wrote {args.out}")
    return history


if __name__ == "__main__":
    main()
