"""Every ntkit.nn layer and combinator: the analytic NNGP and NTK against Monte Carlo over its finite network.

Six small architectures cover all layers (each layer's formula enters its architecture's kernel, so an error
in any of them shows). Reference: ``nk.monte_carlo_kernel`` (the NNGP with a 64-wide readout) for the dense
ones; the vmapped ensembles of ``kernel_mc`` for convolutions and branches (several times faster there) and for
train-mode dropout, which the empirical kernels reject. Tolerance: |analytic − MC| <= 4 standard errors +
3/width of the kernel's scale: the MC error is Gaussian-like (4 s.e. is exceeded by chance with
probability < 1e-4 per entry), and the expected kernels of width-n networks differ from the limit by O(1/n).
Observed: at most 2.5 standard errors, under half of the allowed difference. The slow test repeats every case
at width 256 with twice the samples. ``test_monte_carlo_check_has_power`` shows the check rejects a kernel
whose W_std is 5% off.
"""

from functools import partial

import pytest
import torch

import ntkit as nk
from kernel_mc import assert_matches, library_mc, mc_nngp, mc_ntk
from ntkit import nn as N

WIDTH = 128
KW = {"W_std": 1.4, "b_std": 0.3}


def mlp(width, out, param):
    kw = {**KW, "parameterization": param}
    return N.Sequential(
        N.Linear(3, width, **kw), N.ReLU(), N.Linear(width, width, **kw), N.Erf(), N.Linear(width, out, **kw)
    )


def conv2d(width, out, param):
    # 6x6 -> stride 2 "same" (padding 0 before, 1 after) 3x3 -> "valid" 2x2 -> AvgPool 2, stride 1, padding 1: 3x3.
    kw = {**KW, "parameterization": param}
    return N.Sequential(
        N.Conv2d(2, width, 3, stride=2, **kw),
        N.ReLU(),
        N.Conv2d(width, width, 2, padding="valid", **kw),
        N.ReLU(),
        N.AvgPool2d(2, stride=1, padding=1),
        N.Flatten(),
        N.Linear(9 * width, out, **kw),
    )


def conv1d(width, out, param):
    kw = {**KW, "parameterization": param}
    return N.Sequential(
        N.Conv1d(2, width, 3, padding_mode="circular", **kw),
        N.ReLU(),
        N.Conv1d(width, width, 3, stride=2, padding=1, **kw),
        N.ReLU(),
        N.AvgPool1d(2),
        N.GlobalAvgPool(),
        N.Linear(width, out, **kw),
    )


def residual(width, out, param):
    # Residual(ReLU) adds u and relu(u) of the same Gaussian u (cross terms); LayerNorm follows a non-Gaussian
    # layer (needs its channel means).
    kw = {**KW, "parameterization": param}
    return N.Sequential(
        N.Linear(3, width, **kw),
        N.Residual(N.ReLU(), N.Linear(width, width, **kw)),
        N.Residual(N.ReLU()),
        N.LayerNorm(width, elementwise_affine=True),
        N.Linear(width, out, **kw),
    )


def dropout(width, out, param):
    # Train-mode dropout, after a nonlinearity and before the readout.
    kw = {**KW, "parameterization": param}
    return N.Sequential(
        N.Linear(3, width, **kw),
        N.ReLU(),
        N.Dropout(0.2),
        N.Linear(width, width, **kw),
        N.Erf(),
        N.Dropout(0.3),
        N.Linear(width, out, **kw),
    )


def parallel(width, out, param):
    # erf(relu(u)): two activations in a row; product and concatenation fan-in; Identity.
    kw = {**KW, "parameterization": param}
    return N.Sequential(
        N.Linear(3, width, **kw),
        N.ReLU(),
        N.Erf(),
        N.Identity(),
        N.Parallel(N.Linear(width, width, **kw), N.Sequential(N.Linear(width, width, **kw), N.Erf()), fan_in="product"),
        N.Parallel(N.Linear(width, width, **kw), N.Linear(width, width // 2, **kw), fan_in="concat"),
        N.Linear(width + width // 2, out, **kw),
    )


ARCHITECTURES = {
    "mlp": (mlp, (4, 3)),
    "conv2d": (conv2d, (4, 2, 6, 6)),
    "conv1d": (conv1d, (4, 2, 7)),
    "residual": (residual, (4, 3)),
    "dropout": (dropout, (4, 3)),
    "parallel": (parallel, (4, 3)),
}


def _inputs(shape):
    x = torch.randn(shape, dtype=torch.float64)
    x[1] = 0.5 * x[0] + 0.2 * x[1]  # a correlated pair
    return x


def _net(arch, param="ntk", out=1, width=WIDTH):
    return ARCHITECTURES[arch][0](width, out, param)


VMAPPED = ("conv2d", "conv1d", "parallel", "dropout")


def _monte_carlo(arch, make_net, x, n_samples, get, scale=1.0):
    if arch in VMAPPED:
        mc = mc_nngp if get == "nngp" else partial(mc_ntk, scale=scale)
        return mc(make_net, x, None, n_samples)
    return library_mc(make_net, x, n_samples, get, scale=scale)


def _check_nngp(arch, width, n_samples):
    x = _inputs(ARCHITECTURES[arch][1])
    k = nk.kernel(_net(arch, width=width), x, get="nngp")
    mc = _monte_carlo(arch, lambda: _net(arch, out=64, width=width), x, n_samples, "nngp")
    assert_matches(k.nngp, mc, bias=3 / width)
    # The standard parameterization draws the same functions: same NNGP.
    torch.testing.assert_close(nk.kernel(_net(arch, "standard", width=width), x, get="nngp").nngp, k.nngp)


def _check_ntk(arch, param, width, n_samples):
    x = _inputs(ARCHITECTURES[arch][1])
    k = nk.kernel(_net(arch, param, width=width), x)
    # Standard parameterization: Θ = J Jᵀ / n with n the widest hidden fan-in (theory.md §4.4).
    scale = 1.0 / k.sp_width[0] if param == "standard" else 1.0
    mc = _monte_carlo(arch, lambda: _net(arch, param, width=width), x, n_samples, "ntk", scale)
    assert_matches(k.ntk, mc, bias=3 / width)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_nngp_matches_monte_carlo(arch):
    _check_nngp(arch, WIDTH, 200)


@pytest.mark.parametrize("param", ["ntk", "standard"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_ntk_matches_monte_carlo(arch, param):
    _check_ntk(arch, param, WIDTH, 100)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_kernels_match_monte_carlo_wide(arch):
    _check_nngp(arch, 256, 400)
    for param in ("ntk", "standard"):
        _check_ntk(arch, param, 256, 200)


def test_monte_carlo_check_has_power():
    x = _inputs((4, 3))
    mc = library_mc(lambda: _net("mlp"), x, 100, "ntk")
    wrong = N.Sequential(
        *[
            N.Linear(m.in_features, m.out_features, W_std=1.4 * 1.05, b_std=0.3) if isinstance(m, N.Linear) else m
            for m in _net("mlp")
        ]
    )
    with pytest.raises(AssertionError):
        assert_matches(nk.kernel(wrong, x).ntk, mc, bias=3 / WIDTH)
