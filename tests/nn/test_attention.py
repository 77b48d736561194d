"""SelfAttention (neural-tangents' GlobalSelfAttention; issue 13, missing item 1) and its kernel map.

References:
- neural-tangents 0.6.5's float64 kernels (tests/nt_reference, rtol 1e-10: float64 round-off) for every
  mechanism, both scalings, positional embeddings none/sum/concat with and without a decay function, in the
  values or not, several heads, 1-d and 2-d positions, attention on the input and after other layers, and two
  attention layers in a row;
- Monte Carlo over finite layers in both parameterizations (neural-tangents has no standard parameterization
  here, so this is the only check of its NTK): the NNGP from the empirical covariance of many output channels
  over independent draws, every entry of the full spatial layout; the NTK from empirical NTKs (kernel_mc.mc_ntk).
  Tolerance 4 standard errors + the finite-width bias 3/64 of the kernel's scale: the logits, the
  embeddings' empirical covariance and the heads converge at rate 1/width with widths >= 64 (theory.md §5.2).
"""

import pytest
import torch

import ntkit as nk
from kernel_mc import assert_matches, mc_ntk
from nt_reference import assert_matches_neural_tangents
from ntkit import nn as N
from ntkit.errors import InvalidArgumentError, ShapeError, UnsupportedError


def decay(d):
    return 1 / (1 + d)


NT_CASES = {
    "attention_softmax_sum": lambda: N.Sequential(
        N.Conv1d(2, 4, 1, W_std=1.3, b_std=0.2),
        N.ReLU(),
        N.SelfAttention(
            4,
            4,
            key_channels=3,
            value_channels=5,
            n_heads=2,
            W_key_std=1.2,
            W_query_std=0.9,
            W_value_std=1.1,
            W_out_std=1.3,
            b_std=0.2,
            pos_emb="sum",
            W_pos_emb_std=0.8,
            input_size=5,
        ),
        N.ReLU(),
        N.GlobalAvgPool(),
        N.Linear(4, 1),
    ),
    "attention_identity_sqrt_concat": lambda: N.Sequential(
        N.SelfAttention(
            2,
            4,
            key_channels=3,
            value_channels=5,
            n_heads=2,
            linear_scaling=False,
            mechanism="identity",
            W_key_std=1.2,
            W_query_std=0.7,
            W_out_std=0.9,
            b_std=0.1,
            pos_emb="concat",
            pos_emb_channels=3,
            W_pos_emb_std=1.1,
            pos_emb_decay_fn=decay,
            val_pos_emb=True,
            input_size=(3, 2),
        ),
        N.Erf(),
        N.Flatten(),
        N.Linear(24, 1),
    ),
    "attention_identity_sqrt_sum": lambda: N.Sequential(
        N.Conv1d(2, 4, 2, padding="same", W_std=1.3, b_std=0.2),
        N.Erf(),
        N.SelfAttention(
            4,
            4,
            key_channels=3,
            value_channels=5,
            linear_scaling=False,
            mechanism="identity",
            W_value_std=0.8,
            b_std=0.3,
            pos_emb="sum",
            W_pos_emb_std=0.6,
            input_size=4,
        ),
        N.GlobalAvgPool(),
        N.Linear(4, 1),
    ),
    "attention_relu_concat_2d": lambda: N.Sequential(
        N.Conv2d(2, 4, 2, padding="same", W_std=1.3, b_std=0.2),
        N.ReLU(),
        N.SelfAttention(
            4,
            4,
            key_channels=3,
            value_channels=5,
            n_heads=3,
            mechanism="relu",
            W_key_std=0.8,
            b_std=0.2,
            pos_emb="concat",
            pos_emb_channels=6,
            pos_emb_decay_fn=decay,
            pos_emb_p_norm=1,
            val_pos_emb=True,
            input_size=(3, 2),
        ),
        N.Erf(),
        N.GlobalAvgPool(),
        N.Linear(4, 1),
    ),
    "attention_abs_then_softmax": lambda: N.Sequential(
        N.Conv1d(2, 4, 1, W_std=1.3),
        N.ReLU(),
        N.SelfAttention(4, 4, key_channels=3, value_channels=5, n_heads=2, mechanism="abs", W_out_std=1.2),
        N.ReLU(),
        N.SelfAttention(
            4,
            4,
            key_channels=3,
            value_channels=5,
            n_heads=2,
            W_query_std=2.0,
            b_std=0.1,
            pos_emb="sum",
            pos_emb_decay_fn=lambda d: 0.5**d,
            val_pos_emb=True,
            input_size=4,
        ),
        N.Flatten(),
        N.Linear(16, 1),
    ),
    "attention_identity_linear": lambda: N.Sequential(
        N.Conv1d(2, 4, 1, W_std=1.1, b_std=0.1),
        N.ReLU(),
        N.SelfAttention(
            4, 4, key_channels=3, value_channels=5, n_heads=2, mechanism="identity", W_key_std=0.5, b_std=0.2
        ),
        N.GlobalAvgPool(),
        N.Linear(4, 1),
    ),
}


