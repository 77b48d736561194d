"""nk.kernel's fast path for pooled CNNs (``ntkit.infinite.conv_chain``) against the generic path.

The generic path (the layers' kernel maps in ``transforms``, tile by tile) is the reference: both compute the
same recursions, the fast path with its sums associated differently (separable window sums added in place,
the affine maps and arc-cosine products in another order), so they agree to a few ulps of the largest entry.
1e-12 relative in float64 leaves room for that round-off amplified through the layers; a wrong offset, stride,
padding, divisor or broadcast changes entries by 1e-3 or more. The generic path is forced by making the plan
find no chain. ``window_sum`` is also checked against a direct implementation (a padded copy and slices).
"""

import pytest
import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import ntkit as nk
from ntkit import nn as N
from ntkit.infinite import conv_chain, planning

RTOL = 1e-12
W, B = 1.4, 0.1


def generic(model, x1, x2=None, **kw):
    """nk.kernel through the layers' kernel maps."""
    original = planning.conv_chain
    planning.conv_chain = lambda *args: None
    try:
        return nk.kernel(model, x1, x2, **kw)
    finally:
        planning.conv_chain = original


def uses_chain(model, x1):
    p = planning.plan(model, x1, None, dtype=x1.dtype, ntk=True, diagonal_spatial=None)
    return p.conv_chain is not None


def myrtle_like(c=2):
    """Myrtle-5's shape on 8x8 images: conv-ReLU x2, pool, conv-ReLU, pool, conv-ReLU, pool, Flatten, Dense."""
    return N.Sequential(
        N.Conv2d(c, 4, 3, W_std=W, b_std=B),
        N.ReLU(),
        N.Conv2d(4, 4, 3, W_std=W, b_std=B),
        N.ReLU(),
        N.AvgPool2d(2),
        N.Conv2d(4, 4, 3, W_std=W, b_std=B),
        N.ReLU(),
        N.AvgPool2d(2),
        N.Conv2d(4, 4, 3, W_std=W, b_std=B),
        N.ReLU(),
        N.AvgPool2d(2),
        N.Flatten(),
        N.Linear(4, 1, W_std=W, b_std=B),
    )


def cntk_gap(c=2, depth=3):
    layers = [N.Conv2d(c, 4, 3, W_std=W, b_std=B), N.ReLU()]
    for _ in range(depth - 1):
        layers += [N.Conv2d(4, 4, 3, W_std=W, b_std=B), N.ReLU()]
    return N.Sequential(*layers, N.GlobalAvgPool(), N.Linear(4, 1, W_std=W))


def strided_dilated_padded():
    """Strides, dilation, int and "valid" padding, non-square filters, the standard parameterization, a pooling
    window with padding not counted (count_include_pad=False), then Flatten: 11x9 -> 6x5 -> 2x3 -> 2x2."""
    sp = {"parameterization": "standard"}
    return N.Sequential(
        N.Conv2d(2, 4, 3, stride=2, padding=1, W_std=W, b_std=B, **sp),
        N.LeakyReLU(0.2),
        N.Conv2d(4, 4, (3, 2), dilation=2, padding="valid", W_std=W, **sp),
        N.ReLU(),
        N.AvgPool2d(2, padding=1, count_include_pad=False),
        N.Flatten(),
        N.Linear(16, 1, **sp),
    )


def one_d():
    """Ends in a convolution: the output keeps its full spatial layout (N1, N2, L, L')."""
    return N.Sequential(
        N.Conv1d(2, 4, 3, W_std=W, b_std=B), N.Abs(), N.AvgPool1d(3, stride=2), N.Conv1d(4, 4, 2, stride=2)
    )


def three_d():
    return N.Sequential(
        N.Conv3d(2, 4, 3, W_std=W, b_std=B),
        N.ReLU(),
        N.SumPool3d(2),
        N.Conv3d(4, 4, (2, 3, 1), padding="valid"),
        N.ABReLU(-0.5, 1.0),
        N.GlobalSumPool(),
        N.Linear(4, 1),
    )


