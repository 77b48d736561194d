"""The structured method's hand-written capture for chains of convolutions (``empirical.conv_chain``), against the
dense float64 Jacobian (plain autograd, one gradient per example and output) to ``TOL``: both routes are exact,
so the difference is round-off; a wrong adjoint (stride, padding, dilation, groups), a missing activation
derivative or a wrong collapse of the pooled head's output sum is off by far more."""

from __future__ import annotations

import pytest
import torch
from empirical_reference import TOL, kernel_from_jacobians
from torch import nn

import ntkit as nk
from ntkit._functional import functionalize
from ntkit.empirical.conv_chain import conv_chain
from ntkit.empirical.cost import Problem
from ntkit.empirical.structured import StructuredMethod
from ntkit.empirical.tracing import trace_model
from reference import dense_jacobian, rel_err

DT = torch.float64


def chain_of(*layers: nn.Module, dtype: torch.dtype = DT) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*layers).to(dtype).eval()


def recognised(model: nn.Module, x: torch.Tensor, params=None, traced: bool = True):
    fm = functionalize(model, params)
    return conv_chain(fm, trace_model(fm, x), traced)


def strided(groups: int) -> tuple[nn.Sequential, tuple[int, ...]]:
    model = chain_of(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Conv2d(4, 6, 3, groups=groups, dilation=2, padding=2),
        nn.LeakyReLU(0.1),
        nn.Conv2d(6, 3, (2, 3), stride=(2, 1), bias=False),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 3),
    )
    return model, (2, 8, 8)


#: (model, image shape): the benchmark's CNN scaled down, and variants of every convolution argument supported.
CHAINS = {
    "pooled-relu": lambda: (
        chain_of(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 5, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(5, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 3),
        ),
        (2, 5, 5),
    ),
    # stride 2 on an even size (the adjoint needs output_padding), groups, dilation, no pooling
    "strided-grouped-flatten": lambda: strided(groups=2),
    # the same without groups, so that the traced kernel takes the fused route (ConvChain.jacobians)
    "strided-flatten": lambda: strided(groups=1),
    # string paddings, no activation after the last convolution, an Identity, a pooled head without bias
    "same-valid-linear-last": lambda: (
        chain_of(
            nn.Conv2d(2, 3, 3, padding="same"),
            nn.Identity(),
            nn.ReLU(),
            nn.Conv2d(3, 4, 2, stride=2, padding="valid"),
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Flatten(),
            nn.Linear(4, 2, bias=False),
        ),
        (2, 5, 4),
    ),
    "one-conv": lambda: (
        chain_of(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)),
        (1, 4, 4),
    ),
}

#: every parameter; the first convolution only (cotangents through every layer); the last convolution only (the
#: collapsed cotangents alone); the head only; biases only
SELECTIONS = [None, ["0.*"], ["last"], ["head"], ["*.bias"]]


def selection(model: nn.Sequential, params):
    """The names for ``params``, with 'last' / 'head' meaning the last convolution's / the head's parameters."""
    if params == ["last"]:
        last = [name for name, m in model.named_children() if isinstance(m, nn.Conv2d)][-1]
        return [f"{last}.*"]
    if params == ["head"]:
        return [f"{len(model) - 1}.*"]
    return params


@pytest.mark.parametrize("name", list(CHAINS))
@pytest.mark.parametrize("params", SELECTIONS)
def test_conv_chain_matches_dense_reference(name, params):
    """Traced and full, x2 given or not, diagonal, several blocks (chunk_size=2), all against the dense Jacobian."""
    model, image = CHAINS[name]()
    params = selection(model, params)
    names = list(functionalize(model, params).params)
    torch.manual_seed(1)
    x1, x2 = torch.randn(5, *image, dtype=DT), torch.randn(3, *image, dtype=DT)
    assert recognised(model, x1, params) is not None
    J1, J2 = dense_jacobian(model, x1, names), dense_jacobian(model, x2, names)
    for other, J_other in ((None, J1), (x2, J2)):
        for trace_outputs in (True, False):
            for chunk_size in (None, 2):
                got = nk.empirical_ntk(
                    model, x1, other, params=params, method="structured", trace_outputs=trace_outputs,
                    chunk_size=chunk_size,
                )  # fmt: skip
                assert rel_err(got, kernel_from_jacobians(J1, J_other, trace_outputs)) < TOL
    for trace_outputs in (True, False):
        got = nk.empirical_ntk(
            model, x1, params=params, method="structured", diagonal=True, trace_outputs=trace_outputs
        )
        assert rel_err(got, kernel_from_jacobians(J1, J1, trace_outputs, diagonal=True)) < TOL


#: float32 against the float64 reference: round-off of about 1e-7 per operation over sums of at most a few
#: hundred terms, far below the 1e-2 or more of a wrong term.
TOL32 = 1e-4


@pytest.mark.parametrize("name", ["pooled-relu", "strided-grouped-flatten", "strided-flatten"])
def test_conv_chain_float32(name):
    model, image = CHAINS[name]()
    torch.manual_seed(2)
    x = torch.randn(6, *image, dtype=DT)
    J = dense_jacobian(model, x)
    model32 = model.float()
    for trace_outputs in (True, False):
        got = nk.empirical_ntk(model32, x.float(), method="auto", trace_outputs=trace_outputs)
        assert got.dtype == torch.float32
        assert rel_err(got.double(), kernel_from_jacobians(J, J, trace_outputs)) < TOL32


def structured(model: nn.Module, x: torch.Tensor, full: bool = False) -> StructuredMethod:
    fm = functionalize(model)
    problem = Problem(x.shape[0], x.shape[0], symmetric=True, diagonal=False, full=full, n_outputs=3)
    return StructuredMethod(fm, trace_model(fm, x), problem)


