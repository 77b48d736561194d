"""nk.monte_carlo_kernel against the closed-form arc-cosine recursion of a ReLU MLP (written out here,
independently of ntkit.nn), plus standard-error scaling, seeding, factory styles and errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit.errors import BatchCouplingError, InvalidArgumentError, UnsupportedError

F64 = torch.float64
W_STD, B_STD, DEPTH = 1.4, 0.3, 2


class NTKLinear(nn.Module):
    """x ↦ W_std/√n_in · x Wᵀ + b_std · b with W, b ~ N(0, 1): the NTK parameterization (theory.md §1.1)."""

    def __init__(self, n_in, n_out, generator=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_out, n_in, dtype=F64))
        self.bias = nn.Parameter(torch.empty(n_out, dtype=F64))
        self.reset_parameters(generator)

    def reset_parameters(self, generator=None):
        with torch.no_grad():
            self.weight.normal_(generator=generator)
            self.bias.normal_(generator=generator)

    def forward(self, x):
        return W_STD / math.sqrt(self.weight.shape[1]) * x @ self.weight.T + B_STD * self.bias


def relu_mlp(d, width, n_out=1, generator=None):
    layers, n = [], d
    for _ in range(DEPTH):
        layers += [NTKLinear(n, width, generator), nn.ReLU()]
        n = width
    return nn.Sequential(*layers, NTKLinear(n, n_out, generator))


def arccos_kernels(x):
    """Infinite-width NNGP and NTK of relu_mlp (theory.md §4.1-4.2), from the arc-cosine formulas."""
    k = W_STD**2 * x @ x.T / x.shape[1] + B_STD**2
    theta = k
    for _ in range(DEPTH):
        d = torch.sqrt(torch.diagonal(k))
        cos = torch.clamp(k / (d[:, None] * d[None, :]), -1, 1)
        angle = torch.arccos(cos)
        t = d[:, None] * d[None, :] * (torch.sin(angle) + (math.pi - angle) * cos) / (2 * math.pi)
        t_dot = (math.pi - angle) / (2 * math.pi)
        k = W_STD**2 * t + B_STD**2
        theta = k + W_STD**2 * t_dot * theta
    return k, theta


@pytest.fixture
def x():
    return torch.randn(4, 6, dtype=F64, generator=torch.Generator().manual_seed(3))


def test_estimate_converges_to_the_arccos_kernels_within_its_standard_errors(x):
    # The finite-width bias of E[K̂] and E[Θ̂] is O(1/width) (≈ 0.4% at width 256, 0.2% at 512), below the
    # reported standard errors (≈ 2% for the NNGP: 256 nets of 16 outputs; ≈ 1.5% for the NTK: 32 nets), so
    # 4.5 standard errors must cover the difference; and the errors are small enough to make that a test.
    nngp, ntk = arccos_kernels(x)
    est_k = nk.monte_carlo_kernel(lambda g: relu_mlp(6, 256, 16, g), x, n_samples=256, get="nngp", seed=0)
    est_t = nk.monte_carlo_kernel(lambda g: relu_mlp(6, 512, 1, g), x, n_samples=32, get="ntk", seed=0)
    assert est_k.n_samples == 256 and est_k.nngp.shape == est_t.ntk.shape == (4, 4)
    for mc, se, exact in ((est_k.nngp, est_k.nngp_stderr, nngp), (est_t.ntk, est_t.ntk_stderr, ntk)):
        z = (mc - exact) / se
        assert float(z.abs().max()) < 4.5, z
        assert float((se / exact.abs()).max()) < 0.04, se / exact.abs()


@pytest.mark.slow
def test_estimate_converges_at_larger_width_and_sample_count(x):
    # Standard errors below 1.5%, biases O(1/width) ≈ 0.1%.
    nngp, ntk = arccos_kernels(x)
    est_k = nk.monte_carlo_kernel(lambda g: relu_mlp(6, 512, 64, g), x, n_samples=1024, get="nngp", seed=1)
    est_t = nk.monte_carlo_kernel(lambda g: relu_mlp(6, 1024, 1, g), x, n_samples=64, get="ntk", seed=1)
    for mc, se, exact in ((est_k.nngp, est_k.nngp_stderr, nngp), (est_t.ntk, est_t.ntk_stderr, ntk)):
        assert float(((mc - exact) / se).abs().max()) < 4.5
        assert float((se / exact.abs()).max()) < 0.015


def test_standard_error_shrinks_like_one_over_root_n(x):
    est = list(nk.monte_carlo_kernel(lambda g: relu_mlp(6, 64, 2, g), x, n_samples=[16, 64], seed=2))
    assert [e.n_samples for e in est] == [16, 64]
    for kind in ("nngp_stderr", "ntk_stderr"):
        ratio = getattr(est[0], kind) / getattr(est[1], kind)
        # √(64/16) = 2; each stderr carries the noise of its sample std (±18% at 16 samples), so the median
        # over the 16 entries of their ratio lies well within [1.5, 2.7].
        assert 1.5 < float(ratio.median()) < 2.7, ratio


def test_seeds_make_it_reproducible_and_prefixes_consistent(x):
    factory = lambda g: relu_mlp(6, 32, 1, g)  # noqa: E731
    a = nk.monte_carlo_kernel(factory, x, n_samples=6, seed=11)
    b = nk.monte_carlo_kernel(factory, x, n_samples=6, seed=11)
    c = nk.monte_carlo_kernel(factory, x, n_samples=6, seed=12)
    assert torch.equal(a.ntk, b.ntk) and torch.equal(a.nngp_stderr, b.nngp_stderr)
    assert not torch.equal(a.ntk, c.ntk)
    # the estimate after 6 samples is the same whether or not more follow
    first, _ = nk.monte_carlo_kernel(factory, x, n_samples=[6, 9], seed=11)
    assert torch.equal(first.ntk, a.ntk)
    # seed=None follows torch's global RNG
    torch.manual_seed(5)
    d = nk.monte_carlo_kernel(factory, x, n_samples=2)
    torch.manual_seed(5)
    assert torch.equal(nk.monte_carlo_kernel(factory, x, n_samples=2).nngp, d.nngp)


def test_factory_styles_agree(x):
    # A factory using a generator, one using the global RNG, and a network reset in place draw the same
    # weights from the same seed (a fresh generator and the reseeded global one give the same stream).
    by_generator = nk.monte_carlo_kernel(lambda g: relu_mlp(6, 16, 1, g), x, n_samples=3, seed=4)
    by_global = nk.monte_carlo_kernel(lambda: relu_mlp(6, 16, 1), x, n_samples=3, seed=4)
    net = relu_mlp(6, 16, 1)
    before = net[0].weight.clone()
    by_reset = nk.monte_carlo_kernel(net, x, n_samples=3, seed=4)
    for other in (by_global, by_reset):
        torch.testing.assert_close(other.ntk, by_generator.ntk, rtol=1e-13, atol=0)
        torch.testing.assert_close(other.nngp, by_generator.nngp, rtol=1e-13, atol=0)
    assert torch.equal(net[0].weight, before)  # the caller's network is not touched


def test_get_params_progress_and_sample_counts(x):
    # issue 10 item 9: one sample gave infinite standard errors without a word; a standard error needs two
    for counts in (1, [1, 4]):
        with pytest.raises(InvalidArgumentError, match="at least 2"):
            nk.monte_carlo_kernel(lambda g: relu_mlp(6, 8, 1, g), x, n_samples=counts, get="ntk", seed=0)
    est = nk.monte_carlo_kernel(lambda g: relu_mlp(6, 8, 1, g), x, n_samples=2, get="ntk", seed=0)
    assert est.nngp is None and est.nngp_stderr is None and bool(torch.isfinite(est.ntk_stderr).all())
    calls = []
    nk.monte_carlo_kernel(
        lambda g: relu_mlp(6, 8, 1, g), x, n_samples=3, get=("nngp",), progress=lambda *a: calls.append(a)
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]
    nk.monte_carlo_kernel(lambda g: relu_mlp(6, 8, 1, g), x, n_samples=2, progress=True)
    # the NTK of the readout alone: its features' Gram matrix, a different kernel from the full one
    full = nk.monte_carlo_kernel(lambda g: relu_mlp(6, 8, 1, g), x, n_samples=2, seed=0, get="ntk")
    head = nk.monte_carlo_kernel(lambda g: relu_mlp(6, 8, 1, g), x, n_samples=2, seed=0, get="ntk", params=["4.*"])
    assert float((full.ntk - head.ntk).min()) > 0


def test_layers_without_closed_forms_and_cross_kernels():
    # max pooling and softmax have no closed form: the estimate is still a symmetric PSD kernel, with x2.
    def factory():
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32, 3), nn.Softmax(-1)
        ).eval()

    images = torch.randn(5, 1, 4, 4, dtype=F64)
    est = nk.monte_carlo_kernel(factory, images, n_samples=4, seed=0)  # float32 factory moved to float64
    assert est.ntk.dtype == F64
    torch.testing.assert_close(est.ntk, est.ntk.T)
    assert float(torch.linalg.eigvalsh(est.nngp).min()) > -1e-10
    cross = nk.monte_carlo_kernel(factory, images[:2], images, n_samples=4, seed=0)
    torch.testing.assert_close(cross.ntk, est.ntk[:2])


def test_errors(x):
    good = lambda g: relu_mlp(6, 8, 1, g)  # noqa: E731
    with pytest.raises(InvalidArgumentError, match="at least 2"):
        nk.monte_carlo_kernel(good, x, n_samples=0)
    with pytest.raises(InvalidArgumentError, match="increase"):
        nk.monte_carlo_kernel(good, x, n_samples=[8, 4])
    with pytest.raises(InvalidArgumentError, match="get"):
        nk.monte_carlo_kernel(good, x, get="cov")
    with pytest.raises(UnsupportedError, match=r"not an nn\.Module"):
        nk.monte_carlo_kernel(lambda: "net", x, n_samples=2)
    with pytest.raises(InvalidArgumentError, match="callable"):
        nk.monte_carlo_kernel(3, x, n_samples=2)
    with pytest.raises(InvalidArgumentError, match="progress"):
        nk.monte_carlo_kernel(good, x, n_samples=2, progress="yes")

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.ones(6, dtype=F64))

        def forward(self, x):
            return x * self.s

    with pytest.raises(UnsupportedError, match="reset_parameters"):
        nk.monte_carlo_kernel(nn.Sequential(Scale(), nn.Linear(6, 1)), x, n_samples=2)
    with pytest.raises(BatchCouplingError):  # BatchNorm in train mode couples the batch: rejected
        nk.monte_carlo_kernel(lambda: nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4)), x, n_samples=2)