@pytest.mark.parametrize("name", NT_CASES)
def test_matches_neural_tangents(name):
    assert_matches_neural_tangents(name, NT_CASES[name]())


# ----- Monte Carlo over finite layers ---------------------------------------------------------------------------

WIDTH = 64
X = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def attention_net(out, parameterization, *, conv=None, **options):
    """[Conv1d(2, conv, 1)] -> SelfAttention(..., out) on X, (3, 2, 4)."""
    first = [] if conv is None else [N.Conv1d(2, conv, 1, W_std=1.2, b_std=0.3, parameterization=parameterization)]
    options = {"key_channels": WIDTH, "value_channels": WIDTH, "n_heads": 2} | options
    layer = N.SelfAttention(conv or 2, out, parameterization=parameterization, **options)
    return N.Sequential(*first, layer).double()


MC_CASES = {
    # softmax over deterministic inputs: the logits converge as key_channels grows
    "softmax_on_input": ("ntk", {"W_key_std": 1.5, "W_query_std": 1.2, "b_std": 0.2}),
    "softmax_sum_embeddings": (
        "standard",
        {"conv": WIDTH, "W_key_std": 1.5, "b_std": 0.2, "pos_emb": "sum", "W_pos_emb_std": 0.8, "input_size": 4},
    ),
    # 1/√d_k: the logits stay random; their second moments (all that one layer's kernels need) are exact
    "identity_sqrt_concat_decay": (
        "ntk",
        {
            "linear_scaling": False,
            "mechanism": "identity",
            "n_heads": 16,
            "key_channels": 16,
            "value_channels": 16,
            "pos_emb": "concat",
            "pos_emb_channels": 4 * WIDTH,
            "pos_emb_decay_fn": decay,
            "val_pos_emb": True,
            "input_size": 4,
            "b_std": 0.1,
            "W_query_std": 0.8,
        },
    ),
    "identity_sqrt_standard": (
        "standard",
        {"linear_scaling": False, "mechanism": "identity", "n_heads": 16, "key_channels": 16, "W_out_std": 1.3},
    ),
    # relu(G) has a kink at 0, where the finite logits' noise biases it by O(1/√width): embeddings correlated
    # across positions (R(s, s') >= 0.47) keep the logits away from it
    "relu_concat_standard": (
        "standard",
        {
            "mechanism": "relu",
            "pos_emb": "concat",
            "pos_emb_channels": 4 * WIDTH,
            "input_size": 4,
            "b_std": 0.1,
            "pos_emb_decay_fn": lambda d: 1 / (1 + d / 8),
        },
    ),
}