@pytest.mark.parametrize(
    ("name", "fused"),
    [
        ("pooled-relu", True),
        ("strided-flatten", True),
        ("one-conv", True),
        ("same-valid-linear-last", True),
        ("strided-grouped-flatten", False),
    ],
)
def test_traced_kernel_takes_the_fused_route_where_every_convolution_has_one_group(name, fused):
    """So that the reference test above covers both routes: fused for the traced kernel, the capture for the full."""
    model, image = CHAINS[name]()
    x = torch.randn(4, *image, dtype=DT)
    assert structured(model, x).fused is fused
    assert not structured(model, x, full=True).fused


@pytest.mark.parametrize("name", ["pooled-relu", "strided-flatten"])
def test_fused_jacobians_do_not_depend_on_the_chunk_of_examples(name):
    """ConvChain.jacobians forms its tensors a few examples at a time; one example per chunk gives the same."""
    model, image = CHAINS[name]()
    x = torch.randn(5, *image, dtype=DT)
    chain = recognised(model, x)

    def take(slot, shape):
        return torch.empty(shape, dtype=DT)

    head, whole = chain.jacobians(x, take)
    head_1, single = chain.jacobians(x, take, chunk_words=1)
    assert (
        set(whole) == set(single) == {n for n, _ in model.named_parameters() if not n.startswith(f"{len(model) - 1}.")}
    )
    assert torch.equal(head, head_1)
    for name_ in whole:
        torch.testing.assert_close(whole[name_], single[name_], rtol=1e-12, atol=0)


def test_fused_features_reuse_their_buffers_safely():
    """Repeated calls of different sizes reuse the kept buffers and stay right; features used after their side's
    buffers were reused raise instead of giving a wrong number."""
    model, image = CHAINS["pooled-relu"]()
    torch.manual_seed(3)
    xs = [torch.randn(n, *image, dtype=DT) for n in (5, 2, 4)]
    for x in [*xs, xs[0]]:
        J = dense_jacobian(model, x)
        assert rel_err(nk.empirical_ntk(model, x, method="structured"), kernel_from_jacobians(J, J, True)) < TOL
    method = structured(model, xs[0])
    stale = method.features(xs[0])
    method.features(xs[1])
    with pytest.raises(RuntimeError, match="reused"):
        method.pair(stale, stale, False)
    method.pair(method.features2(xs[2]), method.features(xs[0]), False)  # one of each side: fine


def test_pooled_head_collapses_the_last_convolution_for_the_traced_kernel_only():
    """The last convolution's cotangents come for one output (traced) or all O (full); the layer below always O."""
    model, image = CHAINS["pooled-relu"]()
    x = torch.randn(4, *image, dtype=DT)
    traced, full = recognised(model, x), recognised(model, x, traced=False)
    _, cots, _ = traced.capture(x)
    assert [c.shape[1] for c in cots] == [3, 3, 1, 3]  # one call per convolution, then the head
    _, cots_full, _ = full.capture(x)
    assert [c.shape[1] for c in cots_full] == [3, 3, 3, 3]
    _, cots_flat, _ = recognised(*_flatten_head(), traced=True).capture(torch.randn(4, 2, 5, 5, dtype=DT))
    assert [c.shape[1] for c in cots_flat] == [3, 3]  # no pooling: nothing to collapse


def _flatten_head():
    model = chain_of(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 3))
    return model, torch.randn(4, 2, 5, 5, dtype=DT)


class Doubled(nn.Conv2d):
    def forward(self, x):
        return 2 * super().forward(x)


def test_what_is_not_a_conv_chain():
    """Other layers, hooks, padding modes, asymmetric 'same' padding, pooling to more than one position, a missing
    head or anything after it keep the generic capture (and its exact kernel)."""
    x = torch.randn(3, 2, 5, 5, dtype=DT)

    def chain(*middle: nn.Module, head: tuple[nn.Module, ...] = (nn.Flatten(), nn.Linear(4, 2))) -> nn.Sequential:
        return chain_of(*middle, *head)

    pool = nn.AdaptiveAvgPool2d(1)
    assert recognised(chain(nn.Conv2d(2, 4, 3), nn.ReLU(), pool), x) is not None
    assert recognised(chain(Doubled(2, 4, 3), nn.ReLU(), pool), x) is None  # a subclass may change the forward
    assert recognised(chain(nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"), pool), x) is None
    assert recognised(chain(nn.Conv2d(2, 4, 2, padding="same"), pool), x) is None  # padded more on one side
    assert recognised(chain(nn.Conv2d(2, 4, 3), nn.GELU(), pool), x) is None
    assert recognised(chain(nn.Conv2d(2, 4, 3), nn.MaxPool2d(2), pool), x) is None
    assert recognised(chain(nn.Conv2d(2, 1, 3), nn.AdaptiveAvgPool2d(2)), x) is None
    assert recognised(chain(nn.Conv2d(2, 4, 3), pool, head=(nn.Flatten(),)), x) is None  # no head
    assert recognised(chain(nn.Conv2d(2, 4, 3), pool, head=(nn.Flatten(), nn.Linear(4, 2), nn.ReLU())), x) is None
    assert recognised(chain(nn.Conv2d(2, 4, 3), pool, head=(nn.Linear(1, 2),)), x) is None  # no Flatten
    hooked = chain(nn.Conv2d(2, 4, 3), nn.ReLU(), pool)
    hooked[1].register_forward_hook(lambda m, i, o: o * 3)
    assert recognised(hooked, x) is None
    J = dense_jacobian(hooked, x)
    assert rel_err(nk.empirical_ntk(hooked, x, method="structured"), kernel_from_jacobians(J, J, True)) < TOL
