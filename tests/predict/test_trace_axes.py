"""gradient_descent_mse and gradient_descent on outputs with spatial axes, ``trace_axes`` (issue 13, item 7).

References:
- an explicit torch training loop (torch.optim.SGD on MSELoss, float64) of a convolutional readout over fixed
  random features: outputs (N, C, H, W), linear in its parameters, so the loop is exactly the linearized dynamics
  and its NTK is exactly Θ_s ⊗ I over the channels (checked below from the dense autograd Jacobian). Tolerance
  1e-9 relative, as tests/predict/test_mse.py: round-off grows like t·cond(Θ)·eps, any wrong factor or a wrong
  ordering of positions is an O(1) error;
- the closed form evaluated densely in float64 (matrix powers of the (N·C·H·W)² kernel Θ ⊗ I, no eigenbasis) for
  the infinite-width NTK of a conv network from nk.kernel(..., diagonal_spatial=False); tolerance 1e-10;
- neural-tangents 0.6.5's predict.gradient_descent_mse(..., trace_axes=(-1,)) (channels last) on the same
  kernel, float64 values stored in tests/nt_reference (its flow at lr = ntkit's 2·lr, docs/predict.md);
  tolerance 1e-10 (both are float64 eigendecompositions of the same matrix).
"""

import pytest
import torch
from predict_helpers import rel, sgd_loop
from torch import nn

import ntkit as nk
from nt_reference import load
from ntkit import nn as N
from ntkit.errors import ShapeError
from reference import dense_ntk

N_TRAIN, N_TEST, C_IN, C, H, W, P = 5, 3, 2, 3, 4, 3, 6
STEPS = (1, 10, 200)


