"""nk.kernel against kernels written out in closed form here (theory.md §4.1-4.4), in float64.

Tolerance 1e-12 relative: the same formulas in a different order differ only by round-off.
"""

import math

import pytest
import torch

import ntkit as nk
from ntkit import nn as N


def arccos_relu(K12, K11, K22):
    """Cho & Saul degree-1 arc-cosine kernel T and its derivative kernel Ṫ (theory.md §4.2), written directly."""
    norms = torch.sqrt(K11 * K22)
    theta = torch.acos((K12 / norms).clamp(-1, 1))
    T = norms * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta)) / (2 * math.pi)
    return T, (math.pi - theta) / (2 * math.pi)


def one_hidden_layer_relu(x1, x2, W, b, width, param):
    """K and Θ of Linear(D, width) -> ReLU -> Linear(width, 1), both layers with W_std=W, b_std=b."""
    d = x1.shape[1]
    K = W**2 * x1 @ x2.T / d + b**2
    K11 = W**2 * (x1 * x1).sum(1, keepdim=True) / d + b**2
    K22 = W**2 * (x2 * x2).sum(1, keepdim=True).T / d + b**2
    T, Tdot = arccos_relu(K, K11, K22)
    nngp = W**2 * T + b**2
    if param == "ntk":
        ntk = nngp + W**2 * K * Tdot  # Θ¹ = K¹; Θ² = K² + W² Θ¹ Ṫ
    else:
        # Unnormalised J Jᵀ: d·K⁰·W²Ṫ (first layer, x·x'·Ṫ summed over units) + 1·W²Ṫ (its bias)
        # + width·T (readout weights) + 1 (readout bias); normalised by n = width (the hidden fan-in).
        x_dot = x1 @ x2.T
        ntk = (x_dot * W**2 * Tdot + W**2 * Tdot + width * T + 1) / width
    return nngp, ntk


@pytest.mark.parametrize("param", ["ntk", "standard"])
def test_one_hidden_layer_relu_against_arccos_formula(param):
    x1, x2 = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    width, W, b = 64, 1.3, 0.2
    net = N.Sequential(
        N.Linear(3, width, W_std=W, b_std=b, parameterization=param),
        N.ReLU(),
        N.Linear(width, 1, W_std=W, b_std=b, parameterization=param),
    )
    k = nk.kernel(net, x1, x2)
    nngp, ntk = one_hidden_layer_relu(x1, x2, W, b, width, param)
    torch.testing.assert_close(k.nngp, nngp, rtol=1e-12, atol=0)
    torch.testing.assert_close(k.ntk, ntk, rtol=1e-12, atol=0)
    assert k.sp_width == ((width, 3) if param == "standard" else (0, 0))


def test_deep_relu_network_against_recursion():
    # Depth-L recursion of theory.md §4.1, unrolled by hand.
    x = torch.randn(6, 4, dtype=torch.float64)
    W, b, depth = 1.5, 0.1, 5
    layers = [N.Linear(4, 32, W_std=W, b_std=b)]
    for _ in range(depth - 1):
        layers += [N.ReLU(), N.Linear(32, 32, W_std=W, b_std=b)]
    k = nk.kernel(N.Sequential(*layers, N.ReLU(), N.Linear(32, 1, W_std=W, b_std=b)), x)
    K = W**2 * x @ x.T / 4 + b**2
    theta = K
    for _ in range(depth):
        d = K.diagonal()
        T, Tdot = arccos_relu(K, d[:, None], d[None, :])
        K = W**2 * T + b**2
        theta = K + W**2 * theta * Tdot
    torch.testing.assert_close(k.nngp, K, rtol=1e-12, atol=0)
    torch.testing.assert_close(k.ntk, theta, rtol=1e-12, atol=0)
    torch.testing.assert_close(k.cov1, K.diagonal(), rtol=1e-12, atol=0)


