"""Masked inputs: ``nk.kernel(..., mask_constant=c)`` (neural-tangents' mask_constant; issue 13, missing item 1).

References:
- exact: positions masked at the end of a sequence are left out, so through pointwise layers, attention and
  global pooling an example's kernel equals that of the sequence cut to its unmasked positions (float64
  round-off, 1e-12); Flatten averages over all positions with zeros at the masked ones (the cut kernel times
  L/P, as neural-tangents);
- neural-tangents 0.6.5's float64 kernels with mask_constant (tests/nt_reference, rtol 1e-10): attention with
  embeddings, 1/√d_k identity attention after a "same" convolution, "valid" 2-d convolutions (the centre rule)
  with global sum pooling.
"""

import pytest
import torch
from torch import nn

import ntkit as nk
from nt_reference import assert_matches_neural_tangents
from ntkit import nn as N
from ntkit.errors import InvalidArgumentError, UnsupportedError

MASK = -5.0


def sequences(lengths, channels=2, size=6):
    """(len(lengths), channels, size) float64 inputs, every channel after position ``length`` set to MASK."""
    x = torch.randn(len(lengths), channels, size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for i, length in enumerate(lengths):
        x[i, :, length:] = MASK
    return x


def pointwise_net(pool, **attention):
    return N.Sequential(
        N.Conv1d(2, 4, 1, W_std=1.3, b_std=0.2),
        N.ReLU(),
        N.SelfAttention(4, 4, key_channels=3, value_channels=3, n_heads=2, b_std=0.1, **attention),
        N.Erf(),
        pool,
        N.Linear(4, 1),
    )


ATTENTION = {
    "softmax": {},
    "softmax_sum_decay": {"pos_emb": "sum", "input_size": 6, "pos_emb_decay_fn": lambda d: 1 / (1 + d)},
    "identity_sqrt_concat": {
        "linear_scaling": False,
        "mechanism": "identity",
        "pos_emb": "concat",
        "val_pos_emb": True,
        "input_size": 6,
    },
    "relu": {"mechanism": "relu"},
}


@pytest.mark.parametrize("name", ATTENTION)
@pytest.mark.parametrize("pool", ["avg", "sum"])
def test_masked_positions_are_cut_off(name, pool):
    options = ATTENTION[name]
    layer = N.GlobalAvgPool() if pool == "avg" else N.GlobalSumPool()
    lengths = [6, 4, 4, 2]
    x = sequences(lengths)
    k = nk.kernel(pointwise_net(layer, **options), x, mask_constant=MASK)

    def cut(length):
        return pointwise_net(layer, **({**options, "input_size": length} if "input_size" in options else options))

    for i, length in enumerate(lengths):
        ref = nk.kernel(cut(length), x[i : i + 1, :, :length])
        torch.testing.assert_close(k.nngp[i, i], ref.nngp[0, 0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(k.ntk[i, i], ref.ntk[0, 0], rtol=1e-12, atol=1e-12)
    pair = nk.kernel(cut(4), x[1:3, :, :4])  # the two examples of length 4, different values
    torch.testing.assert_close(k.nngp[1:3, 1:3], pair.nngp, rtol=1e-12, atol=1e-12)


def transformer(**attention):
    """A pre-pooling transformer block: Residual(attention), LayerNorm over channels, Residual(MLP), Dropout."""
    return N.Sequential(
        N.Conv1d(2, 4, 1, W_std=1.3, b_std=0.2),
        N.Residual(N.SelfAttention(4, 4, key_channels=3, value_channels=3, n_heads=2, b_std=0.1, **attention)),
        N.LayerNorm(4),
        N.Residual(N.Conv1d(4, 4, 1, W_std=1.2), N.ReLU(), N.Conv1d(4, 4, 1, b_std=0.1)),
        N.Parallel(N.Identity(), N.Erf(), fan_in="concat"),
        N.Dropout(0.2),
        N.GlobalAvgPool(),
        N.Linear(8, 1),
    )


def test_transformer_block_masked_positions_are_cut_off():
    lengths = [6, 5, 3]
    x = sequences(lengths)
    k = nk.kernel(transformer(pos_emb="sum", input_size=6), x, mask_constant=MASK)
    for i, length in enumerate(lengths):
        ref = nk.kernel(transformer(pos_emb="sum", input_size=length), x[i : i + 1, :, :length])
        torch.testing.assert_close(k.nngp[i, i], ref.nngp[0, 0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(k.ntk[i, i], ref.ntk[0, 0], rtol=1e-12, atol=1e-12)


def test_flatten_averages_over_all_positions():
    """Conv (pointwise) -> ReLU -> Flatten in the diagonal layout: the masked positions count as zeros."""
    net = N.Sequential(N.Conv1d(2, 4, 1, W_std=1.3, b_std=0.2), N.ReLU(), N.Flatten(), N.Linear(24, 1))
    x = sequences([6, 3])
    k = nk.kernel(net, x, mask_constant=MASK)
    cut = N.Sequential(N.Conv1d(2, 4, 1, W_std=1.3, b_std=0.2), N.ReLU(), N.Flatten(), N.Linear(12, 1))
    ref = nk.kernel(cut, x[1:, :, :3])
    # the Linear after Flatten: K' = W²·mean_s K(s, s) + b², and the mean runs over 6 positions, 3 of them zero
    torch.testing.assert_close(k.nngp[1, 1], ref.nngp[0, 0] * 0.5, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["masked_attention_softmax", "masked_identity_sqrt_concat", "masked_conv_valid_2d"])
def test_matches_neural_tangents(name):
    nets = {
        "masked_attention_softmax": lambda: N.Sequential(
            N.Conv1d(2, 4, 1, W_std=1.3, b_std=0.2),
            N.ReLU(),
            N.SelfAttention(
                4,
                4,
                key_channels=3,
                value_channels=5,
                n_heads=2,
                W_key_std=1.2,
                b_std=0.2,
                pos_emb="sum",
                W_pos_emb_std=0.8,
                input_size=6,
            ),
            N.ReLU(),
            N.GlobalAvgPool(),
            N.Linear(4, 1, b_std=None),
        ),
        "masked_identity_sqrt_concat": lambda: N.Sequential(
            N.Conv1d(2, 4, 3, padding="same", W_std=1.3, b_std=0.2),
            N.Erf(),
            N.SelfAttention(
                4,
                4,
                key_channels=3,
                value_channels=5,
                n_heads=2,
                linear_scaling=False,
                mechanism="identity",
                b_std=0.1,
                pos_emb="concat",
                pos_emb_channels=3,
                pos_emb_decay_fn=lambda d: 1 / (1 + d),
                val_pos_emb=True,
                input_size=5,
            ),
            N.ReLU(),
            N.Flatten(),
            N.Linear(20, 1, b_std=None),
        ),
        "masked_conv_valid_2d": lambda: N.Sequential(
            N.Conv2d(2, 4, 2, padding="valid", W_std=1.3, b_std=0.2),
            N.ReLU(),
            N.Conv2d(4, 4, 3, padding="same", b_std=0.1),
            N.Erf(),
            N.SelfAttention(4, 4, key_channels=3, value_channels=5, n_heads=2, mechanism="relu", W_out_std=1.2),
            N.GlobalSumPool(),
            N.Linear(4, 1, b_std=None),
        ),
    }
    assert_matches_neural_tangents(name, nets[name]())


MASKED_LAYERS = {
    "masked_pooling": lambda: N.Sequential(
        N.Conv2d(2, 4, 2, padding="same", W_std=1.3, b_std=0.2),
        N.ReLU(),
        N.AvgPool2d((2, 3), (1, 2), "same"),
        N.Conv2d(4, 4, (1, 2), padding="same", b_std=0.1),
        N.Erf(),
        N.AvgPool2d(2, 1, "same", count_include_pad=False),
        N.Conv2d(4, 4, 1, b_std=None),
        N.ReLU(),
        N.SumPool2d((1, 2), (1, 2), "valid"),
        N.GlobalAvgPool(),
        N.Linear(4, 1, b_std=None),
    ),
    "masked_conv_local": lambda: N.Sequential(
        N.ConvLocal2d(2, 4, (2, 3), (3, 6), padding="same", W_std=1.3, b_std=0.2),
        N.ReLU(),
        N.ConvLocal2d(4, 4, (1, 2), (3, 6), stride=(1, 2), padding="valid", b_std=0.1),
        N.ReLU(),
        N.Flatten(),
        N.Linear(36, 1, b_std=None),
    ),
    "masked_conv_transpose": lambda: N.Sequential(
        N.ConvTranspose2d(2, 4, (2, 3), stride=(1, 2), padding="same", W_std=1.3, b_std=0.2),
        N.ReLU(),
        N.ConvTranspose2d(4, 4, (3, 2), stride=(2, 3), padding="valid", b_std=0.1),
        N.Erf(),
        N.ConvTranspose2d(4, 4, (1, 3), stride=(1, 2), padding="same", padding_mode="circular", b_std=None),
        N.ReLU(),
        N.GlobalAvgPool(),
        N.Linear(4, 1, b_std=None),
    ),
    "masked_resize": lambda: N.Sequential(
        N.Conv2d(2, 4, 1, W_std=1.3, b_std=0.2),
        N.ReLU(),
        N.Resize((8, 8), mode="linear"),
        N.Conv2d(4, 4, 2, padding="same", b_std=0.1),
        N.ReLU(),
        N.Resize((7, 7), mode="nearest-exact"),
        N.Conv2d(4, 4, 1, b_std=None),
        N.ReLU(),
        N.GlobalAvgPool(),
        N.Linear(4, 1, b_std=None),
    ),
    "masked_layer_norm_spatial": lambda: N.Sequential(
        N.Conv2d(2, 4, 2, padding="same", W_std=1.3, b_std=0.2),
        N.LayerNorm((4, 3, 6), eps=1e-12),
        N.ReLU(),
        N.Conv2d(4, 4, (1, 2), padding="same", b_std=0.1),
        N.LayerNorm((4, 6), eps=1e-12),
        N.Erf(),
        N.GlobalAvgPool(),
        N.Linear(4, 1, b_std=None),
    ),
    "masked_exp_normalized": lambda: N.Sequential(
        N.Conv2d(2, 4, 1, W_std=1.3, b_std=0.2),
        N.ExpNormalized(gamma=0.8, shift=-0.5),
        N.Conv2d(4, 4, (1, 2), padding="same", b_std=0.1),
        N.Gabor(),
        N.Conv2d(4, 4, 2, padding="same", b_std=None),
        N.ReLU(),
        nn.Dropout(0.3),  # neural-tangents' Dropout(0.7): its rate is the keep probability
        N.GlobalAvgPool(),
        N.Linear(4, 1, b_std=None),
    ),
    "masked_concat_spatial": lambda: N.Sequential(
        N.Parallel(
            N.Conv2d(2, 4, (1, 2), padding="same", W_std=1.3, b_std=0.2),
            N.Conv2d(2, 4, (2, 1), padding="same", b_std=0.1),
            fan_in="concat",
            dim=3,
        ),
        N.ReLU(),
        N.Conv2d(4, 4, (1, 3), padding="same", b_std=None),
        N.ReLU(),
        N.GlobalAvgPool(),
        N.Linear(4, 1, b_std=None),
    ),
}


@pytest.mark.parametrize("name", MASKED_LAYERS)
def test_layers_with_mask_rules_match_neural_tangents(name):
    """Window pooling and ConvLocal (the mask at each window's centre), ConvTranspose (masked where any input
    reaching the output is; its circular form takes the "same" rule), ImageResize (masked where every input is;
    a square resize: neural-tangents 0.6.5 resizes the wrong axes of a non-square one after a convolution),
    LayerNorm over spatial axes (statistics over the unmasked positions), concatenation along a spatial axis
    (the masks concatenated), ExpNormalized and torch's Dropout (the mask kept), (N, C, 3, 6) or (N, C, 5, 5)
    inputs masked along the last axis: rtol 1e-10."""
    assert_matches_neural_tangents(name, MASKED_LAYERS[name]())


def cut_off_check(make_net, lengths):
    """Each example's masked kernel equals that of the network built for its unmasked length on the cut input."""
    x = sequences(lengths)
    k = nk.kernel(make_net(6), x, mask_constant=MASK)
    for i, length in enumerate(lengths):
        ref = nk.kernel(make_net(length), x[i : i + 1, :, :length])
        torch.testing.assert_close(k.nngp[i, i], ref.nngp[0, 0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(k.ntk[i, i], ref.ntk[0, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("torch_layer", [False, True])
def test_spatial_layer_norm_leaves_masked_positions_out(torch_layer):
    """LayerNorm over (C, L) after a ReLU (non-zero means: beyond neural-tangents) and a residual: statistics over
    the unmasked positions, so the kernel equals the cut sequence's (float64 round-off, 1e-12); the same for
    torch.nn.LayerNorm([C, L])."""

    def net(length):
        norm = nn.LayerNorm([4, length], elementwise_affine=False) if torch_layer else N.LayerNorm((4, length))
        return N.Sequential(
            N.Conv1d(2, 4, 1, W_std=1.3, b_std=0.2),
            N.ReLU(),
            norm,
            N.Residual(N.Conv1d(4, 4, 1, b_std=0.1), N.Erf()),
            N.Conv1d(4, 4, 1),
            N.ReLU(),
            N.GlobalAvgPool(),
            N.Linear(4, 1),
        )

    cut_off_check(net, [6, 4, 2])


def test_spatial_concatenation_joins_the_masks():
    """Two independent branches concatenated along the sequence: 2L unmasked positions of 12, so the kernel equals
    the cut sequence's (1e-12)."""

    def net(length):
        return N.Sequential(
            N.Parallel(N.Conv1d(2, 4, 1, W_std=1.3, b_std=0.2), N.Conv1d(2, 4, 1), fan_in="concat", dim=2),
            N.ReLU(),
            N.Conv1d(4, 4, 1, b_std=0.1),
            N.Erf(),
            N.GlobalSumPool(),
            N.Linear(4, 1),
        )

    cut_off_check(net, [6, 3, 1])


def test_resize_mask_follows_each_axis():
    """A non-square resize (beyond the neural-tangents check above): transposing the input's two spatial axes and
    the resize's sizes transposes nothing else, so the kernels agree (1e-12), masks along one axis included."""
    x = torch.randn(3, 2, 3, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x[1, :, :, 3:] = MASK
    x[2, :, 1:, :] = MASK

    def net(size):
        return N.Sequential(
            N.Conv2d(2, 4, 1, b_std=0.2), N.ReLU(), N.Resize(size, mode="linear"), N.GlobalAvgPool(), N.Linear(4, 1)
        )

    k = nk.kernel(net((5, 8)), x, mask_constant=MASK)
    flipped = nk.kernel(net((8, 5)), x.transpose(2, 3), mask_constant=MASK)
    torch.testing.assert_close(k.nngp, flipped.nngp, rtol=1e-12, atol=1e-12)
    unmasked = nk.kernel(net((5, 8)), x)
    assert not torch.allclose(k.nngp, unmasked.nngp)


def test_circular_pooling_is_refused_with_masks_as_in_neural_tangents():
    net = N.Sequential(N.Conv1d(2, 2, 1), N.ReLU(), N.AvgPool1d(3, 1, "same", padding_mode="circular"))
    with pytest.raises(UnsupportedError, match=r"circular pooling.*neural-tangents"):
        nk.kernel(N.Sequential(net, N.GlobalAvgPool()), sequences([6, 3]), mask_constant=MASK)


def test_unsupported_layers_say_so():
    net = N.Sequential(N.Conv1d(2, 2, 1), N.ReLU(), nn.AdaptiveAvgPool1d(1), N.Flatten())
    with pytest.raises(UnsupportedError, match=r"(?s)AdaptiveAvgPool1d.*does not support masked inputs"):
        nk.kernel(net, sequences([6, 3]), mask_constant=MASK)


def test_bad_mask_constant():
    with pytest.raises(InvalidArgumentError, match="mask_constant"):
        nk.kernel(N.Sequential(N.Conv1d(2, 2, 1), N.Flatten()), sequences([6, 3]), mask_constant=float("nan"))