class ConvReadout(nn.Module):
    """f(x) = conv(φ(x)): a 3x3 convolution (P -> C channels, "same" padding, bias) of fixed random features
    φ(x) = cos(conv_φ(x) + b_φ) (N, P, H, W). Linear in its parameters; its NTK is Θ_s ⊗ I over channels."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(C_IN, P, 3, padding=1)
        self.features.requires_grad_(False)
        self.readout = nn.Conv2d(P, C, 3, padding=1)

    def forward(self, x):
        return self.readout(torch.cos(2 * self.features(x)))


def spatial_kernel(model, x1, x2):
    """Θ_s (N1, N2, H, H', W, W') from the dense autograd Jacobian (tests/reference.py), after checking that the
    full NTK is Θ_s ⊗ I over channels."""
    full = dense_ntk(model, x1, x2, trace_outputs=False)  # (N1, N2, C·H·W, C·H·W)
    full = full.reshape(x1.shape[0], x2.shape[0], C, H, W, C, H, W)
    eye = torch.eye(C, dtype=full.dtype)
    per_channel = full[:, :, 0, :, :, 0]  # (N1, N2, H, W, H', W')
    torch.testing.assert_close(full, torch.einsum("nmhwij,ac->nmahwcij", per_channel, eye), rtol=0, atol=1e-12)
    return per_channel.permute(0, 1, 2, 4, 3, 5)


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = ConvReadout().double()
    x = torch.randn(N_TRAIN + N_TEST, C_IN, H, W, dtype=torch.float64)
    y = torch.randn(N_TRAIN, C, H, W, dtype=torch.float64)
    k_train = spatial_kernel(model, x[:N_TRAIN], x[:N_TRAIN])
    k_test = spatial_kernel(model, x[N_TRAIN:], x[:N_TRAIN])
    return model, x, y, k_train, k_test


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("trace_axes", [(1,), 1, (-3,)])
def test_mse_matches_sgd_loop(problem, momentum, trace_axes):
    model, x, y, k_train, k_test = problem
    model = ConvReadout().double()
    model.load_state_dict(problem[0].state_dict())
    p = nk.predict.gradient_descent_mse(k_train, y, 1.0, momentum=momentum, trace_axes=trace_axes)
    lam = float(p._kernels.eigen("ntk").values[-1])
    lr = 0.5 * (1 + momentum) * y.numel() / lam  # half the largest stable step (s = 2/(N·C·H·W))
    p = nk.predict.gradient_descent_mse(k_train, y, lr, momentum=momentum, trace_axes=trace_axes)
    with torch.no_grad():
        f0 = model(x)
    loop = sgd_loop(model, x[:N_TRAIN], y, nn.MSELoss(), lr, max(STEPS), momentum=momentum, record=STEPS, x_record=x)
    train, test = p(torch.tensor(STEPS), f0[:N_TRAIN], f0[N_TRAIN:], k_test)
    assert train.shape == (len(STEPS), N_TRAIN, C, H, W) and test.shape == (len(STEPS), N_TEST, C, H, W)
    for i, step in enumerate(STEPS):
        assert rel(train[i], loop[step][0][:N_TRAIN]) < 1e-9, step
        assert rel(test[i], loop[step][0][N_TRAIN:]) < 1e-9, step
    # the loop has not converged at step 1: a wrong position order or factor would show there already
    assert rel(loop[1][0][:N_TRAIN], loop[200][0][:N_TRAIN]) > 1e-2


def test_gradient_descent_matches_sgd_loop(problem):
    """gradient_descent (any loss, exact steps) with MSELoss on the same problem: the same loop."""
    model, x, y, k_train, k_test = problem
    model = ConvReadout().double()
    model.load_state_dict(problem[0].state_dict())
    lr = 0.5
    with torch.no_grad():
        f0 = model(x)
    p = nk.predict.gradient_descent(nn.MSELoss(), k_train, y, lr, momentum=0.5, trace_axes=(1,))
    loop = sgd_loop(model, x[:N_TRAIN], y, nn.MSELoss(), lr, 10, momentum=0.5, record=(10,), x_record=x)
    train, test = p(10, f0[:N_TRAIN], f0[N_TRAIN:], k_test)
    assert rel(train, loop[10][0][:N_TRAIN]) < 1e-9
    assert rel(test, loop[10][0][N_TRAIN:]) < 1e-9


class ColumnReadout(nn.Module):
    """f(x)[c, h, w] = Σ_p,d φ(x)[p, h + d] θ[(c, w), p, d]: a 1-d convolution along the height of fixed features
    of the column means, with separate weights for each (channel, column) output. Linear in θ; its NTK is
    Θ_h ⊗ I over channels and columns."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv1d(C_IN, P, 3, padding=1).requires_grad_(False)
        self.readout = nn.Conv1d(P, C * W, 3, padding=1)

    def forward(self, x):
        out = self.readout(torch.cos(2 * self.features(x.mean(-1))))  # (N, C·W, H)
        return out.reshape(-1, C, W, H).transpose(2, 3)


def test_traced_width_too(problem):
    """trace_axes=(1, -1): channels and columns traced, the kernel (N, N, H, H'); against the loop."""
    torch.manual_seed(1)
    model = ColumnReadout().double()
    x, y = problem[1], problem[2]
    full = dense_ntk(model, x, x[:N_TRAIN], trace_outputs=False).reshape(-1, N_TRAIN, C, H, W, C, H, W)
    k = full[:, :, 0, :, 0, 0, :, 0]  # (N1, N2, H, H') at channel 0, column 0
    expected = torch.einsum("nmhi,ac,wj->nmahwcij", k, torch.eye(C, dtype=k.dtype), torch.eye(W, dtype=k.dtype))
    torch.testing.assert_close(full, expected, rtol=0, atol=1e-12)  # the premise: Θ ⊗ I over C and W
    with torch.no_grad():
        f0 = model(x)
    p = nk.predict.gradient_descent_mse(k[:N_TRAIN], y, 0.3, trace_axes=(1, -1))
    loop = sgd_loop(model, x[:N_TRAIN], y, nn.MSELoss(), 0.3, 10, record=(10,), x_record=x)
    train, test = p(10, f0[:N_TRAIN], f0[N_TRAIN:], k[N_TRAIN:])
    assert rel(train, loop[10][0][:N_TRAIN]) < 1e-9
    assert rel(test, loop[10][0][N_TRAIN:]) < 1e-9
    assert rel(loop[10][0][:N_TRAIN], f0[:N_TRAIN]) > 1e-2  # it moved


