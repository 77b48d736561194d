"""nk.kernel's fast path for dense layers and ReLU-family activations (``ntkit.infinite.dense_chain``).

The fast path must give the generic path's numbers (the layers' kernel maps, tile by tile): both compute the
same formulas, in an order that differs only in the association of a few products, so they agree to a few
ulps. 1e-12 relative (to the largest entry) in float64 leaves room for that round-off amplified through four
layers, and 1e-5 in float32 (about 100 ulps) the same; a wrong constant, a missed bias or a misplaced
broadcast changes entries by far more. The generic path is forced by making the plan find no chain.
"""

import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit import nn as N
from ntkit.experiments import mlp
from ntkit.infinite import planning


def deep(act=N.ReLU, parameterization="ntk", b_std=0.1, d=5, width=16):
    def linear(i, o):
        return N.Linear(i, o, W_std=1.4, b_std=b_std, parameterization=parameterization)

    hidden = [act(), linear(width, width), act(), N.Identity(), linear(width, width), act()]
    return N.Sequential(linear(d, width), *hidden, linear(width, 2))


def generic(model, x1, x2=None, **kw):
    """nk.kernel through the layers' kernel maps."""
    original = planning.linked_chain
    planning.linked_chain = lambda *args: None
    try:
        return nk.kernel(model, x1, x2, **kw)
    finally:
        planning.linked_chain = original


def uses_chain(model, x1, x2=None):
    p = planning.plan(model, x1, x2, dtype=x1.dtype, ntk=True, diagonal_spatial=None)
    return p.chain is not None


def inputs(dtype=torch.float64, d=5):
    """x1 with a duplicate, a zero row and a scaled copy; x2 sharing two examples with x1."""
    x1 = torch.randn(40, d, dtype=dtype)
    x1[7] = x1[3]
    x1[11] = 0.0
    x1[20] = 3.0 * x1[5]
    x2 = torch.randn(23, d, dtype=dtype)
    x2[4] = x1[9]
    x2[19] = x1[30]
    return x1, x2


def assert_same(fast, slow, rtol):
    for name in ("nngp", "ntk", "cov"):
        a, b = getattr(fast, name), getattr(slow, name)
        if b is None:
            assert a is None
            continue
        assert a.shape == b.shape and a.dtype == b.dtype
        assert ((a - b).abs().max() / b.abs().max()).item() < rtol, name


ACTIVATIONS = {
    "relu": N.ReLU,
    "leaky": lambda: N.LeakyReLU(0.2),
    "abs": N.Abs,
    "abrelu": lambda: N.ABReLU(-0.3, 0.8),
}


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("same", [True, False], ids=["x2=None", "x2"])
def test_matches_generic_path_float64(act, parameterization, same):
    model = deep(ACTIVATIONS[act], parameterization)
    x1, x2 = inputs()
    x2 = None if same else x2
    assert uses_chain(model, x1, x2)
    fast = nk.kernel(model, x1, x2, block_size=9)  # several tiles, diagonal ones among them
    assert_same(fast, generic(model, x1, x2, block_size=9), 1e-12)
    if same:
        assert torch.equal(fast.nngp, fast.nngp.T) and torch.equal(fast.ntk, fast.ntk.T)
        torch.testing.assert_close(fast.nngp.diagonal(), fast.cov1, rtol=1e-15, atol=0)


@pytest.mark.parametrize("same", [True, False], ids=["x2=None", "x2"])
def test_matches_generic_path_float32_and_nngp_only(same):
    model = deep()
    x1, x2 = inputs(torch.float32)
    x2 = None if same else x2
    assert_same(nk.kernel(model, x1, x2), generic(model, x1, x2), 1e-5)
    fast = nk.kernel(model, x1, x2, get="nngp")
    assert fast.ntk is None
    assert_same(fast, generic(model, x1, x2, get="nngp"), 1e-5)
    ntk_only = nk.kernel(model, x1, x2, get="ntk")
    assert ntk_only.nngp is None
    assert_same(ntk_only, generic(model, x1, x2, get="ntk"), 1e-5)


def test_zero_variance_without_bias():
    # b_std = 0 and a zero input: every layer's variance is 0 there, ρ = 0/0 is taken as 1 (the ρ → 1 limit)
    model = deep(b_std=0.0)
    x1, x2 = inputs()
    for x in (None, x2):
        fast = nk.kernel(model, x1, x)
        assert torch.isfinite(fast.nngp).all() and torch.isfinite(fast.ntk).all()
        assert fast.nngp[11].abs().max() == 0
        assert_same(fast, generic(model, x1, x), 1e-12)


