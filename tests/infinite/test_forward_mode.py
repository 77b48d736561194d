"""Forward-mode derivatives of nk.kernel (issue 13, bug 2): torch.func.jvp / jacfwd / hessian and
torch.autograd.forward_ad agree with reverse mode (jacrev) and with central differences, in the inputs and in
tensor W_std / b_std, or are refused with an ntkit error; never a silent wrong tangent.

References: reverse mode (torch.func.jacrev, checked against gradcheck elsewhere) and central differences in
float64 with step 1e-6. Both are independent of the forward-mode code path. Tolerances: jacfwd and jacrev
compute the same derivative by different chain-rule orders, so they agree to round-off (rtol 1e-9); central
differences have truncation error O(h²·f''') and round-off O(eps·f/h) ≈ 1e-10 relative, so rtol 1e-6.
"""

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import ntkit as nk
from ntkit import nn as N
from ntkit.errors import UnsupportedError


def relu_cnn():
    return N.Sequential(
        N.Conv2d(1, 4, 3, W_std=1.4, b_std=0.1),
        N.ReLU(),
        N.Conv2d(4, 4, 3),
        N.ReLU(),
        N.GlobalAvgPool(),
        N.Linear(4, 1),
    )


def erf_mlp():
    return N.Sequential(N.Linear(3, 8, W_std=1.3, b_std=0.2), N.Erf(), N.Linear(8, 8), N.GELU(), N.Linear(8, 1))


def standard_mlp():
    return N.Sequential(
        N.Linear(3, 8, W_std=1.3, b_std=0.2, parameterization="standard"),
        N.ReLU(),
        N.Linear(8, 1, parameterization="standard"),
    )


def layer_norm_net():
    return N.Sequential(N.Linear(3, 8, b_std=0.3), N.ReLU(), N.LayerNorm(8), N.Linear(8, 8), N.Sin(), N.Linear(8, 1))


NETS = {
    "relu_cnn": (relu_cnn, (2, 1, 4, 4)),
    "erf_mlp": (erf_mlp, (4, 3)),
    "standard_mlp": (standard_mlp, (4, 3)),
    "layer_norm": (layer_norm_net, (4, 3)),
}


def _central_difference(f, x, v, h=1e-6):
    return (f(x + h * v) - f(x - h * v)) / (2 * h)


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_jacfwd_equals_jacrev_and_central_differences_in_the_inputs(name, get):
    make, shape = NETS[name]
    torch.manual_seed(0)
    net = make()
    x = torch.randn(shape, dtype=torch.float64)

    def f(x):
        return getattr(nk.kernel(net, x, get=get), get)

    forward = torch.func.jacfwd(f)(x)
    reverse = torch.func.jacrev(f)(x)
    assert forward.abs().max() > 0
    torch.testing.assert_close(forward, reverse, rtol=1e-9, atol=1e-12)
    v = torch.randn_like(x)
    _, tangent = torch.func.jvp(f, (x,), (v,))
    torch.testing.assert_close(tangent, _central_difference(f, x, v), rtol=1e-6, atol=1e-9)


def test_forward_ad_dual_tensors_match_central_differences():
    """The issue's case: torch.autograd.forward_ad on a ReLU CNN gave 0.336 where the derivative is 0.480."""
    torch.manual_seed(1)
    net = relu_cnn()
    x = torch.randn(3, 1, 5, 5, dtype=torch.float64)
    v = torch.randn_like(x)

    def f(x):
        return nk.kernel(net, x).ntk.sum()

    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(f(fwAD.make_dual(x, v))).tangent
    assert tangent is not None
    torch.testing.assert_close(tangent, _central_difference(f, x, v), rtol=1e-6, atol=1e-9)


def test_jacfwd_in_tensor_weight_and_bias_std():
    torch.manual_seed(2)
    x1, x2 = torch.randn(3, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)

    def f(wb):
        W, b = wb[0], wb[1]
        net = N.Sequential(N.Linear(3, 8, W_std=W, b_std=b), N.Erf(), N.Linear(8, 1, W_std=W, b_std=b))
        return nk.kernel(net, x1, x2).ntk

    wb = torch.tensor([1.4, 0.3], dtype=torch.float64)
    torch.testing.assert_close(
        torch.func.jacfwd(f, randomness="same")(wb), torch.func.jacrev(f)(wb), rtol=1e-9, atol=1e-12
    )
    e = torch.tensor([0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(torch.func.jvp(f, (wb,), (e,))[1], _central_difference(f, wb, e), rtol=1e-6, atol=1e-9)


def test_hessian_in_the_inputs_matches_differences_of_gradients():
    """torch.func.hessian = jacfwd(jacrev): checked against central differences of the reverse-mode gradient."""
    torch.manual_seed(3)
    net = erf_mlp()
    x = torch.randn(2, 3, dtype=torch.float64)

    def f(x):
        return nk.kernel(net, x).ntk.sum()

    hessian = torch.func.hessian(f)(x).reshape(x.numel(), x.numel())
    grad = torch.func.grad(f)
    columns = [_central_difference(grad, x, e.reshape(x.shape), h=1e-5).reshape(-1) for e in torch.eye(x.numel())]
    torch.testing.assert_close(hessian, torch.stack(columns, 1), rtol=1e-5, atol=1e-8)


def test_forward_mode_through_autograd_derivatives_is_refused():
    """Elementwise(fn) without a derivative differentiates fn by reverse-mode autograd inside the kernel; forward
    mode cannot see through that, so it is refused instead of returning a wrong tangent."""
    net = N.Sequential(N.Linear(3, 8), N.Elementwise(torch.tanh), N.Linear(8, 1))
    x = torch.randn(3, 3, dtype=torch.float64)
    with pytest.raises(UnsupportedError, match="forward-mode"):
        torch.func.jacfwd(lambda x: nk.kernel(net, x).ntk)(x)
