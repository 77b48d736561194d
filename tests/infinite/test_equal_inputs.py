"""Equal inputs give equal answers (issue 10 item 1; docs/infinite.md, "Equal inputs"): ``nk.kernel(net, x, x)``,
an equal copy for x2, duplicate rows and the cross formula on rows that x2 shares with x1 all give the values of
``nk.kernel(net, x)``, however deep the network and however chaotic its phase.

Why this needs a rule at all: in the chaotic phase (deep Erf with W_std = 3) the map of the correlation ρ has an
unstable fixed point at ρ = 1, so a correlation off 1 by one ulp grows by a factor χ > 1 per layer, and after 50
layers duplicate inputs looked independent (K(x, x) = 6.88 with x2=None, 2.69 with x2 = x.clone()). ntkit treats
a correlation within round-off of ±1 as ±1 at every nonlinearity and at the input, and passes x2 equal to x1 down
the x2=None path; pairs with |ρ| < 1 converge to an attracting fixed point, so their round-off is not amplified.
"""

import pytest
import torch

import ntkit as nk
from ntkit import nn as N


def tanh(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x)


#: Input width: at 20 the matrix product and the sum of squares of the input kernel round differently for these
#: inputs (at 5 they happen to agree, and the old code passed), so the test fails without the equal-inputs rule.
D_IN = 20

ACTIVATIONS = {
    "relu": N.ReLU,
    "erf": N.Erf,
    "gelu": N.GELU,
    # quadrature (degree 12, no accuracy check: consistency is tested here, not accuracy, at 1/10 of the cost)
    "tanh-quadrature": lambda: N.Elementwise(tanh, degree=12, tolerance=None),
}


def network(act: str, depth: int, w_std: float) -> N.Sequential:
    layers = [N.Linear(D_IN, 64, W_std=w_std, b_std=0.0)]
    for _ in range(depth - 1):
        layers += [ACTIVATIONS[act](), N.Linear(64, 64, W_std=w_std, b_std=0.0)]
    return N.Sequential(*layers, ACTIVATIONS[act](), N.Linear(64, 1, W_std=w_std, b_std=0.0))


def inputs(dtype: torch.dtype) -> torch.Tensor:
    """Six examples and two duplicates of the first two (rows 6, 7)."""
    base = torch.randn(6, D_IN, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    return torch.cat([base, base[:2]])


#: Round-off allowed where the two computations differ in the order of operations (matrix products over tiles of
#: other shapes, transcendental functions on tensors of other shapes): a few ulp per layer, not amplified (see the
#: module docstring), relative to the largest entry. Measured at most 1e-14 (float64) and 4e-6 (float32).
TOL = {torch.float64: 1e-11, torch.float32: 1e-4}

SWEEP = [
    (act, depth, w_std) for act in ("relu", "erf", "gelu", "tanh-quadrature") for depth, w_std in ((3, 1.0), (20, 2.0))
] + [("erf", 50, 3.0)]  # the chaotic phase


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    return float((a - b).abs().max()) <= TOL[dtype] * float(b.abs().max())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("act", "depth", "w_std"), SWEEP)
def test_equal_inputs_give_the_x2_none_values(act, depth, w_std, dtype):
    net = network(act, depth, w_std)
    x = inputs(dtype)
    ref = nk.kernel(net, x)
    for name in ("nngp", "ntk"):
        k = getattr(ref, name)
        # duplicate rows: the same row and column as the originals, and K(x, x') = K(x, x) between them
        assert close(k[6:], k[:2], dtype) and close(k[:, 6:], k[:, :2], dtype), name
        assert close(k[[0, 1], [6, 7]], k.diagonal()[:2], dtype), name
    # x2 equal to x1: the x2=None path itself, so exactly the same numbers
    k = nk.kernel(net, x, x.clone())
    assert torch.equal(k.nngp, ref.nngp) and torch.equal(k.ntk, ref.ntk)
    # the cross formula (x2 not equal to x1) on the rows x2 shares with x1, and tiles of 3 examples (duplicates in
    # different tiles): the values of the symmetric computation to round-off
    cross = nk.kernel(net, x[:3], x)
    tiled = nk.kernel(net, x, block_size=3)
    for name in ("nngp", "ntk"):
        assert close(getattr(cross, name), getattr(ref, name)[:3], dtype), name
        assert close(getattr(tiled, name), getattr(ref, name), dtype), name


def test_ensemble_uses_the_symmetric_path_on_the_chaotic_example():
    """Issue 10 item 1: the ensemble's mean was 17x off a float64 reference, because kernel_fn(x_train, x_train)
    took the cross path. Reference: the "ntk" posterior mean Θ_TX Θ⁻¹ Y written with a dense solve, from
    nk.kernel(net, x_train) (x2=None) and the test-train kernel; the chaotic kernel is well conditioned (its
    off-diagonal correlations sit at a small fixed point), so 1e-10."""
    net = network("erf", 50, 3.0)
    torch.manual_seed(1)
    x_train, x_test = torch.randn(10, D_IN, dtype=torch.float64), torch.randn(4, D_IN, dtype=torch.float64)
    y = torch.randn(10, 1, dtype=torch.float64)
    theta = nk.kernel(net, x_train).ntk
    theta_test = nk.kernel(net, x_test, x_train).ntk
    ref = theta_test @ torch.linalg.solve(theta, y)
    predict = nk.predict.gradient_descent_mse_ensemble(lambda a, b: nk.kernel(net, a, b), x_train, y, continuous=True)
    mean = predict(None, x_test, "ntk")
    assert float((mean - ref).abs().max()) < 1e-10 * float(ref.abs().max())
    # the train set itself: the targets, and the test-test kernel of the covariance from the symmetric path
    assert float((predict(None, None, "ntk") - y).abs().max()) < 1e-10
    _, cov = predict(None, x_test[:2].repeat(2, 1), "ntk", compute_cov=True)
    assert float((cov[:2, :2] - cov[2:, 2:]).abs().max()) <= 1e-12 * float(cov.abs().max())


def test_dropout_with_x2_equal_to_x1():
    """Issue 13 bug 4: with x2 passed and equal to x1, neural-tangents treats the inputs as the same examples (one
    dropout mask, the 1/(1 − p) factor on the batch diagonal) and ntkit treated them as different ones (37% off).
    Now x2 equal to x1 gives the x2=None kernel exactly. Examples that are only equal in value (duplicate rows,
    or rows x2 shares with a different x1) stay different examples with independent masks: with b_std = 0 after
    the dropout, their entries are exactly (1 − p) times the diagonal's (round-off only)."""
    p = 0.3
    net = N.Sequential(N.Linear(D_IN, 64), N.ReLU(), N.Dropout(p), N.Linear(64, 1, b_std=0.0))
    x = inputs(torch.float64)
    ref = nk.kernel(net, x)
    same = nk.kernel(net, x, x.clone())
    assert torch.equal(same.nngp, ref.nngp) and torch.equal(same.ntk, ref.ntk)
    diagonal = ref.nngp.diagonal()
    assert torch.allclose(ref.nngp[[0, 1], [6, 7]], (1 - p) * diagonal[:2], rtol=1e-14, atol=0)
    cross = nk.kernel(net, x[:3], x)
    assert torch.allclose(cross.nngp.diagonal(), (1 - p) * diagonal[:3], rtol=1e-14, atol=0)