def test_plain_torch_and_experiment_layers():
    torch_model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.LeakyReLU(0.1), nn.Linear(16, 1))
    experiment = mlp(5, [16], 1, W_std=1.3, b_std=0.2)
    x1, x2 = inputs()
    for model in (torch_model, experiment):
        assert uses_chain(model, x1)
        for x in (None, x2):
            assert_same(nk.kernel(model, x1, x), generic(model, x1, x), 1e-12)


class Scale(nn.Module):
    """A user layer registered with a kernel map that is not a dense layer."""

    def forward(self, x):
        return 2 * x


nk.register_kernel(Scale, lambda m, k: k.replace(nngp=4 * k.nngp, ntk=4 * k.ntk, cov=4 * k.cov))


@pytest.mark.parametrize(
    "make",
    [
        lambda: deep(act=N.Erf),  # not the ReLU family
        lambda: N.Sequential(N.Linear(5, 8), N.ReLU(), N.ReLU(), N.Linear(8, 1)),  # two activations in a row
        lambda: N.Sequential(N.Linear(5, 8), N.Residual(N.ReLU()), N.Linear(8, 1)),
        lambda: N.Sequential(N.Linear(5, 8), N.ReLU(), N.LayerNorm(8), N.Linear(8, 1)),
        lambda: nn.Sequential(nn.Linear(5, 8), Scale(), nn.ReLU(), nn.Linear(8, 1)),  # a user map in between
        lambda: nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1), Scale()),  # ... or at the end
    ],
    ids=["erf", "relu-relu", "residual", "layernorm", "user-map", "user-map-last"],
)
def test_other_architectures_take_the_generic_path(make):
    x1, _ = inputs()
    model = make()
    assert not uses_chain(model, x1)
    torch.testing.assert_close(nk.kernel(model, x1).nngp, generic(model, x1).nngp, rtol=0, atol=0)


def test_gradients_take_the_generic_path():
    # W_std as a tensor that requires grad: the kernel must be differentiable, so no fast path
    W = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    model = N.Sequential(N.Linear(5, 8, W_std=W), N.ReLU(), N.Linear(8, 1))
    x1, _ = inputs()
    assert not uses_chain(model, x1)
    k = nk.kernel(model, x1)
    k.ntk.sum().backward()
    assert W.grad is not None and torch.isfinite(W.grad)
    x = x1.clone().requires_grad_()
    assert not uses_chain(deep(), x)
    nk.kernel(deep(), x).nngp.sum().backward()
    assert torch.isfinite(x.grad).all()


class _HalvedReLU(N.ReLU):
    """A ReLU whose NTK map a user has overridden (halved): it must not declare the arc-cosine fast path."""

    def nngp_and_ntk(self, var1, cov, var2, ntk):
        nngp, out = super().nngp_and_ntk(var1, cov, var2, ntk)
        return nngp, out / 2


def test_the_fast_path_is_a_capability_the_activation_declares():
    assert N.ReLU().arc_cosine_slopes == (0.0, 1.0) and N.LeakyReLU(0.2).arc_cosine_slopes == (0.2, 1.0)
    assert N.Erf().arc_cosine_slopes is None and _HalvedReLU().arc_cosine_slopes is None
    x1, _ = inputs()
    model = deep(act=_HalvedReLU)
    assert not uses_chain(model, x1)
    # the override is what the kernel uses (the generic path calls it): the kernels differ from the plain ReLU net
    halved, plain = nk.kernel(model, x1), nk.kernel(deep(), x1)
    torch.testing.assert_close(halved.nngp, plain.nngp)
    assert not torch.allclose(halved.ntk, plain.ntk)


@pytest.mark.parametrize("block_size", [None, 16])
@pytest.mark.parametrize("same", [True, False], ids=["x2=None", "x2"])
def test_large_blocks_match_generic_path(monkeypatch, block_size, same):
    """The GPU dispatch (``compute._large_blocks``: the chain in the calling thread, in blocks as large as the budget
    allows, fresh buffers per block) run on the CPU: the generic path's numbers, in one block or several."""
    from ntkit.infinite import compute, dense_chain

    blocks = []
    real = dense_chain.run_chain_tile

    def spy(steps, variances, a, b, *args, **kwargs):
        blocks.append((a.shape[0], b.shape[0]))
        return real(steps, variances, a, b, *args, **kwargs)

    monkeypatch.setattr(compute, "_large_blocks", lambda device: True)
    monkeypatch.setattr(compute, "run_chain_tile", spy)
    model = deep(ACTIVATIONS["abrelu"], "standard")
    x1, x2 = inputs()
    x2 = None if same else x2
    fast = nk.kernel(model, x1, x2, block_size=block_size)
    assert_same(fast, generic(model, x1, x2), 1e-12)
    n2 = 40 if same else 23
    if block_size is None:
        assert blocks == [(40, n2)]
    else:
        assert len(blocks) == 6 and max(max(b) for b in blocks) == 16  # 3 row blocks: 6 upper tiles, or 3 x 2
