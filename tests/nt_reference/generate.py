"""Writes values.json: neural-tangents 0.6.5's float64 kernels for the architectures the tests compare against.

CI has no neural-tangents (JAX), so its values are stored as data. Regenerate with the interpreter that
/work/shared/anchors/neural-tangents-env.sh builds (any environment with neural-tangents 0.6.5 and jax):

    JAX_PLATFORMS=cpu /path/to/nt-venv/bin/python tests/nt_reference/generate.py [case names: only these]

Each case stores its inputs (channels first, as PyTorch; neural-tangents gets them channels last), and the NNGP
and NTK of ``kernel_fn(x1, x2)``. The ntkit side of each case is written in the test that reads it.
"""

import json
import sys
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
from neural_tangents import predict, stax  # noqa: E402

SP = {"parameterization": "standard"}


def cases():
    """name -> (stax layers, x1 shape (N, C, *S), x2 rows or None)."""
    yield "sp_one_dense", [stax.Dense(1, W_std=1.3, b_std=0.2, **SP)], (3, 4), None
    yield (
        "sp_two_dense",
        [
            stax.Dense(7, W_std=1.3, b_std=0.2, **SP),
            stax.Relu(),
            stax.Dense(1, W_std=1.1, b_std=0.1, **SP),
        ],
        (3, 4),
        2,
    )
    yield (
        "sp_three_dense",
        [
            stax.Dense(7, W_std=1.3, b_std=0.2, **SP),
            stax.Relu(),
            stax.Dense(11, W_std=1.1, b_std=0.1, **SP),
            stax.Erf(),
            stax.Dense(1, **SP),
        ],
        (3, 4),
        None,
    )
    yield (
        "sp_conv_flatten",
        [
            stax.Conv(6, (3, 3), padding="SAME", W_std=1.3, b_std=0.2, **SP),
            stax.Relu(),
            stax.Flatten(),
            stax.Dense(1, **SP),
        ],
        (2, 2, 5, 5),
        None,
    )
    yield (
        "sp_one_conv",
        [stax.Conv(1, (3, 3), padding="SAME", W_std=1.3, b_std=0.2, **SP), stax.Flatten()],
        (
            2,
            2,
            5,
            5,
        ),
        None,
    )

    conv = stax.Conv(4, (3, 3), padding="SAME", W_std=1.3, b_std=0.2)
    yield (
        "pool_avg_same_normalize_edges",
        [
            conv,
            stax.Relu(),
            stax.AvgPool((3, 3), (2, 2), "SAME", normalize_edges=True),
            stax.Flatten(),
            stax.Dense(1),
        ],
        (3, 2, 5, 6),
        2,
    )
    yield (
        "pool_avg_same",
        [
            conv,
            stax.Erf(),
            stax.AvgPool((2, 3), (2, 1), "SAME"),
            stax.Flatten(),
            stax.Dense(1),
        ],
        (3, 2, 5, 6),
        None,
    )
    yield (
        "pool_avg_circular",
        [
            conv,
            stax.Relu(),
            stax.AvgPool((3, 2), (1, 2), "CIRCULAR"),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 5, 6),
        None,
    )
    yield (
        "pool_sum",
        [
            conv,
            stax.Relu(),
            stax.SumPool((2, 2), (1, 1), "VALID"),
            stax.Conv(4, (2, 2), padding="SAME"),
            stax.Relu(),
            stax.GlobalSumPool(),
            stax.Dense(1),
        ],
        (3, 2, 4, 5),
        2,
    )
    yield (
        "pool_1d",
        [
            stax.Conv(4, (3,), padding="SAME", W_std=1.3, b_std=0.2),
            stax.Relu(),
            stax.AvgPool((2,), (2,), "SAME", normalize_edges=True),
            stax.Conv(4, (2,), padding="VALID"),
            stax.Erf(),
            stax.SumPool((3,), (1,), "CIRCULAR"),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 7),
        None,
    )
    yield (
        "pool_3d",
        [
            stax.Conv(4, (2, 3, 2), padding="SAME", W_std=1.3, b_std=0.2),
            stax.Relu(),
            stax.AvgPool((2, 2, 2), (1, 2, 1), "SAME", normalize_edges=True),
            stax.GlobalSumPool(),
            stax.Dense(1),
        ],
        (3, 2, 3, 4, 3),
        None,
    )
    yield (
        "conv_3d_flatten",
        [
            stax.Conv(4, (2, 2, 2), strides=(1, 2, 1), padding="SAME", W_std=1.3, b_std=0.2),
            stax.Erf(),
            stax.Flatten(),
            stax.Dense(1),
        ],
        (3, 2, 3, 4, 3),
        2,
    )
    yield (
        "layer_norm_spatial",
        [
            conv,
            stax.LayerNorm(axis=(1, 2, 3), eps=1e-5),
            stax.Relu(),
            stax.Conv(4, (2, 2), padding="SAME"),
            stax.LayerNorm(axis=(2, 3), eps=1e-3),
            stax.Erf(),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 4, 5),
        2,
    )
    yield (
        "conv_local_pooled",
        [
            stax.ConvLocal(4, (3, 2), padding="SAME", W_std=1.3, b_std=0.2),
            stax.Relu(),
            stax.Conv(4, (2, 2), padding="SAME", b_std=0.1),
            stax.Relu(),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 4, 5),
        2,
    )
    yield (
        "conv_local_standard_1d",
        [
            stax.ConvLocal(4, (3,), strides=(2,), padding="VALID", W_std=1.3, b_std=0.2, **SP),
            stax.Erf(),
            stax.ConvLocal(4, (2,), padding="SAME", b_std=0.1, **SP),
            stax.Relu(),
            stax.Flatten(),
            stax.Dense(1, **SP),
        ],
        (3, 2, 7),
        None,
    )
    yield (
        "conv_transpose_pooled",
        [
            stax.ConvTranspose(4, (3, 2), strides=(2, 1), padding="SAME", W_std=1.3, b_std=0.2),
            stax.Relu(),
            stax.ConvTranspose(4, (2, 3), strides=(1, 2), padding="VALID", b_std=0.1),
            stax.Erf(),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 3, 4),
        2,
    )
    yield (
        "conv_transpose_standard_1d",
        [
            stax.ConvTranspose(4, (2,), strides=(3,), padding="VALID", W_std=1.3, b_std=0.2, **SP),
            stax.Relu(),
            stax.ConvTranspose(4, (4,), strides=(2,), padding="SAME", **SP),
            stax.Relu(),
            stax.Flatten(),
            stax.Dense(1, **SP),
        ],
        (3, 2, 4),
        None,
    )
    # ImageResize on the input: after a convolution neural-tangents 0.6.5 resizes the axes in the wrong order
    # (its kernel is stored with the spatial axes reversed, which ImageResize ignores), so a non-square resize
    # there gives the kernel of the transposed resize.
    yield (
        "image_resize_linear",
        [
            stax.ImageResize((-1, 6, 8, -1), "linear"),
            conv,
            stax.Relu(),
            stax.ImageResize((-1, 12, 12, -1), "nearest"),
            stax.Conv(4, (3, 3), padding="SAME"),
            stax.Relu(),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 3, 4),
        None,
    )
    yield (
        "concat_spatial_pooled",
        [
            stax.FanOut(2),
            stax.parallel(
                stax.Conv(4, (3, 3), padding="SAME", W_std=1.3, b_std=0.2),
                stax.serial(stax.Conv(4, (2, 2), padding="SAME", b_std=0.1), stax.Relu(), stax.Conv(4, (2, 1))),
            ),
            stax.FanInConcat(axis=1),  # NHWC: the height
            stax.Relu(),
            stax.Conv(4, (3, 2), padding="SAME"),
            stax.Erf(),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 3, 4),
        2,
    )
    yield (
        "concat_spatial_flatten",
        [
            stax.FanOut(2),
            stax.parallel(stax.Conv(4, (3, 3), padding="SAME", W_std=1.3), stax.Conv(4, (1, 2), b_std=0.3)),
            stax.FanInConcat(axis=2),  # NHWC: the width
            stax.Relu(),
            stax.Flatten(),
            stax.Dense(1),
        ],
        (3, 2, 3, 4),
        None,
    )

    # Self-attention (1-d sequences and 2-d inputs; neural-tangents' Dense acts on channels, ntkit's Conv(1)).
    yield (
        "attention_softmax_sum",
        [
            stax.Conv(4, (1,), W_std=1.3, b_std=0.2),
            stax.Relu(),
            stax.GlobalSelfAttention(
                4,
                3,
                5,
                2,
                W_key_std=1.2,
                W_query_std=0.9,
                W_value_std=1.1,
                W_out_std=1.3,
                b_std=0.2,
                pos_emb_type="SUM",
                W_pos_emb_std=0.8,
            ),
            stax.Relu(),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 5),
        2,
    )
    yield (
        "attention_identity_sqrt_concat",
        [
            stax.GlobalSelfAttention(
                4,
                3,
                5,
                2,
                linear_scaling=False,
                attention_mechanism="IDENTITY",
                W_key_std=1.2,
                W_query_std=0.7,
                W_out_std=0.9,
                b_std=0.1,
                pos_emb_type="CONCAT",
                n_chan_pos_emb=3,
                W_pos_emb_std=1.1,
                pos_emb_decay_fn=lambda d: 1 / (1 + d),
                val_pos_emb=True,
            ),
            stax.Erf(),
            stax.Flatten(),
            stax.Dense(1),
        ],
        (3, 2, 3, 2),
        None,
    )
    yield (
        "attention_identity_sqrt_sum",
        [
            stax.Conv(4, (2,), padding="SAME", W_std=1.3, b_std=0.2),
            stax.Erf(),
            stax.GlobalSelfAttention(
                4,
                3,
                5,
                1,
                linear_scaling=False,
                attention_mechanism="IDENTITY",
                W_value_std=0.8,
                b_std=0.3,
                pos_emb_type="SUM",
                W_pos_emb_std=0.6,
            ),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 4),
        2,
    )
    yield (
        "attention_relu_concat_2d",
        [
            stax.Conv(4, (2, 2), padding="SAME", W_std=1.3, b_std=0.2),
            stax.Relu(),
            stax.GlobalSelfAttention(
                4,
                3,
                5,
                3,
                attention_mechanism="RELU",
                W_key_std=0.8,
                b_std=0.2,
                pos_emb_type="CONCAT",
                n_chan_pos_emb=6,
                pos_emb_decay_fn=lambda d: 1 / (1 + d),
                pos_emb_p_norm=1,
                val_pos_emb=True,
            ),
            stax.Erf(),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 3, 2),
        2,
    )
    yield (
        "attention_abs_then_softmax",
        [
            stax.Conv(4, (1,), W_std=1.3),
            stax.Relu(),
            stax.GlobalSelfAttention(4, 3, 5, 2, attention_mechanism="ABS", W_out_std=1.2),
            stax.Relu(),
            stax.GlobalSelfAttention(
                4,
                3,
                5,
                2,
                attention_mechanism="SOFTMAX",
                W_query_std=2.0,
                b_std=0.1,
                pos_emb_type="SUM",
                pos_emb_decay_fn=lambda d: 0.5**d,
                val_pos_emb=True,
            ),
            stax.Flatten(),
            stax.Dense(1),
        ],
        (3, 2, 4),
        None,
    )
    yield (
        "attention_identity_linear",
        [
            stax.Conv(4, (1,), W_std=1.1, b_std=0.1),
            stax.Relu(),
            stax.GlobalSelfAttention(4, 3, 5, 2, attention_mechanism="IDENTITY", W_key_std=0.5, b_std=0.2),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 5),
        2,
    )

    # FanInProd of branches that end in their own activations (independent) and the shared layer itself.
    yield (
        "product_independent_dense",
        [
            stax.Dense(5, W_std=1.3, b_std=0.2),
            stax.FanOut(3),
            stax.parallel(
                stax.serial(stax.Dense(5, W_std=1.2, b_std=0.1), stax.Relu()),
                stax.serial(stax.Dense(5, W_std=1.5), stax.Erf()),
                stax.Identity(),
            ),
            stax.FanInProd(),
            stax.Dense(1, b_std=0.1),
        ],
        (3, 4),
        2,
    )
    yield (
        "product_independent_conv",
        [
            stax.Conv(4, (3, 3), padding="SAME", W_std=1.3, b_std=0.2),
            stax.FanOut(2),
            stax.parallel(
                stax.serial(stax.Conv(4, (2, 2), padding="SAME", b_std=0.1), stax.Relu()),
                stax.serial(stax.Conv(4, (3, 3), padding="SAME"), stax.Sin()),
            ),
            stax.FanInProd(),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 3, 4),
        None,
    )

    # The standard parameterization's width multiplier s, and layers of both parameterizations in one network.
    yield (
        "sp_width_multiplier",
        [
            stax.Dense(5, W_std=1.3, b_std=0.2, s=(1, 3), **SP),
            stax.Relu(),
            stax.Dense(4, W_std=1.1, b_std=0.1, s=(3, 2), **SP),
            stax.Erf(),
            stax.Dense(1, s=(2, 1), **SP),
        ],
        (3, 4),
        2,
    )
    yield (
        "mixed_parameterization_dense",
        [
            stax.Dense(5, W_std=1.3, b_std=0.2),
            stax.Relu(),
            stax.Dense(6, W_std=1.1, b_std=0.1, **SP),
            stax.Erf(),
            stax.Dense(1, b_std=0.1),
        ],
        (3, 4),
        2,
    )
    yield (
        "mixed_parameterization_conv",
        [
            stax.Conv(4, (3, 3), padding="SAME", W_std=1.3, b_std=0.2, s=(1, 2), **SP),
            stax.Relu(),
            stax.Conv(4, (2, 2), padding="SAME", b_std=0.1),
            stax.Relu(),
            stax.GlobalAvgPool(),
            stax.Dense(1, **SP),
        ],
        (3, 2, 3, 4),
        None,
    )

    # ExpNormalized and Gabor.
    yield (
        "exp_normalized_gabor_dense",
        [
            stax.Dense(5, W_std=1.3, b_std=0.2),
            stax.ExpNormalized(gamma=0.8, shift=-0.5),
            stax.Dense(5, W_std=1.2, b_std=0.1),
            stax.Gabor(),
            stax.Dense(1),
        ],
        (3, 4),
        2,
    )
    yield (
        "exp_normalized_gabor_conv",
        [
            stax.Conv(4, (3, 3), padding="SAME", W_std=1.3, b_std=0.2),
            stax.Gabor(),
            stax.Conv(4, (2, 2), padding="SAME", W_std=1.5),
            stax.ExpNormalized(gamma=1.2),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 3, 4),
        None,
    )

    # Circular transposed convolutions: the diagonal layout (Flatten) and the full one (pooling).
    yield (
        "conv_transpose_circular_pooled",
        [
            stax.ConvTranspose(4, (3, 2), strides=(2, 1), padding="CIRCULAR", W_std=1.3, b_std=0.2),
            stax.Relu(),
            stax.ConvTranspose(4, (4, 3), strides=(1, 2), padding="CIRCULAR", b_std=0.1),
            stax.Erf(),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 3, 4),
        2,
    )
    yield (
        "conv_transpose_circular_flatten",
        [
            stax.ConvTranspose(4, (5,), strides=(2,), padding="CIRCULAR", W_std=1.3, b_std=0.2),
            stax.Relu(),
            stax.ConvTranspose(4, (3,), strides=(3,), padding="CIRCULAR", **SP),
            stax.Relu(),
            stax.Flatten(),
            stax.Dense(1),
        ],
        (3, 2, 4),
        None,
    )

    # Graph aggregation over a fixed weighted adjacency (nodes on the one spatial axis): graph_inputs gives it.
    yield (
        "aggregate_graph",
        [
            stax.Conv(4, (1,), W_std=1.3, b_std=0.2),
            stax.Aggregate(),
            stax.Relu(),
            stax.Conv(4, (1,), b_std=0.1),
            stax.Aggregate(),
            stax.Erf(),
            stax.GlobalSumPool(),
            stax.Dense(1),
        ],
        (3, 2, 4),
        2,
    )


