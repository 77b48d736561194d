"""Errors of linearize/taylor_expand: each bad input or unsupported model gets an ntkit exception saying what
to do, and each documented workaround is checked to work (against the dense float64 Jacobian, 1e-10)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from linearize_cases import dense_linearization, mlp, random_delta, set_delta
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils.parametrizations import weight_norm

import ntkit as nk
from ntkit.errors import BatchCouplingError, InvalidArgumentError, ParameterSelectionError, ShapeError, UnsupportedError
from reference import rel_err


def test_batchnorm_and_dropout_in_train_mode_are_rejected():
    with pytest.raises(BatchCouplingError, match=r"model\.eval\(\)"):
        nk.linearize(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
    with pytest.raises(BatchCouplingError, match=r"[Dd]ropout"):
        nk.taylor_expand(nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5)), 2)
    nk.linearize(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).eval())  # fine in eval mode


@pytest.mark.parametrize("degree", [-1, 1.5, True, "2"])
def test_bad_degree(degree):
    with pytest.raises(InvalidArgumentError, match="degree"):
        nk.taylor_expand(mlp(), degree)


def test_bad_method_and_parameter_selection():
    with pytest.raises(InvalidArgumentError, match="method"):
        nk.linearize(mlp(), method="forward")
    with pytest.raises(ParameterSelectionError, match="matches no"):
        nk.linearize(mlp(), ["head.*"])
    with pytest.raises(ParameterSelectionError, match="shape"):
        nk.linearize(mlp(), {"0.weight": torch.zeros(2, 2, dtype=torch.float64)})


def test_bad_inputs():
    lin = nk.linearize(mlp())
    with pytest.raises(InvalidArgumentError, match=r"torch\.Tensor"):
        lin([[0.0] * 5])
    with pytest.raises(UnsupportedError, match=r"float64 but the input is torch\.float32"):
        lin(torch.randn(2, 5))
    with pytest.raises(ShapeError, match="empty"):
        lin(torch.randn(0, 5, dtype=torch.float64))
    with pytest.raises(UnsupportedError, match="complex"):
        lin(torch.randn(2, 5, dtype=torch.complex128))


def test_non_tensor_output():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 1)

        def forward(self, x):
            return self.a(x), self.b(x)

    for method in ("jvp", "double_vjp"):
        with pytest.raises(UnsupportedError, match="returns one tensor"):
            nk.linearize(TwoHeads(), method=method)(torch.randn(2, 3))


class ExpNoJvp(torch.autograd.Function):
    """exp with a backward but no jvp (torch.func style)."""

    @staticmethod
    def forward(x):
        return x.exp()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * y


class ExpLegacy(torch.autograd.Function):
    """exp as an old-style Function (forward takes ctx), which torch.func transforms refuse."""

    @staticmethod
    def forward(ctx, x):
        y = x.exp()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * y


class WithFunction(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn, self.inner, self.outer = fn, nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.outer(self.fn.apply(0.3 * self.inner(x)))


def assert_double_vjp_is_the_fix(model, x):
    """jvp fails with an error naming method='double_vjp', and double_vjp then matches the dense reference."""
    with pytest.raises(UnsupportedError, match="double_vjp"):
        nk.linearize(model)(x)
    lin = nk.linearize(model, method="double_vjp")
    delta = random_delta(lin)
    set_delta(lin, delta)
    assert rel_err(lin(x).detach(), dense_linearization(model, x, delta)) < 1e-10


@pytest.mark.parametrize("fn", [ExpNoJvp, ExpLegacy])
def test_custom_function_without_jvp(fn):
    assert_double_vjp_is_the_fix(WithFunction(fn).double(), torch.randn(3, 4, dtype=torch.float64))


def test_operation_without_forward_ad_weight_norm():
    """torch's weight_norm kernel has no forward-mode rule: the generic error names double_vjp."""
    model = nn.Sequential(weight_norm(nn.Linear(3, 4)), nn.Tanh(), nn.Linear(4, 2)).double()
    assert_double_vjp_is_the_fix(model, torch.randn(5, 3, dtype=torch.float64))


def test_double_vjp_under_inference_mode():
    lin = nk.linearize(mlp(), method="double_vjp")
    with torch.inference_mode(), pytest.raises(UnsupportedError, match="no_grad"):
        lin(torch.randn(2, 5, dtype=torch.float64))


@contextlib.contextmanager
def fastpath_disabled():
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


def test_attention_errors_and_their_workarounds():
    """A transformer layer in eval mode hits two fused kernels without forward-mode derivatives: PyTorch's
    attention fast path, then the fused scaled-dot-product attention. Each error names its fix; with both
    fixes applied the jvp path is exact. double_vjp avoids the fast path but needs the math backend too."""
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True).double().eval()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    lin = nk.linearize(layer)
    with pytest.raises(UnsupportedError, match="set_fastpath_enabled"):
        lin(x)
    with fastpath_disabled():
        with pytest.raises(UnsupportedError, match=r"SDPBackend\.MATH"):
            lin(x)
        with pytest.raises(UnsupportedError, match=r"SDPBackend\.MATH"):
            nk.linearize(layer, method="double_vjp")(x)
        delta = random_delta(lin)
        set_delta(lin, delta)
        with sdpa_kernel(SDPBackend.MATH):
            expected = dense_linearization(layer, x, delta)
            assert rel_err(lin(x).detach(), expected) < 1e-10
            dvjp = nk.linearize(layer, method="double_vjp")
            dvjp.load_state_dict(lin.state_dict())
            assert rel_err(dvjp(x).detach(), expected) < 1e-10