def test_erf_network_against_arcsine_formula():
    x = torch.randn(5, 3, dtype=torch.float64)
    W, b = 1.2, 0.3
    net = N.Sequential(N.Linear(3, 8, W_std=W, b_std=b), N.Erf(), N.Linear(8, 1, W_std=W, b_std=b))
    k = nk.kernel(net, x)
    K = W**2 * x @ x.T / 3 + b**2
    d = K.diagonal()
    prod = (1 + 2 * d[:, None]) * (1 + 2 * d[None, :])
    T = 2 / math.pi * torch.asin(2 * K / torch.sqrt(prod))  # Williams 1997
    Tdot = 4 / math.pi / torch.sqrt(prod - 4 * K**2)
    torch.testing.assert_close(k.nngp, W**2 * T + b**2, rtol=1e-12, atol=0)
    torch.testing.assert_close(k.ntk, W**2 * T + b**2 + W**2 * K * Tdot, rtol=1e-12, atol=0)


def conv_reference(K, k, stride, pads, circular):
    """One spatial axis of a convolution's kernel map, by explicit loops over positions and offsets (full layout
    (N1, N2, S, S')): out[p, p'] = mean_d K_pad[stride·p + d, stride·p' + d]."""
    n = K.shape[-1]
    idx = list(range(-pads[0], n + pads[1]))
    n_out = (len(idx) - k) // stride + 1
    out = torch.zeros(*K.shape[:-2], n_out, n_out, dtype=K.dtype)
    for p in range(n_out):
        for q in range(n_out):
            for d in range(k):
                i, j = idx[stride * p + d], idx[stride * q + d]
                if circular:
                    out[..., p, q] += K[..., i % n, j % n]
                elif 0 <= i < n and 0 <= j < n:
                    out[..., p, q] += K[..., i, j]
    return out / k


