"""Networks with several inputs or outputs (issue 13, item 5): ``FanOut``, ``Parallel(..., fan_in=None)``,
``FanInSum`` / ``FanInProduct`` / ``FanInConcat``, a tuple of inputs to ``nk.kernel``, one Kernel per output.

References:
- neural-tangents 0.6.5's float64 kernels of the same architectures (``stax.FanOut``, ``stax.parallel``,
  ``FanInSum``, ``FanInConcat``, a list of inputs, a list of outputs), stored in tests/nt_reference; rtol 1e-8
  (neural-tangents' arc-cosine loses √eps on the batch diagonal, see tests/nn/test_conv_local.py);
- Monte Carlo over the finite networks (both parameterizations): for every output, |analytic − MC mean| <= 4
  standard errors + 3/width of the kernel's scale (tests/kernel_mc.py: a 4-σ band per entry and the O(1/width)
  bias of the expected finite kernel, theory.md §5.2), so a missing branch, a wrong channel weight or a
  cross-term error (all O(1) of the kernel) fails.
"""

import pytest
import torch

import ntkit as nk
from kernel_mc import assert_matches, mc_outputs
from nt_reference import load
from ntkit import nn as N
from ntkit.errors import InvalidArgumentError, ShapeError, UnsupportedError

WIDTH = 64


def dense_conv_branches(width: int = 6, out: int = 1, parameterization: str = "ntk") -> N.Sequential:
    """FanOut(2) -> Parallel(Dense on channels (a 1x1 convolution), a conv branch) -> FanInSum -> Erf -> pool."""
    sp = {"parameterization": parameterization}
    return N.Sequential(
        N.FanOut(2),
        N.Parallel(
            N.Conv2d(2, width, 1, W_std=1.3, b_std=0.2, **sp),
            N.Sequential(
                N.Conv2d(2, width, 3, W_std=1.4, b_std=0.1, **sp),
                N.ReLU(),
                N.Conv2d(width, width, 2, W_std=1.2, b_std=None, **sp),
            ),
            fan_in=None,
        ),
        N.FanInSum(),
        N.Erf(),
        N.GlobalAvgPool(),
        N.Linear(width, out, b_std=0.1, **sp),
    )


def two_inputs(width: int = 4, out: int = 1, parameterization: str = "ntk") -> N.Sequential:
    """Two inputs, (N, 5) and (N, 2, 3, 4): one branch each (``width`` and 1.5 ``width`` channels: the
    concatenation weights them by their channels), concatenated along channels, a readout."""
    sp = {"parameterization": parameterization}
    wide = width + width // 2
    return N.Sequential(
        N.Parallel(
            N.Sequential(N.Linear(5, width, W_std=1.3, b_std=0.2, **sp), N.ReLU()),
            N.Sequential(N.Conv2d(2, wide, 2, W_std=1.5, b_std=0.1, **sp), N.ReLU(), N.GlobalAvgPool()),
            fan_in=None,
        ),
        N.FanInConcat(),
        N.Linear(width + wide, out, W_std=1.1, b_std=0.1, **sp),
    )


def two_outputs(width: int = 5, out: int = 1, parameterization: str = "ntk") -> N.Sequential:
    """A shared trunk, then two heads left as two outputs."""
    sp = {"parameterization": parameterization}
    return N.Sequential(
        N.Linear(4, width, W_std=1.3, b_std=0.2, **sp),
        N.FanOut(2),
        N.Parallel(
            N.Sequential(N.ReLU(), N.Linear(width, out, W_std=1.2, b_std=0.1, **sp)),
            N.Sequential(N.Erf(), N.Linear(width, out, W_std=0.9, b_std=None, **sp)),
            fan_in=None,
        ),
    )


# ----- neural-tangents ------------------------------------------------------------------------------------------