def mc_full_nngp(make_net, x, draws, out=256):
    """(mean, standard error) over ``draws`` networks of Σ_o y_o(x_n, s) y_o(x_m, s') / out, (N, N, P, P)."""
    with torch.no_grad():
        estimates = []
        for _ in range(draws):
            y = make_net(out)(x)
            estimates.append(torch.einsum("nos,mot->nmst", y, y) / out)
    stack = torch.stack(estimates)
    return stack.mean(0), stack.std(0) / draws**0.5


SLOW_MC = {"identity_sqrt_concat_decay"}  # 20 s under load (a Jacobian over 66k key weights per draw)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MC else n for n in MC_CASES])
def test_matches_monte_carlo(name):
    torch.manual_seed(1)
    parameterization, options = MC_CASES[name]

    def make(out):
        return attention_net(out, parameterization, **options)

    k = nk.kernel(make(1), X, get="nngp")
    assert_matches(k.nngp, mc_full_nngp(make, X, 30), bias=3 / WIDTH)
    flat = nk.kernel(N.Sequential(make(1), N.Flatten()), X)
    mc = mc_ntk(lambda: N.Sequential(make(4), N.Flatten()), X, None, 20, scale=1 / flat.sp_normalizer())
    assert_matches(flat.ntk, mc, bias=3 / WIDTH)


def small(**options):
    return N.SelfAttention(2, 3, key_channels=4, value_channels=4, **options)


def test_errors():
    x = torch.randn(2, 2, 5)
    with pytest.raises(UnsupportedError, match="mechanism='softmax' with linear_scaling=False"):
        nk.kernel(N.Sequential(small(linear_scaling=False), N.GlobalAvgPool()), x)
    with pytest.raises(UnsupportedError, match="mechanism='relu' with linear_scaling=False"):
        nk.kernel(N.Sequential(small(linear_scaling=False, mechanism="relu"), N.GlobalAvgPool()), x)
    with pytest.raises(UnsupportedError, match="spatial axes"):
        nk.kernel(small(), torch.randn(2, 2))
    with pytest.raises(ShapeError, match="expects 2 input channels"):
        nk.kernel(N.Sequential(N.Conv1d(2, 5, 1), small()), x)
    with pytest.raises(ShapeError, match=r"spatial shape \(4,\)"):
        nk.kernel(small(pos_emb="sum", input_size=4), x)
    with pytest.raises(ShapeError, match="spatial shape"):
        small(pos_emb="sum", input_size=4)(x)
    with pytest.raises(InvalidArgumentError, match="pos_emb_channels"):
        small(pos_emb="sum", pos_emb_channels=3, input_size=5)
    with pytest.raises(InvalidArgumentError, match="pos_emb must be"):
        small(pos_emb="rotary")
    with pytest.raises(InvalidArgumentError, match="W_key_std"):
        small(W_key_std=-1.0)
    with pytest.raises(InvalidArgumentError, match="not positive definite"):
        small(pos_emb="sum", input_size=5, pos_emb_decay_fn=lambda d: 1 + 0 * d)(x)
    with pytest.raises(UnsupportedError, match="mixes 'ntk' and 'standard'"):
        nk.kernel(N.Sequential(N.Conv1d(2, 2, 1), small(parameterization="standard")), x)


def test_finite_layer_shapes_and_parameters():
    """Output shape (N, out, *S) for 1-d and 2-d positions; tied keys and queries with linear scaling."""
    layer = N.SelfAttention(3, 5, key_channels=4, value_channels=6, n_heads=2, pos_emb="concat", input_size=(2, 3))
    assert layer(torch.randn(4, 3, 2, 3)).shape == (4, 5, 2, 3)
    assert layer.weight_query is None and layer.weight_key.shape == (2, 4, 6)
    untied = small(linear_scaling=False, mechanism="identity", b_std=0.1)
    assert untied.weight_query is not None and untied(torch.randn(2, 2, 7)).shape == (2, 3, 7)
    names = {name for name, _ in untied.named_parameters()}
    assert names == {"weight_key", "weight_query", "weight_value", "weight_out", "bias"}
