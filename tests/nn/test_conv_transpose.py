"""Transposed convolutions ConvTranspose1d/2d/3d (issue 13, missing item 4).

References: the finite module against torch.nn.ConvTranspose2d with the same (transposed, flipped) weights
(float32 round-off, 1e-5) and its output sizes against JAX's; neural-tangents 0.6.5's ConvTranspose (float64
values in tests/nt_reference, both parameterizations, "same" and "valid", pooled so that covariances between
positions matter; rtol 1e-8: neural-tangents' arc-cosine loses √eps on the batch diagonal, see
tests/nn/test_conv_local.py); Monte Carlo over a finite 3-d network with the tolerance of
tests/nn/test_layer_kernels_mc.py (4 standard errors + 3/width).
"""

import pytest
import torch

from kernel_mc import assert_network_matches
from nt_reference import assert_matches_neural_tangents
from ntkit import nn as N
from ntkit.errors import InvalidArgumentError

SP = {"parameterization": "standard"}


def test_finite_layer_equals_torch_conv_transpose():
    reference = torch.nn.ConvTranspose2d(2, 3, (3, 2), stride=(2, 3), padding=1, bias=False)
    ours = N.ConvTranspose2d(2, 3, (3, 2), stride=(2, 3), padding=1, b_std=None, parameterization="standard")
    with torch.no_grad():
        ours.weight.copy_(reference.weight.transpose(0, 1).flip(-1, -2))
    x = torch.randn(2, 2, 4, 5)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("layer", "shape", "out"),
    [  # output sizes of jax.lax.conv_transpose / neural-tangents
        (N.ConvTranspose2d(2, 4, (3, 2), stride=(2, 1), padding="same"), (1, 2, 3, 4), (6, 4)),
        (N.ConvTranspose1d(2, 4, 2, stride=3, padding="valid"), (1, 2, 4), (12,)),
        (N.ConvTranspose1d(2, 4, 4, stride=2, padding="same"), (1, 2, 12), (24,)),
        (N.ConvTranspose2d(2, 4, (2, 3), stride=(1, 2)), (1, 2, 6, 4), (7, 9)),
    ],
)
def test_output_sizes_follow_jax(layer, shape, out):
    assert layer(torch.randn(shape)).shape[2:] == out


NT_NETS = {
    "conv_transpose_pooled": lambda: N.Sequential(
        N.ConvTranspose2d(2, 4, (3, 2), stride=(2, 1), padding="same", W_std=1.3, b_std=0.2),
        N.ReLU(),
        N.ConvTranspose2d(4, 4, (2, 3), stride=(1, 2), padding="valid", b_std=0.1),
        N.Erf(),
        N.GlobalAvgPool(),
        N.Linear(4, 1, b_std=None),
    ),
    "conv_transpose_standard_1d": lambda: N.Sequential(
        N.ConvTranspose1d(2, 4, 2, stride=3, W_std=1.3, b_std=0.2, **SP),
        N.ReLU(),
        N.ConvTranspose1d(4, 4, 4, stride=2, padding="same", b_std=None, **SP),
        N.ReLU(),
        N.Flatten(),
        N.Linear(96, 1, b_std=None, **SP),
    ),
}


@pytest.mark.parametrize("name", NT_NETS)
def test_matches_neural_tangents(name):
    assert_matches_neural_tangents(name, NT_NETS[name](), rtol=1e-8)


WIDTH = 64


def transposed_3d(width, out):
    return N.Sequential(
        N.ConvTranspose3d(2, width, 2, stride=(2, 1, 2), padding="same", W_std=1.4, b_std=0.3),
        N.ReLU(),
        N.ConvTranspose3d(width, width, (2, 3, 2), padding=1, W_std=1.4, b_std=0.3),
        N.Erf(),
        N.GlobalAvgPool(),
        N.Linear(width, out),
    )


def test_matches_monte_carlo():
    x = torch.randn(3, 2, 2, 2, 2, dtype=torch.float64)
    assert_network_matches(lambda out: transposed_3d(WIDTH, out), x, WIDTH)


def test_padding_larger_than_the_filter_is_refused():
    with pytest.raises(InvalidArgumentError, match="kernel_size - 1"):
        N.ConvTranspose2d(2, 3, 2, padding=2)


# ----- circular padding (neural-tangents' CIRCULAR): the "valid" output wrapped onto n·stride positions

CIRCULAR_NETS = {
    "conv_transpose_circular_pooled": lambda: N.Sequential(
        N.ConvTranspose2d(2, 4, (3, 2), stride=(2, 1), padding="same", padding_mode="circular", W_std=1.3, b_std=0.2),
        N.ReLU(),
        N.ConvTranspose2d(4, 4, (4, 3), stride=(1, 2), padding="same", padding_mode="circular", b_std=0.1),
        N.Erf(),
        N.GlobalAvgPool(),
        N.Linear(4, 1, b_std=None),
    ),
    "conv_transpose_circular_flatten": lambda: N.Sequential(
        N.ConvTranspose1d(2, 4, 5, stride=2, padding="same", padding_mode="circular", W_std=1.3, b_std=0.2),
        N.ReLU(),
        N.ConvTranspose1d(
            4, 4, 3, stride=3, padding="same", padding_mode="circular", b_std=None, parameterization="standard"
        ),
        N.ReLU(),
        N.Flatten(),
        N.Linear(96, 1, b_std=None),
    ),
}


@pytest.mark.parametrize("name", CIRCULAR_NETS)
def test_circular_matches_neural_tangents(name):
    assert_matches_neural_tangents(name, CIRCULAR_NETS[name](), rtol=1e-8)


def circular_net(width, out):
    return N.Sequential(
        N.ConvTranspose2d(2, width, 3, stride=2, padding="same", padding_mode="circular", W_std=1.4, b_std=0.3),
        N.ReLU(),
        N.ConvTranspose2d(width, width, (2, 3), padding="same", padding_mode="circular", W_std=1.4),
        N.ReLU(),
        N.AvgPool2d(2),
        N.Flatten(),
        N.Linear(4 * width, out),
    )


def test_circular_matches_monte_carlo():
    x = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    assert_network_matches(lambda out: circular_net(WIDTH, out), x, WIDTH)


def test_circular_finite_layer_wraps_around():
    # A circular transposed convolution commutes with cyclic shifts: shifting the input by one position shifts
    # the output by `stride` positions (what distinguishes it from zero padding).
    layer = N.ConvTranspose1d(1, 1, 4, stride=2, padding="same", padding_mode="circular", b_std=None)
    x = torch.randn(1, 1, 5)
    torch.testing.assert_close(layer(x.roll(1, -1)), layer(x).roll(2, -1))
    assert layer(x).shape == (1, 1, 10)
    with pytest.raises(InvalidArgumentError, match="kernel_size >= stride"):
        N.ConvTranspose1d(1, 1, 2, stride=3, padding="same", padding_mode="circular")
