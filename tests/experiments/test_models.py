"""The experiment networks: the NTK and standard parameterizations (theory.md §1.1-1.2), their kernels, and the
readout-only tangent kernel (= empirical NNGP of the last hidden layer, theory.md §3.3)."""

import math

import pytest
import torch

import ntkit as nk
from ntkit.errors import InvalidArgumentError
from ntkit.experiments import dense, dense_layers, mlp, readout_parameters, standard_from_ntk
from reference import dense_ntk, rel_err


def _dense(parameterization="ntk", b_std=0.3, seed=1):
    return dense(
        5, 3, W_std=1.5, b_std=b_std, parameterization=parameterization,
        generator=torch.Generator().manual_seed(seed), dtype=torch.float64,
    )  # fmt: skip


def test_dense_draws_from_its_generator_and_computes_the_formula():
    """ω, β ~ N(0, 1) from the generator (ω first), nothing from the global one; h = (σ_w/√n) x ωᵀ + σ_b β in the
    NTK parameterization, and the standard one stores W = (σ_w/√n) ω, b = σ_b β: the same function."""
    state = torch.random.get_rng_state()
    layer, std = _dense(), _dense("standard")
    assert torch.equal(torch.random.get_rng_state(), state)
    gen = torch.Generator().manual_seed(1)
    omega, beta = (
        torch.randn(3, 5, generator=gen, dtype=torch.float64),
        torch.randn(3, generator=gen, dtype=torch.float64),
    )
    assert torch.equal(layer.weight, omega) and torch.equal(layer.bias, beta)
    x = torch.randn(4, 5, dtype=torch.float64)
    expected = 1.5 / math.sqrt(5) * x @ omega.T + 0.3 * beta
    torch.testing.assert_close(layer(x), expected, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(std(x), expected, rtol=1e-14, atol=1e-14)
    assert _dense(b_std=None).bias is None


def test_standard_and_ntk_agree_at_init_and_their_gradients_differ_by_the_scale():
    x = torch.randn(6, 10, dtype=torch.float64)
    ntk, std = mlp(10, [32, 32], 2, seed=4), mlp(10, [32, 32], 2, seed=4, parameterization="standard")
    torch.testing.assert_close(ntk(x), std(x), rtol=1e-13, atol=1e-13)
    ntk(x).sum().backward()
    std(x).sum().backward()
    for (_, a), (_, b) in zip(dense_layers(ntk), dense_layers(std), strict=True):
        # h = s·x ωᵀ with W = s ω  ⇒  ∂f/∂ω = s ∂f/∂W and ∂f/∂β = σ_b ∂f/∂b
        torch.testing.assert_close(
            a.weight.grad, a.W_std / math.sqrt(a.in_features) * b.weight.grad, rtol=1e-12, atol=1e-14
        )
        torch.testing.assert_close(a.bias.grad, a.b_std * b.bias.grad, rtol=1e-12, atol=1e-14)


def test_output_variance_matches_the_nngp_recursion():
    """Monte Carlo over 4000 outputs of one wide network (outputs are i.i.d. given the last hidden layer) against
    K¹ = σ_w²‖x‖²/n₀ + σ_b², K^{l+1} = σ_w² K^l / 2 + σ_b² (ReLU diagonal, theory.md §4.1-4.2). Tolerance 10%:
    the Monte Carlo error of a variance from 4000 draws is 2.2% and the width-1024 fluctuation a few %."""
    x = torch.randn(3, 20, dtype=torch.float64)
    net = mlp(20, [1024, 1024], 4000, W_std=math.sqrt(2.0), b_std=math.sqrt(0.1), seed=2)
    with torch.no_grad():
        var = net(x).var(dim=1, unbiased=False)
    k = 2.0 * (x**2).sum(1) / 20 + 0.1
    for _ in range(2):
        k = 2.0 * k / 2 + 0.1
    torch.testing.assert_close(var, k, rtol=0.1, atol=0)


def test_empirical_ntk_of_mlp_matches_dense_reference():
    net = mlp(6, [16, 16], 1, seed=0)
    x = torch.randn(5, 6, dtype=torch.float64)
    assert rel_err(nk.empirical_ntk(net, x), dense_ntk(net, x)) < 1e-12


def test_readout_tangent_kernel_is_the_last_hidden_layer_nngp():
    net = mlp(6, [64, 64], 1, W_std=1.3, b_std=0.2, seed=3)
    x = torch.randn(5, 6, dtype=torch.float64)
    names = readout_parameters(net)
    assert names == ["4.weight", "4.bias"]
    with torch.no_grad():
        feats = net[:-1](x)  # x^L, the last hidden layer's activations
    expected = 1.3**2 * feats @ feats.T / 64 + 0.2**2  # σ_w² x^L·x^L'/n + σ_b²
    torch.testing.assert_close(nk.empirical_ntk(net, x, params=names), expected, rtol=1e-12, atol=1e-12)
    assert [n for n, _ in dense_layers(net)] == ["0", "2", "4"]


def test_mlp_rejects_bad_options_and_respects_dtype_device_seed():
    with pytest.raises(InvalidArgumentError, match="activation"):
        mlp(3, [4], 1, activation="gelu")
    with pytest.raises(InvalidArgumentError, match="widths"):
        mlp(3, [], 1)
    with pytest.raises(InvalidArgumentError, match="parameterization"):
        mlp(3, [4], 1, parameterization="mup")
    net = mlp(3, [4], 1, dtype=torch.float32, activation="erf")
    assert next(net.parameters()).dtype == torch.float32 and "parameterization='ntk'" in repr(net)
    assert torch.equal(mlp(3, [4], 1, seed=7)[0].weight, mlp(3, [4], 1, seed=7)[0].weight)
    assert not torch.equal(mlp(3, [4], 1, seed=7)[0].weight, mlp(3, [4], 1, seed=8)[0].weight)


def test_standard_from_ntk_is_the_same_function_with_standard_parameters():
    ntk = mlp(10, [32, 32], 2, seed=4)
    std = standard_from_ntk(ntk)
    reference = mlp(10, [32, 32], 2, seed=4, parameterization="standard")  # drawn directly in the standard form
    for a, b in zip(std.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-15, atol=0)
    assert all(m.parameterization == "standard" for _, m in dense_layers(std))
    assert all(m.parameterization == "ntk" for _, m in dense_layers(ntk))  # the original is untouched
    x = torch.randn(5, 10, dtype=torch.float64)
    torch.testing.assert_close(std(x), ntk(x), rtol=1e-13, atol=1e-13)
