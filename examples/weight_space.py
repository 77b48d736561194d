"""A wide network and its linearization trained side by side (the weight-space experiment of Lee et al. 2019,
Fig. S3 style), on scikit-learn's digits data set (8x8 images, 10 classes; shipped with scikit-learn).

A ReLU MLP with two hidden layers in the NTK parameterization (σ_w² = 2, σ_b² = 0.1) and
``ntkit.linearize`` of it, f0(x) + J0(x)(θ − θ0), are trained from the same θ0 with the same minibatches,
by SGD with momentum on cross-entropy. The figure shows the logits of a few test points over training
(network solid, linearization dashed), the loss and accuracy of both, and the RMSE between their test
logits relative to the logit scale. The wider the network, the closer the two curves (``--width``).

The pieces are those of experiment E6 of ``ntkit reproduce``: the network (``ntkit.experiments.mlp``), the data
(``RunContext.load_data``), the side-by-side training loop and the figure
(``ntkit.experiments.e6_momentum_cross_entropy``).

    PYTHONPATH=src python examples/weight_space.py [--steps 300] [--width 1024] [--out weight_space.png]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from ntkit.experiments import RunContext, log_spaced_steps, mlp
from ntkit.experiments.e6_momentum_cross_entropy import logits_figure, side_by_side_classification
from ntkit.report import figure_png, plot_style


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="SGD steps")
    parser.add_argument("--width", type=int, default=1024, help="hidden width")
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-train", type=int, default=None, help="training examples (default: all 1348)")
    parser.add_argument("--n-test", type=int, default=None, help="test examples (default: all 449)")
    parser.add_argument("--n-watch", type=int, default=3, help="test points whose logits are plotted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("weight_space.png"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    ctx = RunContext(seed=args.seed)
    data = ctx.load_data(task="multiclass", n_train=args.n_train, n_test=args.n_test, dtype=torch.float32)
    network = mlp(
        data.n_features, [args.width] * 2, data.n_classes, W_std=math.sqrt(2.0), b_std=math.sqrt(0.1),
        seed=args.seed, dtype=torch.float32,
    )  # fmt: skip
    history = side_by_side_classification(
        network, data, lr=args.lr, momentum=args.momentum, batch_size=args.batch_size, steps=args.steps,
        record_steps=log_spaced_steps(args.steps, 30), n_watch=args.n_watch, seed=args.seed,
    )  # fmt: skip
    title = (
        f"digits, ReLU MLP width {args.width} (NTK param.) vs its linearization: SGD lr={args.lr}, "
        f"momentum={args.momentum}, batch {args.batch_size}, cross-entropy"
    )
    with plot_style():
        args.out.write_bytes(figure_png(logits_figure(history, title=title)))
    for name in ("network", "linearized"):
        print(
            f"{name:>10}: test loss {history[name]['test_loss'][-1]:.4f}, "
            f"test accuracy {history[name]['test_acc'][-1]:.3f}"
        )
    print(
        f"RMSE of test logits {history['test_rmse'][-1]:.4f} (RMS logit {history['logit_scale'][-1]:.3f}); "
        f"{time.perf_counter() - start:.1f} s; wrote {args.out}"
    )
    return history


if __name__ == "__main__":
    main()