@pytest.mark.parametrize(
    ("size", "kernel_size", "stride", "padding", "mode"),
    [
        (7, 3, 1, "same", "zeros"),
        (6, 3, 2, "same", "zeros"),
        (7, 4, 2, "same", "zeros"),
        (7, 3, 2, "valid", "zeros"),
        (6, 3, 1, 2, "zeros"),
        (7, 3, 2, "same", "circular"),
        (5, 3, 1, 1, "circular"),
    ],
)
def test_conv1d_kernel_against_loops_and_module_shapes(size, kernel_size, stride, padding, mode):
    x = torch.randn(3, 2, size, dtype=torch.float64)
    conv = N.Conv1d(2, 5, kernel_size, stride=stride, padding=padding, padding_mode=mode, W_std=1.3, b_std=0.2).double()
    k = nk.kernel(N.Sequential(conv), x, diagonal_spatial=False)
    K0 = torch.einsum("ncs,mct->nmst", x, x) / 2
    pads = (
        (0, 0)
        if padding == "valid"
        else (padding, padding)
        if isinstance(padding, int)
        else ((t := max((-(-size // stride) - 1) * stride + kernel_size - size, 0)) // 2, t - t // 2)
    )
    expected = 1.3**2 * conv_reference(K0, kernel_size, stride, pads, mode == "circular") + 0.2**2
    torch.testing.assert_close(k.nngp, expected, rtol=1e-12, atol=1e-14)
    # The finite module's output has the spatial size the kernel describes; "same" gives ceil(size / stride).
    assert conv(x).shape[-1] == k.spatial_shape[0] == expected.shape[-1]
    if padding == "same":
        assert k.spatial_shape[0] == -(-size // stride)
    # The diagonal layout is the diagonal of the full one.
    kd = nk.kernel(N.Sequential(conv), x, diagonal_spatial=True)
    torch.testing.assert_close(kd.nngp, k.nngp.diagonal(dim1=-2, dim2=-1), rtol=1e-12, atol=1e-14)


def test_conv2d_flatten_same_in_both_layouts():
    x = torch.randn(4, 3, 5, 6, dtype=torch.float64)
    net = N.Sequential(
        N.Conv2d(3, 4, 3, stride=2, W_std=1.4, b_std=0.1),
        N.ReLU(),
        N.Conv2d(4, 4, (2, 3), padding="valid"),
        N.ReLU(),
        N.Flatten(),
        N.Linear(4 * 2 * 1, 1),
    )
    diagonal, full = nk.kernel(net, x), nk.kernel(net, x, diagonal_spatial=False)
    torch.testing.assert_close(diagonal.nngp, full.nngp, rtol=1e-12, atol=0)
    torch.testing.assert_close(diagonal.ntk, full.ntk, rtol=1e-12, atol=0)


def test_global_avg_pool_is_mean_of_full_covariance():
    # One linear conv then pooling: K = mean over all position pairs of the conv layer's kernel.
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    conv = N.Conv2d(2, 3, 1, W_std=1.0, b_std=0.0)
    k_conv = nk.kernel(N.Sequential(conv), x, diagonal_spatial=False)
    k_pool = nk.kernel(N.Sequential(conv, N.GlobalAvgPool()), x)
    torch.testing.assert_close(k_pool.nngp, k_conv.nngp.mean(dim=(2, 3, 4, 5)), rtol=1e-12, atol=0)
    # ... which is the kernel of the channel means: (1/C) Σ_c mean_s x · mean_s' x'.
    m = x.mean(dim=(2, 3))
    torch.testing.assert_close(k_pool.nngp, m @ m.T / 2, rtol=1e-12, atol=0)


def test_layer_norm_on_input_is_normalised_gram():
    # On the (deterministic) input LayerNorm is exact: the Gram matrix of the normalised inputs.
    x = torch.randn(5, 7, dtype=torch.float64) + 0.5
    net = N.Sequential(N.LayerNorm(7, eps=0.0), N.Linear(7, 1, W_std=1.0, b_std=0.0))
    y = N.LayerNorm(7, eps=0.0)(x)
    torch.testing.assert_close(nk.kernel(net, x).nngp, y @ y.T / 7, rtol=1e-12, atol=1e-14)


def test_relu_after_relu_is_relu():
    # relu∘relu = relu: the quadrature path for two activations in a row must give the closed form. At ρ = 1
    # (the diagonal) the angle φ = arccos ρ is only known to √eps ≈ 1e-8, hence the tolerance.
    x = torch.randn(5, 3, dtype=torch.float64)
    one = N.Sequential(N.Linear(3, 8, b_std=0.2), N.ReLU(), N.Linear(8, 1))
    two = N.Sequential(N.Linear(3, 8, b_std=0.2), N.ReLU(), N.ReLU(), N.Linear(8, 1))
    a, b = nk.kernel(one, x), nk.kernel(two, x)
    torch.testing.assert_close(b.nngp, a.nngp, rtol=1e-8, atol=0)
    torch.testing.assert_close(b.ntk, a.ntk, rtol=1e-8, atol=0)


def test_residual_activation_cross_term():
    # x + relu(x) for Gaussian x (var v1, v2, cov c): E[(u + relu u)(v + relu v)] = c + c/2 + c/2 + T_relu
    # (Stein: E[u relu(v)] = c P(v > 0) = c/2), and E[(1 + 1{u>0})(1 + 1{v>0})] = 1 + 1/2 + 1/2 + Ṫ_relu.
    x = torch.randn(5, 3, dtype=torch.float64)
    net = N.Sequential(N.Linear(3, 8, W_std=1.2, b_std=0.3), N.Residual(N.ReLU()), N.Linear(8, 1, W_std=1.0, b_std=0.0))
    k = nk.kernel(net, x)
    K = 1.44 * x @ x.T / 3 + 0.09
    d = K.diagonal()
    T, Tdot = arccos_relu(K, d[:, None], d[None, :])
    torch.testing.assert_close(k.nngp, 2 * K + T, rtol=1e-10, atol=0)
    torch.testing.assert_close(k.ntk, 2 * K + T + K * (2 + Tdot), rtol=1e-10, atol=0)
