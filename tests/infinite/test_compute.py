"""nk.kernel: symmetry and PSD, tiling, layouts, gradients, numerical stability, memory budgets and errors.

References: the same kernel computed in one block (tiles must agree to round-off), torch.autograd.gradcheck
(finite differences in float64) for the gradients, float64 for float32, and the stated error messages."""

import multiprocessing
import threading

import pytest
import torch

import ntkit as nk
from ntkit import nn as N
from ntkit.errors import InvalidArgumentError, MemoryBudgetError, NonFiniteError, ShapeError, UnsupportedError


def mlp(depth=2, W=1.5, b=0.1, width=16, d=4, act=N.ReLU):
    layers = [N.Linear(d, width, W_std=W, b_std=b)]
    for _ in range(depth - 1):
        layers += [act(), N.Linear(width, width, W_std=W, b_std=b)]
    return N.Sequential(*layers, act(), N.Linear(width, 1, W_std=W, b_std=b))


def cnn_pool():
    return N.Sequential(
        N.Conv2d(2, 8, 3, W_std=1.4, b_std=0.1),
        N.ReLU(),
        N.Conv2d(8, 8, 3, stride=2),
        N.ReLU(),
        N.GlobalAvgPool(),
        N.Linear(8, 1),
    )


def residual_net():
    return N.Sequential(
        N.Linear(4, 8, b_std=0.2), N.Residual(N.ReLU()), N.LayerNorm(8), N.Linear(8, 8), N.Erf(), N.Linear(8, 1)
    )


CASES = {
    "mlp": (mlp, (9, 4)),
    "cnn_pool": (cnn_pool, (7, 2, 5, 5)),
    "residual": (residual_net, (9, 4)),
}


@pytest.mark.parametrize("case", CASES)
def test_symmetric_and_positive_semidefinite(case):
    make, shape = CASES[case]
    x = torch.randn(shape, dtype=torch.float64)
    x[3] = x[2]  # a duplicate: the kernel matrix is singular there, still PSD
    k = nk.kernel(make(), x)
    for t in (k.nngp, k.ntk):
        assert torch.equal(t, t.T)  # exactly: only one triangle is computed
        eig = torch.linalg.eigvalsh(t)
        assert eig.min() > -1e-12 * eig.max()
    torch.testing.assert_close(k.cov1, k.nngp.diagonal())


# Tiles multiply blocks of a different size, so entries can differ in the last bit; at correlation 1 (the
# diagonal) an arc-cosine turns one ulp into √eps ≈ 1e-8 relative. Hence 1e-7, not 1e-13.
TILING_RTOL = 1e-7


@pytest.mark.parametrize("case", CASES)
def test_tiles_equal_one_block(case):
    make, shape = CASES[case]
    net = make()
    x1, x2 = torch.randn(shape, dtype=torch.float64), torch.randn((5, *shape[1:]), dtype=torch.float64)
    for a, b in ((x1, None), (x1, x2)):
        whole = nk.kernel(net, a, b, block_size=100)
        tiled = nk.kernel(net, a, b, block_size=2)
        for name in ("nngp", "ntk", "cov1", "cov2"):
            if getattr(whole, name) is not None:
                torch.testing.assert_close(getattr(tiled, name), getattr(whole, name), rtol=TILING_RTOL, atol=1e-15)
    # x2 = None is the same as passing x1 again (no dropout here, so examples need not be told apart).
    sym, full = nk.kernel(net, x1), nk.kernel(net, x1, x1.clone())
    torch.testing.assert_close(sym.nngp, full.nngp, rtol=TILING_RTOL, atol=1e-15)
    torch.testing.assert_close(sym.ntk, full.ntk, rtol=TILING_RTOL, atol=1e-15)


def test_get_and_result_type():
    x = torch.randn(5, 4)
    k = nk.kernel(mlp(), x, get="nngp")
    assert isinstance(k, nk.Kernel) and k.ntk is None and k.nngp.shape == (5, 5) and k.nngp.dtype == torch.float32
    k = nk.kernel(mlp(), x, get="ntk")
    assert k.nngp is None and k.ntk.shape == (5, 5)
    k = nk.kernel(mlp(), x, torch.randn(3, 4), dtype=torch.float64)
    assert k.nngp.shape == (5, 3) and k.cov2.shape == (3,) and k.nngp.dtype == torch.float64
    assert "nngp=(5, 3)" in repr(k)
    with pytest.raises(nk.errors.InvalidArgumentError, match="get must be"):
        nk.kernel(mlp(), x, get="cov")


def test_spatial_output_layout():
    # A network that does not pool or flatten: the kernel keeps the output's spatial layout.
    x = torch.randn(3, 2, 4, 4)
    conv = N.Sequential(N.Conv2d(2, 4, 3), N.ReLU())
    assert nk.kernel(conv, x).nngp.shape == (3, 3, 4, 4)
    k = nk.kernel(conv, x, diagonal_spatial=False)
    assert k.nngp.shape == (3, 3, 4, 4, 4, 4)
    # Symmetry across the blocks: K(x2, x1)[s', s] = K(x1, x2)[s, s'].
    torch.testing.assert_close(k.nngp, k.nngp.permute(1, 0, 3, 2, 5, 4))
    tiled = nk.kernel(conv, x, diagonal_spatial=False, block_size=1)
    torch.testing.assert_close(tiled.nngp, k.nngp)