#: The graph of each Aggregate case: A[i, j] the weight of the edge i -> j (y_j = Σ_i A[i, j] x_i).
ADJACENCY = {
    "aggregate_graph": np.array(
        [[0.0, 1.0, 0.5, 0.0], [1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [0.3, 0.0, 1.0, 1.0]]
    )
}

#: The input value that marks masked entries in the masked cases (neural-tangents' mask_constant).
MASK = 1000.0


def masked_cases():
    """name -> (stax layers, x1 shape, x2 rows or None, unmasked lengths of x1's and x2's examples along the last
    spatial axis: the positions after them have every channel set to MASK)."""
    yield (
        "masked_attention_softmax",
        [
            stax.Conv(4, (1,), W_std=1.3, b_std=0.2),
            stax.Relu(),
            stax.GlobalSelfAttention(4, 3, 5, 2, W_key_std=1.2, b_std=0.2, pos_emb_type="SUM", W_pos_emb_std=0.8),
            stax.Relu(),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 6),
        2,
        ([6, 4, 2], [3, 6]),
    )
    yield (
        "masked_identity_sqrt_concat",
        [
            stax.Conv(4, (3,), padding="SAME", W_std=1.3, b_std=0.2),
            stax.Erf(),
            stax.GlobalSelfAttention(
                4,
                3,
                5,
                2,
                linear_scaling=False,
                attention_mechanism="IDENTITY",
                b_std=0.1,
                pos_emb_type="CONCAT",
                n_chan_pos_emb=3,
                pos_emb_decay_fn=lambda d: 1 / (1 + d),
                val_pos_emb=True,
            ),
            stax.Relu(),
            stax.Flatten(),
            stax.Dense(1),
        ],
        (3, 2, 5),
        None,
        ([5, 3, 1], None),
    )
    yield (
        "masked_conv_valid_2d",
        [
            stax.Conv(4, (2, 2), padding="VALID", W_std=1.3, b_std=0.2),
            stax.Relu(),
            stax.Conv(4, (3, 3), padding="SAME", b_std=0.1),
            stax.Erf(),
            stax.GlobalSelfAttention(4, 3, 5, 2, attention_mechanism="RELU", W_out_std=1.2),
            stax.GlobalSumPool(),
            stax.Dense(1),
        ],
        (3, 2, 3, 5),
        2,
        ([5, 4, 2], [3, 5]),
    )
    # Masks through the layers that gained a mask rule: window pooling, ConvLocal, ConvTranspose, ImageResize,
    # LayerNorm over spatial axes and spatial concatenation (NHWC here; the mask runs along W).
    lengths = ([6, 4, 2], [3, 6])
    yield (
        "masked_pooling",
        [
            stax.Conv(4, (2, 2), padding="SAME", W_std=1.3, b_std=0.2),
            stax.Relu(),
            stax.AvgPool((2, 3), (1, 2), "SAME"),
            stax.Conv(4, (1, 2), padding="SAME", b_std=0.1),
            stax.Erf(),
            stax.AvgPool((2, 2), (1, 1), "SAME", normalize_edges=True),
            stax.Conv(4, (1, 1)),
            stax.Relu(),
            stax.SumPool((1, 2), (1, 2), "VALID"),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 3, 6),
        2,
        lengths,
    )
    yield (
        "masked_conv_local",
        [
            stax.ConvLocal(4, (2, 3), padding="SAME", W_std=1.3, b_std=0.2),
            stax.Relu(),
            stax.ConvLocal(4, (1, 2), (1, 2), padding="VALID", b_std=0.1),
            stax.Relu(),
            stax.Flatten(),
            stax.Dense(1),
        ],
        (3, 2, 3, 6),
        2,
        lengths,
    )
    yield (
        "masked_conv_transpose",
        [
            stax.ConvTranspose(4, (2, 3), (1, 2), padding="SAME", W_std=1.3, b_std=0.2),
            stax.Relu(),
            stax.ConvTranspose(4, (3, 2), (2, 3), padding="VALID", b_std=0.1),
            stax.Erf(),
            stax.ConvTranspose(4, (1, 3), (1, 2), padding="CIRCULAR"),
            stax.Relu(),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 3, 6),
        2,
        lengths,
    )
    yield (
        "masked_resize",
        [
            stax.Conv(4, (1, 1), W_std=1.3, b_std=0.2),
            stax.Relu(),
            stax.ImageResize((-1, 8, 8, -1), "linear"),
            stax.Conv(4, (2, 2), padding="SAME", b_std=0.1),
            stax.Relu(),
            stax.ImageResize((-1, 7, 7, -1), "nearest"),
            stax.Conv(4, (1, 1)),
            stax.Relu(),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 5, 5),
        2,
        ([5, 3, 1], [2, 5]),
    )
    yield (
        "masked_layer_norm_spatial",
        [
            stax.Conv(4, (2, 2), padding="SAME", W_std=1.3, b_std=0.2),
            stax.LayerNorm(axis=(1, 2, 3)),
            stax.Relu(),
            stax.Conv(4, (1, 2), padding="SAME", b_std=0.1),
            stax.LayerNorm(axis=(2, 3)),
            stax.Erf(),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 3, 6),
        2,
        lengths,
    )
    yield (
        "masked_exp_normalized",
        [
            stax.Conv(4, (1, 1), W_std=1.3, b_std=0.2),
            stax.ExpNormalized(gamma=0.8, shift=-0.5),
            stax.Conv(4, (1, 2), padding="SAME", b_std=0.1),
            stax.Gabor(),
            stax.Conv(4, (2, 2), padding="SAME"),
            stax.Relu(),
            stax.Dropout(0.7),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 3, 6),
        2,
        lengths,
    )
    yield (
        "masked_concat_spatial",
        [
            stax.FanOut(2),
            stax.parallel(
                stax.Conv(4, (1, 2), padding="SAME", W_std=1.3, b_std=0.2),
                stax.Conv(4, (2, 1), padding="SAME", b_std=0.1),
            ),
            stax.FanInConcat(axis=2),
            stax.Relu(),
            stax.Conv(4, (1, 3), padding="SAME"),
            stax.Relu(),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 3, 6),
        2,
        lengths,
    )


def predict_trace_axes_conv(rng):
    """predict.gradient_descent_mse on the outputs (N, H, W, C) of a conv network without pooling, channels traced
    (trace_axes=(-1,)): the NTK of N + M inputs (N, N, H, H', W, W'), targets, initial outputs, and the flow's
    outputs at lr and t (channels first, as ntkit)."""
    n, m, lr, t = 5, 3, 0.8, 3.0
    x = rng.randn(n + m, 2, 4, 3)
    y, fx0 = rng.randn(n, 3, 4, 3), 0.1 * rng.randn(n + m, 3, 4, 3)
    _, _, kernel_fn = stax.serial(
        stax.Conv(8, (3, 3), padding="SAME", W_std=1.5, b_std=0.1),
        stax.Relu(),
        stax.Conv(3, (3, 3), padding="SAME", W_std=1.5, b_std=0.1),
    )
    ntk = kernel_fn(channels_last(x), None, "ntk")
    p = predict.gradient_descent_mse(ntk[:n, :n], channels_last(y), lr, trace_axes=(-1,))
    train, test = p(t, channels_last(fx0[:n]), channels_last(fx0[n:]), ntk[n:, :n])
    first = lambda a: np.moveaxis(np.asarray(a), -1, 1)  # noqa: E731
    return {
        "x1": x.tolist(),
        "ntk": np.asarray(ntk).tolist(),
        "y": y.tolist(),
        "fx0": fx0.tolist(),
        "lr": lr,
        "t": t,
        "train": first(train).tolist(),
        "test": first(test).tolist(),
    }


def branches_dense_conv(rng):
    """FanOut(2) -> parallel(Dense (on channels, ntkit's 1x1 convolution), a conv branch) -> FanInSum on images
    (one input, one output). (A Flatten-Dense branch next to a conv branch fails in neural-tangents 0.6.5's
    requirements check: a None channel axis compared with an int.)"""
    x1, x2 = rng.randn(3, 2, 4, 4), rng.randn(2, 2, 4, 4)
    _, _, kernel_fn = stax.serial(
        stax.FanOut(2),
        stax.parallel(
            stax.Dense(6, W_std=1.3, b_std=0.2),
            stax.serial(
                stax.Conv(4, (3, 3), padding="SAME", W_std=1.4, b_std=0.1),
                stax.Relu(),
                stax.Conv(6, (2, 2), padding="SAME", W_std=1.2),
            ),
        ),
        stax.FanInSum(),
        stax.Erf(),
        stax.GlobalAvgPool(),
        stax.Dense(1, b_std=0.1),
    )
    k = kernel_fn(channels_last(x1), channels_last(x2), ("nngp", "ntk"))
    return {
        "x1": x1.tolist(),
        "x2": x2.tolist(),
        "nngp": np.asarray(k.nngp).tolist(),
        "ntk": np.asarray(k.ntk).tolist(),
    }


def two_inputs_concat(rng):
    """Two inputs, a vector (N, 5) and an image (N, 2, 3, 4): parallel(Dense-Relu, Conv-Relu-GlobalAvgPool) ->
    FanInConcat (channels) -> Dense (several inputs, one output)."""
    x1 = (rng.randn(3, 5), rng.randn(3, 2, 3, 4))
    x2 = (rng.randn(2, 5), rng.randn(2, 2, 3, 4))
    _, _, kernel_fn = stax.serial(
        stax.parallel(
            stax.serial(stax.Dense(4, W_std=1.3, b_std=0.2), stax.Relu()),
            stax.serial(stax.Conv(6, (2, 2), padding="SAME", W_std=1.5, b_std=0.1), stax.Relu(), stax.GlobalAvgPool()),
        ),
        stax.FanInConcat(axis=-1),
        stax.Dense(1, W_std=1.1, b_std=0.1),
    )
    k = kernel_fn([channels_last(x) for x in x1], [channels_last(x) for x in x2], ("nngp", "ntk"))
    return {
        "x1_a": x1[0].tolist(),
        "x1_b": x1[1].tolist(),
        "x2_a": x2[0].tolist(),
        "x2_b": x2[1].tolist(),
        "nngp": np.asarray(k.nngp).tolist(),
        "ntk": np.asarray(k.ntk).tolist(),
    }


def two_outputs(rng):
    """A shared Dense trunk, FanOut(2) and parallel(Relu-Dense, Erf-Dense) left as two outputs: one kernel each."""
    x1 = rng.randn(3, 4)
    _, _, kernel_fn = stax.serial(
        stax.Dense(5, W_std=1.3, b_std=0.2),
        stax.FanOut(2),
        stax.parallel(
            stax.serial(stax.Relu(), stax.Dense(1, W_std=1.2, b_std=0.1)),
            stax.serial(stax.Erf(), stax.Dense(1, W_std=0.9)),
        ),
    )
    ks = kernel_fn(x1, None, ("nngp", "ntk"))
    return {
        "x1": x1.tolist(),
        "nngp": [np.asarray(k.nngp).tolist() for k in ks],
        "ntk": [np.asarray(k.ntk).tolist() for k in ks],
    }


#: Cases that are not a kernel of stax layers: name -> function of the random state returning the stored values.
OTHER_CASES = {
    "predict_trace_axes_conv": predict_trace_axes_conv,
    "branches_dense_conv": branches_dense_conv,
    "two_inputs_concat": two_inputs_concat,
    "two_outputs": two_outputs,
}


def graph_cases():
    """name -> (stax layers, x1 shape, x2 rows or None, function (rng, N1, N2) -> the per-example patterns)."""

    def dense(rng, n1, n2, nodes=5):
        return tuple(rng.rand(n, nodes, nodes) * (rng.rand(n, nodes, nodes) < 0.6) for n in (n1, n2))

    def sparse(rng, n1, n2, nodes=5, edges=7):
        """(N, edges, 2) integer (tail, head) edges, repeats allowed, each example's last few (-1, -1) padding."""
        out = []
        for n in (n1, n2):
            p = rng.randint(0, nodes, size=(n, edges, 2))
            for example in range(n):
                p[example, edges - example :] = -1
            out.append(p)
        return tuple(out)

    yield (
        "aggregate_per_example_dense",
        [
            stax.Conv(4, (1,), W_std=1.3, b_std=0.2),
            stax.Aggregate(),
            stax.Relu(),
            stax.Aggregate(),
            stax.Conv(4, (1,), b_std=0.1),
            stax.Erf(),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 5),
        2,
        dense,
    )
    yield (
        "aggregate_per_example_sparse",
        [
            stax.Conv(4, (1,), W_std=1.2, b_std=0.3),
            stax.Aggregate(implementation="SPARSE"),
            stax.Relu(),
            stax.Conv(4, (1,), W_std=1.4),
            stax.Aggregate(implementation="SPARSE"),
            stax.Relu(),
            stax.GlobalSumPool(),
            stax.Dense(1),
        ],
        (3, 2, 5),
        2,
        sparse,
    )
    yield (
        "aggregate_per_example_rows",
        [
            stax.Conv(4, (1, 1), W_std=1.3, b_std=0.2),
            stax.Aggregate(aggregate_axis=2),
            stax.Relu(),
            stax.Conv(4, (2, 1), padding="SAME", b_std=0.1),
            stax.Aggregate(aggregate_axis=2),
            stax.Relu(),
            stax.GlobalAvgPool(),
            stax.Dense(1),
        ],
        (3, 2, 3, 5),
        None,
        dense,
    )

    # The pixels of (N, C, 3, 4) images are the nodes (aggregate_axis over both spatial axes: NHWC 1 and 2).
    def dense_grid(rng, n1, n2, grid=(3, 4)):
        return tuple(rng.rand(n, *grid, *grid) * (rng.rand(n, *grid, *grid) < 0.4) for n in (n1, n2))

    def sparse_grid(rng, n1, n2, grid=(3, 4), edges=9):
        """(N, edges, 2, 2): the (row, column) of each edge's tail and head, padded with -1 at the end."""
        out = []
        for n in (n1, n2):
            p = np.stack([rng.randint(0, size, size=(n, edges, 2)) for size in grid], axis=2)
            for example in range(n):
                p[example, edges - 2 * example :] = -1
            out.append(p)
        return tuple(out)

    pixels = [
        stax.Conv(4, (1, 1), W_std=1.3, b_std=0.2),
        stax.Aggregate(aggregate_axis=(1, 2)),
        stax.Relu(),
        stax.Conv(4, (2, 2), padding="SAME", b_std=0.1),
        stax.Aggregate(aggregate_axis=(1, 2)),
        stax.Erf(),
        stax.GlobalSumPool(),
        stax.Dense(1),
    ]
    yield "aggregate_pixels_dense", pixels, (3, 2, 3, 4), 2, dense_grid
    # Edge lists over two axes, given to neural-tangents' DENSE implementation through grid_to_dense (its to_dense
    # route): after a Conv (its kernel's spatial axes reversed) neural-tangents 0.6.5's SPARSE kernel over several
    # axes differs from its own DENSE one on the same graphs.
    yield "aggregate_pixels_sparse", pixels, (3, 2, 3, 4), None, sparse_grid


def grid_to_dense(edges, grid):
    """(N, E, K, 2) edges with -1 padding -> (N, *grid, *grid) edge counts (a plain loop: the reference for
    ntkit's conversion)."""
    dense = np.zeros((len(edges), *grid, *grid))
    for example, graph in enumerate(edges):
        for coordinates in graph:
            tail, head = tuple(coordinates[:, 0]), tuple(coordinates[:, 1])
            if min(tail + head) >= 0:
                dense[(example, *tail, *head)] += 1.0
    return dense


#: Graph cases whose edge lists neural-tangents gets as dense adjacencies over this grid of nodes.
VIA_DENSE = {"aggregate_pixels_sparse": (3, 4)}


def graph_fields(patterns, n2):
    """The stored graphs of a case: pattern1, and pattern2 when x2 is given (none for other cases)."""
    if patterns is None:
        return {}
    return {"pattern1": patterns[0].tolist(), "pattern2": None if n2 is None else patterns[1].tolist()}


def channels_last(x):
    return np.moveaxis(x, 1, -1) if x.ndim > 2 else x


def main(only=()):
    """Writes every case, or with case names given only those (the others keep their stored values; the inputs
    are drawn in the same order either way)."""
    rng = np.random.RandomState(0)
    path = Path(__file__).with_name("values.json")
    out = json.loads(path.read_text()) if only else {}
    all_cases = (
        [(*case, None, None) for case in cases()]
        + [(*case, None) for case in masked_cases()]
        + [(name, layers, shape, n2, None, graphs) for name, layers, shape, n2, graphs in graph_cases()]
    )
    for name, layers, shape, n2, lengths, graphs in all_cases:
        x1 = rng.randn(*shape)
        x2 = None if n2 is None else rng.randn(n2, *shape[1:])
        patterns = None if graphs is None else graphs(rng, len(x1), len(x1) if n2 is None else n2)
        if lengths is not None:
            for x, unmasked in zip((x1, x2), lengths, strict=True):
                for example, length in enumerate(unmasked or ()):
                    x[example, ..., length:] = MASK
        if only and name not in only:
            continue
        _, _, kernel_fn = stax.serial(*layers)
        masking = {} if lengths is None else {"mask_constant": MASK}
        if name in ADJACENCY:  # one adjacency for every example, as neural-tangents' per-example pattern
            a = ADJACENCY[name]
            masking["pattern"] = tuple(np.broadcast_to(a, (n, *a.shape)) for n in (len(x1), n2))
        if patterns is not None:  # each example's own graph (x2=None: x1's twice)
            given = patterns if name not in VIA_DENSE else tuple(grid_to_dense(p, VIA_DENSE[name]) for p in patterns)
            masking["pattern"] = given if n2 is not None else (given[0], given[0])
        k = kernel_fn(channels_last(x1), None if x2 is None else channels_last(x2), ("nngp", "ntk"), **masking)
        out[name] = {
            "x1": x1.tolist(),
            "x2": None if x2 is None else x2.tolist(),
            "nngp": np.asarray(k.nngp).tolist(),
            "ntk": np.asarray(k.ntk).tolist(),
            **{key: value for key, value in masking.items() if key != "pattern"},
            **graph_fields(patterns, n2),
        }
    for name, make in OTHER_CASES.items():
        values = make(rng)
        if not only or name in only:
            out[name] = values
    path.write_text(json.dumps(out) + "\n")
    print(f"wrote {len(out)} cases to {path}")


if __name__ == "__main__":
    main(tuple(sys.argv[1:]))
