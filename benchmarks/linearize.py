"""Forward+backward time of a linearized model divided by that of the model itself (target: at most 3x).

Models (the empirical-NTK benchmark's): the MLP 64-512-512-512-1 on N=256 inputs, and a CNN (3 conv
layers of 64 channels, 3x3, ReLU, global average pooling, 10 outputs) on N=128 images 3x16x16, float32.
Each step is ``loss = out.square().mean(); loss.backward()``. Everything is timed in one run: each
variant alternately with the model itself (so load changes on a shared machine hit both), and the
ratio of the medians over the repeats is reported. The reverse-mode fallback (``double_vjp``) and
the degree-2 Taylor expansion are shown for information.

    PYTHONPATH=src python benchmarks/linearize.py [--repeats 30] [--threads 2]
    PYTHONPATH=src python benchmarks/linearize.py --device cuda

GPU mode (``--device cuda``): the same steps with the models and inputs on the GPU, each step synchronised, after
the device's roofline (benchmarks/roofline.py) measured in the same run; the target there is at most 2x (issue 14).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
from torch import nn

import ntkit as nk


def mlp() -> nn.Module:
    widths = [64, 512, 512, 512]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], 1))


def cnn() -> nn.Module:
    convs: list[nn.Module] = []
    for c_in in (3, 64, 64):
        convs += [nn.Conv2d(c_in, 64, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*convs, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def step_time(model: nn.Module, x: torch.Tensor) -> float:
    """Seconds for one forward + backward (clearing the gradients first is not timed); synchronised on CUDA."""
    model.zero_grad(set_to_none=True)
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(x.device)
    start = time.perf_counter()
    model(x).square().mean().backward()
    if cuda:
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - start


def paired_medians(model: nn.Module, variant: nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median step times of the model and of the variant, timed alternately."""
    for module in (model, variant):  # warm-up
        step_time(module, x)
    base, other = [], []
    for _ in range(repeats):
        base.append(step_time(model, x))
        other.append(step_time(variant, x))
    return statistics.median(base), statistics.median(other)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (GPU mode: module docs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: torch sees no CUDA device here.")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        from roofline import describe

        print(describe(args.device))
    target = 2.0 if cuda else 3.0
    torch.manual_seed(0)
    cases = [
        ("MLP 64-512x3-1, N=256", mlp().to(args.device), torch.randn(256, 64, device=args.device)),
        ("CNN 3x64ch, N=128", cnn().to(args.device), torch.randn(128, 3, 16, 16, device=args.device)),
    ]
    print(f"{'model':<22} {'variant':<24} {'model ms':>9} {'variant ms':>11} {'ratio':>6}")
    for label, model, x in cases:
        variants = {
            "linearize (jvp)": nk.linearize(model),
            "linearize (double_vjp)": nk.linearize(model, method="double_vjp"),
            "taylor_expand, degree 2": nk.taylor_expand(model, 2),
        }
        for name, variant in variants.items():
            base, other = paired_medians(model, variant, x, args.repeats)
            met = "met" if other <= target * base else "MISSED"
            verdict = f"   target <= {target:g}: {met}" if name == "linearize (jvp)" else ""
            print(f"{label:<22} {name:<24} {1e3 * base:>9.2f} {1e3 * other:>11.2f} {other / base:>6.2f}{verdict}")


if __name__ == "__main__":
    main()
