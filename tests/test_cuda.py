"""Every public entry point with CUDA tensors and models gives the CPU float64 result to round-off (issue 14).

Each test computes the same quantity twice in float64: on the CPU (the reference) and with the model and inputs on
the device, and compares them to ``TOL``. Both are exact computations in float64; they differ only in the order of
the summations inside the libraries (cuBLAS and cuDNN against CPU BLAS), about 1e-16 relative per operation over at
most a few thousand terms, so 1e-10 leaves a wide margin while any real difference (a missed term, a wrong path, a
float32 step) shows at 1e-7 or more.

The device is CUDA; these tests are skipped where there is none. ``NTKIT_TEST_DEVICE=cpu`` runs them on the CPU
against itself, a dry run of the harness (``benchmarks/gpu_check.py --device cpu`` does that);
``benchmarks/gpu_check.py`` runs them on a GPU machine.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit.infinite import compute
from reference import rel_err

DEVICE = os.environ.get("NTKIT_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs a CUDA GPU")
DT = torch.float64
TOL = 1e-10


def close(on_device: torch.Tensor, on_cpu: torch.Tensor) -> None:
    assert on_device.device.type == torch.device(DEVICE).type
    assert rel_err(on_device.cpu(), on_cpu) < TOL


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).to(DT).eval()


def cnn() -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.GroupNorm(2, 4), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).to(DT).eval()


def conv_chain() -> nn.Module:
    """Convolutions and activations only: the structured method's hand-evaluated capture (empirical/conv_chain.py)."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.Tanh()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).to(DT).eval()