def conv_net():
    return N.Sequential(N.Conv2d(C_IN, 8, 3, W_std=1.5, b_std=0.1), N.ReLU(), N.Conv2d(8, C, 3, W_std=1.5, b_std=0.1))


def test_infinite_width_conv_matches_dense_closed_form():
    """The infinite-width NTK of a conv network without pooling (full spatial layout) with channels traced, against
    r_t = (I − cΘ)^t r_0 with Θ ⊗ I_C as a dense (N·C·H·W)² matrix (rows in y.reshape(-1)'s order)."""
    torch.manual_seed(2)
    x = torch.randn(N_TRAIN + N_TEST, C_IN, H, W, dtype=torch.float64)
    y = torch.randn(N_TRAIN, C, H, W, dtype=torch.float64)
    f0 = 0.1 * torch.randn(N_TRAIN + N_TEST, C, H, W, dtype=torch.float64)
    ntk = nk.kernel(conv_net(), x, diagonal_spatial=False).ntk  # (N, N, H, H', W, W')
    dense = torch.einsum("nmhiwj,ac->nahwmcij", ntk, torch.eye(C, dtype=ntk.dtype))
    dense = dense.reshape(N_TRAIN + N_TEST, C * H * W, N_TRAIN + N_TEST, C * H * W)
    d = N_TRAIN * C * H * W
    k_tt = dense[:N_TRAIN, :, :N_TRAIN].reshape(d, d)
    k_st = dense[N_TRAIN:, :, :N_TRAIN].reshape(-1, d)
    lr, t = 0.4, 7
    c = lr * 2 / y.numel()
    r0 = (f0[:N_TRAIN] - y).reshape(-1)
    step = torch.linalg.matrix_power(torch.eye(d, dtype=torch.float64) - c * k_tt, t)
    train_ref = y.reshape(-1) + step @ r0
    test_ref = f0[N_TRAIN:].reshape(-1) - k_st @ torch.linalg.solve(k_tt, r0 - step @ r0)
    p = nk.predict.gradient_descent_mse(ntk[:N_TRAIN, :N_TRAIN], y, lr, trace_axes=(1,))
    train, test = p(t, f0[:N_TRAIN], f0[N_TRAIN:], ntk[N_TRAIN:, :N_TRAIN])
    assert rel(train.reshape(-1), train_ref) < 1e-10
    assert rel(test.reshape(-1), test_ref) < 1e-10


def test_matches_neural_tangents():
    """neural-tangents' gradient flow with channels traced (its trace_axes=(-1,), channels last) on the same
    infinite-width NTK: ntkit's continuous=True at learning_rate = lr/2 (docs/predict.md)."""
    case = load("predict_trace_axes_conv")
    ntk = nk.kernel(conv_net(), case["x1"], diagonal_spatial=False).ntk
    torch.testing.assert_close(ntk, case["ntk"], rtol=1e-10, atol=1e-12)  # the same kernel in both
    n = case["y"].shape[0]
    p = nk.predict.gradient_descent_mse(ntk[:n, :n], case["y"], float(case["lr"]) / 2, continuous=True, trace_axes=1)
    train, test = p(float(case["t"]), case["fx0"][:n], case["fx0"][n:], ntk[n:, :n])
    torch.testing.assert_close(train, case["train"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(test, case["test"], rtol=1e-10, atol=1e-12)


def test_diagonal_layout_is_refused_clearly():
    """The default (diagonal) spatial layout lacks the covariances between positions that training couples: a
    ShapeError names the shape expected (the full layout)."""
    x = torch.randn(N_TRAIN, C_IN, H, W, dtype=torch.float64)
    ntk = nk.kernel(conv_net(), x).ntk  # (N, N, H, W)
    y = torch.randn(N_TRAIN, C, H, W, dtype=torch.float64)
    expected = rf"must be \({N_TRAIN}, {N_TRAIN}, {H}, {H}, {W}, {W}\).*diagonal_spatial=False"
    with pytest.raises(ShapeError, match=expected):
        nk.predict.gradient_descent_mse(ntk, y, 1.0, trace_axes=(1,))