def test_gradcheck_inputs_and_hyperparameters():
    W = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    x1 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)

    def fn(x1, x2, W, b):
        net = N.Sequential(
            N.Linear(4, 8, W_std=W, b_std=b),
            N.ReLU(),
            N.Linear(8, 8, W_std=W, b_std=b),
            N.Erf(),
            N.Linear(8, 1, W_std=W, b_std=b),
        )
        k = nk.kernel(net, x1, x2)
        return k.nngp, k.ntk

    assert torch.autograd.gradcheck(fn, (x1, x2, W, b))
    # x2 = None: the diagonal (ρ = 1) included.
    assert torch.autograd.gradcheck(lambda x, W, b: fn(x, None, W, b), (x1, W, b))


def test_gradcheck_through_convolution_and_pooling():
    W = torch.tensor(1.4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(2, 1, 4, 4, dtype=torch.float64)

    def fn(x, W):
        net = N.Sequential(
            N.Conv2d(1, 4, 3, W_std=W, b_std=0.1), N.ReLU(), N.AvgPool2d(2), N.Flatten(), N.Linear(16, 1, W_std=W)
        )
        k = nk.kernel(net, x, x2)
        return k.nngp, k.ntk

    assert torch.autograd.gradcheck(fn, (x, W))


def test_gradcheck_through_quadrature_layer_norm_and_dropout():
    # x + erf(x) (cross terms by quadrature), LayerNorm after it (channel means), dropout.
    W = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    x1 = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)

    def fn(x1, W):
        net = N.Sequential(
            N.Linear(3, 4, W_std=W, b_std=0.1),
            N.Residual(N.Erf()),
            N.LayerNorm(4),
            N.Dropout(0.1),
            N.Linear(4, 1, W_std=W),
        )
        k = nk.kernel(net, x1)
        return k.nngp, k.ntk

    assert torch.autograd.gradcheck(fn, (x1, W))


def test_zero_and_duplicate_inputs_give_finite_values_and_gradients():
    x = torch.randn(4, 3, dtype=torch.float64)
    x[0] = 0.0
    x[2] = x[1]
    x.requires_grad_()
    for b_std in (0.0, 0.1):
        for net in (mlp(b=b_std, d=3), residual_net() if b_std else mlp(act=N.Erf, b=b_std, d=3)):
            if net[0].in_features != 3:
                continue
            k = nk.kernel(net, x)
            assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all()
            (grad,) = torch.autograd.grad(k.nngp.sum() + k.ntk.sum(), x)
            assert torch.isfinite(grad).all()
    # Zero-norm images through pooling.
    img = torch.zeros(2, 2, 5, 5)
    assert torch.isfinite(nk.kernel(cnn_pool(), img).ntk).all()


@pytest.mark.parametrize("act", [N.ReLU, N.Erf])
def test_depth_100_stays_finite_and_float32_agrees(act):
    x = torch.randn(6, 4, dtype=torch.float64)
    x[1] = x[0]
    x[2] = 0
    net = mlp(depth=100, W=2**0.5, b=0.1, act=act)
    k64, k32 = nk.kernel(net, x), nk.kernel(net, x.float())
    for k in (k64, k32):
        assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all()
    # float32 loses digits over 100 layers near ρ = 1 (arc-cosines), but not the kernel: 1e-3 relative.
    for name in ("nngp", "ntk"):
        a, b = getattr(k32, name).double(), getattr(k64, name)
        assert float(((a - b).abs() / b.abs()).max()) < 1e-3
    if act is N.ReLU:
        # At the critical W_std² = 2 deep ReLU kernels stay O(depth), not exponential.
        assert k64.ntk.abs().max() < 1e4


def test_large_weights_float32_uses_float64_when_only_intermediates_overflow():
    # W_std² = 2·100: the NNGP grows like 100^depth. At depth 9 the result (~1e18) fits float32 but products of
    # variances (~1e36 · 100) inside the arc-cosine would not; the float64 recomputation keeps it exact.
    x = torch.randn(4, 3)
    net = mlp(depth=9, W=(200.0) ** 0.5, b=0.0, d=3)
    k32, k64 = nk.kernel(net, x), nk.kernel(net, x.double())
    assert k32.nngp.dtype == torch.float32 and torch.isfinite(k32.ntk).all()
    torch.testing.assert_close(k32.nngp.double(), k64.nngp, rtol=1e-5, atol=0)
    # At depth 30 the true kernel (~1e60) exceeds float32: a clear error, not inf.
    with pytest.raises(NonFiniteError, match="float64"):
        nk.kernel(mlp(depth=30, W=200.0**0.5, b=0.0, d=3), x)
    assert torch.isfinite(nk.kernel(mlp(depth=30, W=200.0**0.5, b=0.0, d=3), x, dtype=torch.float64).ntk).all()