def inputs(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


@pytest.mark.parametrize("method", ["auto", "jacobian", "ntvp", "structured"])
@pytest.mark.parametrize("make, shape", [(mlp, (6,)), (cnn, (2, 5, 5)), (conv_chain, (2, 6, 6))])
def test_empirical_ntk(method, make, shape):
    model, x1, x2 = make(), inputs(5, *shape), inputs(4, *shape, seed=2)
    for b, trace_outputs in ((None, True), (x2, False)):
        want = nk.empirical_ntk(model, x1, b, method=method, trace_outputs=trace_outputs)
        got = nk.empirical_ntk(
            model.to(DEVICE),
            x1.to(DEVICE),
            None if b is None else b.to(DEVICE),
            method=method,
            trace_outputs=trace_outputs,
        )
        model.cpu()
        close(got, want)


def test_empirical_nngp_and_ntk_vector_product():
    model, x1, x2 = mlp(), inputs(5, 6), inputs(4, 6, seed=2)
    v = inputs(4, 3, seed=3)
    want = [nk.empirical_nngp(model, x1, x2), nk.ntk_vector_product(model, x1, x2, v)]
    model.to(DEVICE)
    a, b = x1.to(DEVICE), x2.to(DEVICE)
    for got, ref in zip(
        [nk.empirical_nngp(model, a, b), nk.ntk_vector_product(model, a, b, v.to(DEVICE))], want, strict=True
    ):
        close(got, ref)


def infinite_models() -> dict[str, nn.Module]:
    """The dense fast path (``dense_chain``), the generic path, and the generic path with full spatial covariances."""
    N = nk.nn
    chain = nn.Sequential(N.Linear(6, 8, W_std=1.5, b_std=0.1), N.ReLU(), N.Linear(8, 1, W_std=1.5))
    generic = nn.Sequential(N.Linear(6, 8, W_std=1.5, b_std=0.1), N.Erf(), N.Linear(8, 1))
    pooled = nn.Sequential(N.Conv2d(2, 4, 3, W_std=1.4), N.ReLU(), N.GlobalAvgPool(), N.Linear(4, 1))
    return {"chain": chain, "generic": generic, "pooled": pooled}


@pytest.mark.parametrize("name", ["chain", "generic", "pooled"])
@pytest.mark.parametrize("block_size", [None, 3])
def test_kernel(name, block_size):
    model = infinite_models()[name]
    shape = (2, 5, 5) if name == "pooled" else (6,)
    x1, x2 = inputs(7, *shape), inputs(5, *shape, seed=2)
    for b in (None, x2):
        want = nk.kernel(model, x1, b, block_size=block_size)
        got = nk.kernel(model, x1.to(DEVICE), None if b is None else b.to(DEVICE), block_size=block_size)
        close(got.nngp, want.nngp)
        close(got.ntk, want.ntk)
        close(got.cov, want.cov)


def test_kernel_takes_the_dense_path_in_large_blocks(monkeypatch):
    """On CUDA the dense chain runs in this thread, one block for the whole kernel (no CPU tiles or threads)."""
    if not DEVICE.startswith("cuda"):
        pytest.skip("the CPU keeps its thread pool and cache-sized tiles")
    seen: list[tuple[int, int]] = []
    real = compute.run_chain_tile

    def spy(steps, variances, a, b, *args, **kwargs):
        seen.append((a.shape[0], b.shape[0]))
        return real(steps, variances, a, b, *args, **kwargs)

    monkeypatch.setattr(compute, "run_chain_tile", spy)
    x = inputs(300, 6).to(DEVICE)
    nk.kernel(infinite_models()["chain"], x)
    assert seen == [(300, 300)]


def test_predict_on_device():
    x_train, x_test, y = inputs(8, 6), inputs(3, 6, seed=2), inputs(8, 1, seed=3)
    model = infinite_models()["chain"]

    def kernels(a: torch.Tensor, b: torch.Tensor | None) -> nk.Kernel:
        return nk.kernel(model, a, b)

    def run(device: str) -> list[torch.Tensor]:
        xt, xs, yt = x_train.to(device), x_test.to(device), y.to(device)
        k_train, k_test = kernels(xt, None), kernels(xs, xt)
        gd = nk.predict.gradient_descent_mse(k_train.ntk, yt, 0.02)
        gp = nk.predict.gp_inference(k_train, yt, diag_reg=1e-4)
        ensemble = nk.predict.gradient_descent_mse_ensemble(kernels, xt, yt, 0.02, diag_reg=1e-4)
        f0 = torch.zeros(11, 1, dtype=DT, device=device)
        return [
            *gd(torch.tensor([1.0, 10.0]), f0[:8], f0[8:], k_test.ntk),
            gp("ntk", k_test, kernels(xs, None))[0],
            *ensemble(5.0, xs, "ntk", compute_cov=True),
        ]

    for got, want in zip(run(DEVICE), run("cpu"), strict=True):
        close(got, want)


@pytest.mark.parametrize("degree", [1, 2])
def test_linearize_and_taylor_expand(degree):
    """Outputs and the gradient of a training step of the expanded model, moved to the device after θ moved."""
    x = inputs(5, 6)
    expanded = nk.taylor_expand(mlp(), degree)
    with torch.no_grad():
        for p in expanded.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=DT))

    def step(xs: torch.Tensor) -> list[torch.Tensor]:
        expanded.zero_grad(set_to_none=True)
        out = expanded(xs)
        out.square().mean().backward()
        return [out.detach()] + [p.grad for p in expanded.parameters()]

    want = step(x)
    expanded.to(DEVICE)
    for got, ref in zip(step(x.to(DEVICE)), want, strict=True):
        close(got, ref)


def test_monte_carlo_kernel():
    """Networks built on the CPU from the same seeds, then moved to the inputs' device: the same draws."""
    x = inputs(4, 6)
    want = nk.monte_carlo_kernel(mlp_factory, x, n_samples=3, seed=0)
    got = nk.monte_carlo_kernel(mlp_factory, x.to(DEVICE), n_samples=3, seed=0)
    close(got.nngp, want.nngp)
    close(got.ntk, want.ntk)


def mlp_factory() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 2)).to(DT)