def test_fan_out_branches_fan_in_sum_match_neural_tangents():
    case = load("branches_dense_conv")
    k = nk.kernel(dense_conv_branches(), case["x1"], case["x2"])
    torch.testing.assert_close(k.nngp, case["nngp"], rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(k.ntk, case["ntk"], rtol=1e-8, atol=1e-12)


def test_two_inputs_match_neural_tangents():
    case = load("two_inputs_concat")
    net = two_inputs()
    k = nk.kernel(net, (case["x1_a"], case["x1_b"]), (case["x2_a"], case["x2_b"]))
    torch.testing.assert_close(k.nngp, case["nngp"], rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(k.ntk, case["ntk"], rtol=1e-8, atol=1e-12)
    # the same network written with a combining Parallel: the same kernel
    combined = N.Sequential(N.Parallel(*net[0].branches, fan_in="concat"), net[2])
    k2 = nk.kernel(combined, [case["x1_a"], case["x1_b"]], [case["x2_a"], case["x2_b"]])
    torch.testing.assert_close(k2.ntk, k.ntk, rtol=1e-14, atol=0)


def test_two_outputs_match_neural_tangents():
    case = load("two_outputs")
    ks = nk.kernels(two_outputs(), case["x1"])
    assert isinstance(ks, tuple) and len(ks) == 2
    for i, k in enumerate(ks):
        torch.testing.assert_close(k.nngp, case["nngp"][i], rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(k.ntk, case["ntk"][i], rtol=1e-8, atol=1e-12)


# ----- finite networks and Monte Carlo --------------------------------------------------------------------------


def test_finite_networks_run():
    """The finite modules: tuples in and out, shapes as the kernels say."""
    x, x_a, x_b = torch.randn(3, 2, 4, 4), torch.randn(3, 5), torch.randn(3, 2, 3, 4)
    assert dense_conv_branches(8, 2)(x).shape == (3, 2)
    assert two_inputs(8, 2)((x_a, x_b)).shape == (3, 2)
    outs = two_outputs(8, 3)(torch.randn(3, 4))
    assert isinstance(outs, tuple) and [o.shape for o in outs] == [(3, 3), (3, 3)]
    copies = N.FanOut(3)(x)
    assert len(copies) == 3 and all(c is x for c in copies)
    assert torch.equal(N.FanInConcat(dim=2)((x, x)), torch.cat([x, x], dim=2))
    assert torch.equal(N.FanInProduct()((x, x + 1)), x * (x + 1))


def assert_outputs_match(make_net, xs, analytic, *, sp_width: int | None = None):
    """Each output's NNGP and NTK against Monte Carlo (module docstring); ``sp_width``: the standard
    parameterization's NTK normaliser n (the MC estimates J Jᵀ, nk.kernel returns J Jᵀ / n)."""
    analytic = analytic if isinstance(analytic, tuple) else (analytic,)
    nngp = mc_outputs(lambda: make_net(WIDTH, 16), xs, 60, ntk=False)
    ntk = mc_outputs(lambda: make_net(WIDTH, 1), xs, 40, ntk=True)
    assert len(nngp) == len(ntk) == len(analytic)
    scale = 1.0 if sp_width is None else 1.0 / sp_width
    for k, k_mc, t_mc in zip(analytic, nngp, ntk, strict=True):
        assert_matches(k.nngp, k_mc, bias=3 / WIDTH)
        assert_matches(k.ntk, (t_mc[0] * scale, t_mc[1] * scale), bias=3 / WIDTH)


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_fan_out_branches_match_monte_carlo(parameterization):
    torch.manual_seed(0)
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    net = dense_conv_branches(WIDTH, 1, parameterization)
    k = nk.kernel(net, x)
    assert k.sp_normalizer() == (WIDTH if parameterization == "standard" else 1)
    assert_outputs_match(lambda w, o: dense_conv_branches(w, o, parameterization), x, k, sp_width=k.sp_normalizer())


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_two_inputs_match_monte_carlo(parameterization):
    torch.manual_seed(1)
    xs = (torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 2, 3, 3, dtype=torch.float64))
    k = nk.kernel(two_inputs(WIDTH, 1, parameterization), xs)
    n = k.sp_normalizer()
    assert n == (WIDTH + WIDTH // 2 + WIDTH if parameterization == "standard" else 1)
    assert_outputs_match(lambda w, o: two_inputs(w, o, parameterization), xs, k, sp_width=n)


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_two_outputs_match_monte_carlo(parameterization):
    torch.manual_seed(2)
    x = torch.randn(3, 4, dtype=torch.float64)
    ks = nk.kernels(two_outputs(WIDTH, 1, parameterization), x)
    assert_outputs_match(lambda w, o: two_outputs(w, o, parameterization), x, ks, sp_width=ks[0].sp_normalizer())


def test_each_output_is_its_own_network():
    """Output i of a FanOut network is the network that keeps only branch i (exactly: the same maps)."""
    x = torch.randn(4, 4, dtype=torch.float64)
    net = two_outputs()
    trunk, heads = net[0], net[2].branches
    for k, head in zip(nk.kernels(net, x), heads, strict=True):
        alone = nk.kernel(N.Sequential(trunk, head), x)
        torch.testing.assert_close(k.nngp, alone.nngp, rtol=1e-14, atol=0)
        torch.testing.assert_close(k.ntk, alone.ntk, rtol=1e-14, atol=0)


def test_tiled_and_differentiable_paths_agree():
    """Several inputs and outputs through the tiled path (small blocks, x2 given and not), and with derivatives
    (the whole-kernel path): the same numbers."""
    torch.manual_seed(3)
    xs = (torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 2, 3, 4, dtype=torch.float64))
    ys = (torch.randn(5, 5, dtype=torch.float64), torch.randn(5, 2, 3, 4, dtype=torch.float64))
    net = N.Sequential(two_inputs(), N.FanOut(2), N.Parallel(N.Identity(), N.Erf(), fan_in=None))
    whole = nk.kernels(net, xs, ys)
    tiled = nk.kernels(net, xs, ys, block_size=2)
    grad_x = tuple(x.clone().requires_grad_(True) for x in xs)
    with_grad = nk.kernels(net, grad_x, ys)
    for a, b, c in zip(whole, tiled, with_grad, strict=True):
        torch.testing.assert_close(b.ntk, a.ntk, rtol=1e-13, atol=0)
        torch.testing.assert_close(c.ntk.detach(), a.ntk, rtol=1e-13, atol=0)
        torch.testing.assert_close(b.cov2, a.cov2, rtol=1e-13, atol=0)
    sym = nk.kernels(net, xs, block_size=3)
    same = nk.kernels(net, xs, tuple(x.clone() for x in xs))  # equal inputs: the symmetric path
    for a, b in zip(sym, same, strict=True):
        assert a.x1_is_x2 and b.x1_is_x2
        torch.testing.assert_close(a.nngp, b.nngp, rtol=1e-14, atol=0)
        torch.testing.assert_close(a.nngp, a.nngp.T, rtol=0, atol=0)
    with_grad[0].ntk.sum().backward()
    assert grad_x[0].grad is not None and grad_x[1].grad is not None


# ----- bad input ------------------------------------------------------------------------------------------------


def test_bad_inputs_are_refused_clearly():
    x_a, x_b = torch.randn(3, 5), torch.randn(3, 2, 3, 4)
    net = two_inputs()
    with pytest.raises(ShapeError, match="2 branches but receives 3 tensors"):
        nk.kernel(net, (x_a, x_b, x_b))
    with pytest.raises(ShapeError, match="2 branches but receives 3 tensors"):
        net((x_a, x_b, x_b))
    with pytest.raises(ShapeError, match="FanInConcat joins several tensors"):
        nk.kernel(N.Sequential(N.Linear(5, 4), N.FanInConcat()), x_a)
    with pytest.raises(ShapeError, match=r"Linear .* takes one input, but the layers before it give 2"):
        nk.kernel(N.Linear(5, 4), (x_a, x_a))
    with pytest.raises(ShapeError, match=r"Linear .* takes one input, but the layers before it give 2"):
        nk.kernel(torch.nn.Sequential(N.FanOut(2), torch.nn.Linear(5, 1)), x_a)
    with pytest.raises(ShapeError, match="same number of examples"):
        nk.kernel(net, (x_a, x_b[:2]))
    with pytest.raises(ShapeError, match="x1 has 2 tensors but x2 has 1"):
        nk.kernel(net, (x_a, x_b), (x_a,))
    with pytest.raises(InvalidArgumentError, match="x1 is a tuple but x2 is a tensor"):
        nk.kernel(net, (x_a, x_b), x_a)
    with pytest.raises(ShapeError, match=r"x1\[1\] and x2\[1\] must have the same per-example shape"):
        nk.kernel(net, (x_a, x_b), (x_a, x_b[:, :1]))
    with pytest.raises(ShapeError, match=r"ReLU .* takes one input, but the layers before it give 2 tensors"):
        nk.kernel(N.Sequential(N.FanOut(2), N.Parallel(N.Linear(5, 1), N.Linear(5, 1), fan_in=None), N.ReLU()), x_a)
    with pytest.raises(ShapeError, match=r"FanOut.* gives 2 outputs where one is expected"):  # a branch with two
        nk.kernel(N.Parallel(N.FanOut(2), N.Identity()), x_a)
    with pytest.raises(ShapeError, match=r"the network has 2 outputs .* use nk.kernels"):
        nk.kernel(two_outputs(), torch.randn(3, 4))
    assert len(nk.kernels(two_inputs(), (x_a, x_b))) == 1  # one output: a 1-tuple
    with pytest.raises(InvalidArgumentError, match=r"unexpected argument.*blocksize"):
        nk.kernels(net, (x_a, x_b), blocksize=2)
    with pytest.raises(UnsupportedError, match="correlated in a way ntkit cannot compute"):  # x_a + x_b: cross terms
        nk.kernel(N.FanInSum(), (x_a, x_a + 1))
    with pytest.raises(UnsupportedError, match="mask_constant"):
        nk.kernel(N.Sequential(N.FanOut(2), N.FanInSum()), x_b, mask_constant=0.0)
    with pytest.raises(InvalidArgumentError, match="fan_in must be one of"):
        N.Parallel(N.Identity(), fan_in="max")
    with pytest.raises(InvalidArgumentError, match="FanOut"):
        N.FanOut(0)


def test_empirical_kernels_refuse_several_inputs_and_outputs():
    """nk.empirical_ntk / empirical_nngp take one input tensor and one output tensor: a tuple of inputs, or a
    network that returns several outputs, is refused with what to do."""
    x_a, x_b = torch.randn(3, 5), torch.randn(3, 2, 3, 4)
    with pytest.raises(InvalidArgumentError, match=r"Only nk\.kernel takes a tuple of inputs"):
        nk.empirical_ntk(two_inputs(), (x_a, x_b))
    with pytest.raises(InvalidArgumentError, match=r"Only nk\.kernel takes a tuple of inputs"):
        nk.empirical_nngp(two_inputs(), (x_a, x_b))
    with pytest.raises(UnsupportedError, match="returned tuple"):
        nk.empirical_ntk(two_outputs(), torch.randn(3, 4))


def test_ensemble_prediction_with_two_inputs():
    """gradient_descent_mse_ensemble passes tuples of inputs to kernel_fn: its converged mean equals the NTK
    posterior of gp_inference on the kernels computed directly; a tuple of kernels (several outputs) is refused."""
    torch.manual_seed(4)
    x_train = (torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 2, 3, 4, dtype=torch.float64))
    x_test = (torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 2, 3, 4, dtype=torch.float64))
    y = torch.randn(6, 2, dtype=torch.float64)
    net = two_inputs()
    predict = nk.predict.gradient_descent_mse_ensemble(lambda a, b: nk.kernel(net, a, b), x_train, y)
    k_train, k_test = nk.kernel(net, x_train), nk.kernel(net, x_test, x_train)
    expected = nk.predict.gp_inference(k_train, y)("ntk", k_test)
    torch.testing.assert_close(predict(None, x_test), expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(UnsupportedError, match=r"a tuple of 2 .* nk.kernels"):
        nk.predict.gradient_descent_mse_ensemble(
            lambda a, b: nk.kernels(two_outputs(), a, b), torch.randn(4, 4), y[:4]
        )(None)