def pool_then_relu():
    """An activation after pooling (pooling of a Gaussian layer is Gaussian) and 'same' pooling padding."""
    return N.Sequential(
        N.Conv2d(2, 4, 3, W_std=W, b_std=B), N.AvgPool2d(3, stride=2, padding="same"), N.ReLU(), N.GlobalAvgPool()
    )


CASES = {
    "myrtle_like": (myrtle_like, (6, 2, 8, 8)),
    "cntk_gap": (cntk_gap, (5, 2, 6, 6)),
    "strided_dilated_padded": (strided_dilated_padded, (5, 2, 11, 9)),
    "one_d": (one_d, (5, 2, 12)),
    "three_d": (three_d, (4, 2, 5, 6, 4)),
    "pool_then_relu": (pool_then_relu, (5, 2, 7, 7)),
}


def assert_same(a, b, rtol=RTOL):
    for name in ("nngp", "ntk", "cov"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.shape == y.shape, name
            assert float((x - y).abs().max()) <= rtol * float(y.abs().max()), name


@pytest.mark.parametrize("case", CASES)
def test_fast_path_equals_the_generic_path_float64(case):
    make, shape = CASES[case]
    torch.manual_seed(0)
    net, x1, x2 = make(), torch.randn(shape, dtype=torch.float64), torch.randn((3, *shape[1:]), dtype=torch.float64)
    assert uses_chain(net, x1)
    assert_same(nk.kernel(net, x1), generic(net, x1))  # x2 = None: own pairs, then i < j mirrored
    assert_same(nk.kernel(net, x1, x2), generic(net, x1, x2))
    assert_same(nk.kernel(net, x1, get="nngp"), generic(net, x1, get="nngp"))


def test_float32_close_to_float64_and_small_batches_agree():
    # float32 computes in float32 (no silent float64): about 1e-6 relative to the float64 kernel, far from 1e-12.
    torch.manual_seed(1)
    x = torch.randn(6, 2, 8, 8, dtype=torch.float64)
    net = myrtle_like()
    k64, k32 = nk.kernel(net, x), nk.kernel(net, x.float())
    assert k32.nngp.dtype == torch.float32
    assert_same(k32, k64, rtol=1e-5)
    # one pair per batch (block_size=1) gives the same numbers as the default batches
    assert_same(nk.kernel(net, x, block_size=1), k64)


def test_result_is_exactly_symmetric_and_equal_inputs_give_equal_answers():
    torch.manual_seed(2)
    x = torch.randn(5, 2, 12, dtype=torch.float64)
    x[3] = x[1]  # a duplicate example
    k = nk.kernel(one_d(), x)
    assert torch.equal(k.nngp, k.nngp.permute(1, 0, 3, 2))
    assert torch.equal(k.ntk, k.ntk.permute(1, 0, 3, 2))
    assert torch.equal(k.nngp[1, 3], k.nngp[1, 1]) and torch.equal(k.ntk[1, 3], k.ntk[1, 1])
    assert torch.equal(k.nngp[1, 1], k.nngp[1, 1].T)
    scalar = nk.kernel(
        myrtle_like(), torch.cat([torch.randn(3, 2, 8, 8), torch.randn(1, 2, 8, 8).expand(2, -1, -1, -1)])
    )
    assert scalar.nngp[3, 4] == scalar.nngp[3, 3] == scalar.nngp[4, 4]


def test_other_layers_and_gradients_take_the_generic_path():
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    circular = N.Sequential(N.Conv2d(2, 4, 3, padding_mode="circular"), N.ReLU(), N.GlobalAvgPool())
    erf = N.Sequential(N.Conv2d(2, 4, 3), N.Erf(), N.GlobalAvgPool())
    assert not uses_chain(circular, x) and not uses_chain(erf, x)
    assert uses_chain(cntk_gap(), x) and not uses_chain(cntk_gap(), x.clone().requires_grad_())


def test_memory_budget_of_the_fast_path():
    big = torch.randn(2, 1, 64, 64)
    net = N.Sequential(N.Conv2d(1, 4, 3), N.ReLU(), N.GlobalAvgPool(), N.Linear(4, 1))
    assert uses_chain(net, big)
    with pytest.raises(nk.errors.MemoryBudgetError, match=r"one pair of examples needs .*full spatial layout"):
        nk.kernel(net, big, memory_budget="100M")


class FreshAllocations(TorchDispatchMode):
    """Records the bytes of every tensor an operation returns on storage that none of its inputs has: an upper
    bound on what the operations allocate beyond the buffers they write into."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if torch.is_tensor(t)}
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if torch.is_tensor(t) and t.untyped_storage().data_ptr() not in inputs:
                self.bytes += t.untyped_storage().nbytes()
        return out


@pytest.mark.parametrize("net", [myrtle_like, cntk_gap], ids=["myrtle", "cntk-gap"])
def test_memory_per_batch_is_twice_one_layers_covariances(net):
    """Issue 16: a batch of P pairs needs at most twice one layer's K and Θ. The four per-thread buffers are
    exactly that (4 x P x the largest layer's covariance of a pair); everything else one batch allocates (the
    per-position variances it gathers, spatial-free results) is counted by intercepting every operation, and
    must stay below an eighth of one layer's K and Θ. A padded copy or a fresh tensor per shifted sum, as the
    generic path makes, allocates a whole covariance each and fails this."""
    model, n_pairs = net(), 3
    x = torch.randn(2 * n_pairs, 2, 8, 8, dtype=torch.float64)
    chain = planning.plan(model, x, None, dtype=x.dtype, ntk=True, diagonal_spatial=None).conv_chain
    variances = conv_chain.new_variances(chain, x.shape[0], x.dtype, x.device)
    rows = torch.arange(x.shape[0])
    conv_chain.release_buffers()
    conv_chain.run_pairs(chain, variances, x, x, rows, rows, True, True)  # the own pairs: buffers for 2P pairs
    buffers = conv_chain._BUFFERS.bufs
    assert len(buffers) == 4 and all(b.numel() == 2 * n_pairs * chain.pair_entries for b in buffers)
    one_layer = 2 * n_pairs * chain.pair_entries * x.element_size()  # K and Θ of P pairs at the largest layer
    fresh = FreshAllocations()
    with fresh:
        k, theta = conv_chain.run_pairs(
            chain, variances, x[:n_pairs], x[n_pairs:], rows[:n_pairs], rows[n_pairs:], True, False
        )
    assert conv_chain._BUFFERS.bufs is buffers  # reused, not reallocated
    assert 0 < fresh.bytes <= one_layer / 8
    reference = generic(model, x[:n_pairs], x[n_pairs:])
    torch.testing.assert_close(k, reference.nngp.diagonal(), rtol=RTOL, atol=0)
    torch.testing.assert_close(theta, reference.ntk.diagonal(), rtol=RTOL, atol=0)


def direct_window_sum(t, dims, size, stride, dilation, padding):
    """The same shifted sum from a zero-padded copy, offset by offset (the generic path's method)."""
    pads = [0] * (2 * t.ndim)
    for dim in dims:
        pads[2 * (t.ndim - 1 - dim)], pads[2 * (t.ndim - 1 - dim) + 1] = padding
    padded = F.pad(t, pads)
    n_out = (padded.shape[dims[0]] - dilation * (size - 1) - 1) // stride + 1
    total = 0
    for d in range(size):
        s = padded
        for dim in dims:
            s = s.narrow(dim, dilation * d, stride * (n_out - 1) + 1)[
                (slice(None),) * dim + (slice(None, None, stride),)
            ]
        total = total + s
    return total


@pytest.mark.parametrize(
    "size, stride, dilation, padding",
    [(3, 1, 1, (1, 1)), (3, 2, 1, (1, 1)), (2, 2, 1, (0, 0)), (3, 1, 2, (2, 1)), (4, 3, 1, (3, 0)), (5, 1, 1, (0, 0))],
)
def test_window_sum_equals_the_padded_copy(size, stride, dilation, padding):
    torch.manual_seed(3)
    t = torch.randn(2, 7, 3, 7, dtype=torch.float64)
    for dims in [(1,), (1, 3)]:
        expected = direct_window_sum(t, dims, size, stride, dilation, padding)
        out = torch.full(expected.shape, float("nan"), dtype=torch.float64)  # every entry must be written
        got = conv_chain.window_sum(t, dims, size, stride, dilation, padding, out)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-14)