def test_memory_budget_errors_before_allocating():
    x = torch.randn(100_000, 4)
    with pytest.raises(MemoryBudgetError, match=r"result .*100000 x 100000.*GiB"):
        nk.kernel(mlp(), x, memory_budget="1G")
    # A pooled CNN on 64x64 images: one pair of examples already needs (64·64)² entries per kernel.
    big = torch.randn(2, 1, 64, 64)
    net = N.Sequential(N.Conv2d(1, 4, 3), N.ReLU(), N.GlobalAvgPool(), N.Linear(4, 1))
    with pytest.raises(MemoryBudgetError, match=r"one pair of examples needs .*full spatial layout"):
        nk.kernel(net, big, memory_budget="100M")
    # With gradients every tile is kept for the backward pass: the whole working set must fit.
    xg = torch.randn(3000, 4, requires_grad=True)
    with pytest.raises(MemoryBudgetError, match="gradients"):
        nk.kernel(mlp(), xg, memory_budget="200M")


def test_tile_size_follows_the_budget():
    # A small budget forces small tiles; the result is the same.
    x = torch.randn(40, 2, 4, 4, dtype=torch.float64)
    net = cnn_pool()
    small, large = nk.kernel(net, x, memory_budget="4M"), nk.kernel(net, x)
    torch.testing.assert_close(small.ntk, large.ntk, rtol=TILING_RTOL, atol=1e-15)


def test_errors_name_the_problem():
    x = torch.randn(4, 3)
    with pytest.raises(UnsupportedError, match=r"MaxPool2d.*monte_carlo_kernel"):
        nk.kernel(
            N.Sequential(N.Conv2d(1, 2, 3), torch.nn.MaxPool2d(2), N.Flatten(), N.Linear(2, 1)), torch.randn(2, 1, 4, 4)
        )
    with pytest.raises(UnsupportedError, match="applied to the network input"):
        nk.kernel(N.Sequential(N.ReLU(), N.Linear(3, 1)), x)
    with pytest.raises(UnsupportedError, match="Flatten"):
        nk.kernel(N.Sequential(N.Linear(3, 2)), torch.randn(2, 3, 4, 4))
    shared = N.Linear(4, 4)
    with pytest.raises(UnsupportedError, match="weight sharing"):
        nk.kernel(N.Sequential(N.Linear(3, 4), shared, N.ReLU(), shared), x)
    with pytest.raises(UnsupportedError, match="neither Gaussian nor an elementwise function"):
        nk.kernel(
            N.Sequential(N.Conv2d(1, 2, 3), N.ReLU(), N.AvgPool2d(2), N.ReLU(), N.Flatten(), N.Linear(2, 1)),
            torch.randn(2, 1, 4, 4),
        )
    with pytest.raises(UnsupportedError, match="correlated"):
        # u and LayerNorm(u) are both Gaussian but different layers: their cross-covariance is not tracked.
        nk.kernel(N.Sequential(N.Linear(3, 4), N.Parallel(N.Identity(), N.LayerNorm(4)), N.Linear(4, 1)), x)
    with pytest.raises(InvalidArgumentError, match=r"torch\.nn\.Module"):
        nk.kernel(lambda t: t, x)
    with pytest.raises(ShapeError, match="inputs must be"):
        nk.kernel(mlp(d=3), torch.randn(4))
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(nk.errors.NonFiniteError):
        nk.kernel(mlp(d=3), bad)
    with pytest.raises(nk.errors.InvalidArgumentError, match="parameterization"):
        N.Linear(3, 4, parameterization="mean-field")


def test_thread_count_is_restored():
    # Tiles run on a thread pool with single-threaded operations; torch's (global) setting comes back.
    before = torch.get_num_threads()
    nk.kernel(mlp(), torch.randn(300, 4), block_size=50)
    assert torch.get_num_threads() == before
    # set_num_threads(1) in a worker also sets the count that threads started later begin with: restored too.
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert seen == [before]


def _kernel_in_child(conn):
    # (only small operations in this thread: OpenMP's helpers, used by the parent, do not survive a fork)
    conn.send(nk.kernel(mlp(), torch.ones(300, 4), block_size=50).nngp[0].sum().item())


def test_worker_pool_survives_fork():
    # The tile workers are kept between calls; a forked child inherits the pool but not its threads, so it must
    # make its own (else its first kernel waits forever). The child's result equals the parent's.
    x = torch.ones(300, 4)
    want = nk.kernel(mlp(), x, block_size=50).nngp[0].sum().item()  # the parent's pool exists now
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_kernel_in_child, args=(child,))
    proc.start()
    proc.join(timeout=60)
    if proc.is_alive():
        proc.kill()
    assert proc.exitcode == 0
    assert parent.recv() == want
