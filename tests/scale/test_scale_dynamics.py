"""nk.scale.gradient_descent_mse (Lanczos approximations of the training dynamics' matrix functions) against the
dense eigendecomposition of nk.predict.gradient_descent_mse, and the Lanczos routine against torch's matrix
exponential.

Tolerances: Lanczos with full reorthogonalization stopped at a relative change of 1e-12 agrees with the dense
result to ~1e-12 relative on these small, regularized kernels (condition number < 1e5); 1e-8 leaves room for
the round-off of the stored tiles (1e-15) times the growth of g_t ≈ t·c at large t.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("zarr")

from scale_helpers import inputs, mlp

import ntkit as nk
from ntkit.errors import InvalidArgumentError, NotConvergedError, ShapeError
from ntkit.scale.krylov import lanczos_functions

REG = 1e-3
TIMES = torch.tensor([0.0, 1.0, 10.0, 300.0, 5000.0])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dynamics")
    x, t = inputs(60, 5), inputs(9, 5, seed=2)
    g = torch.Generator().manual_seed(4)
    return {
        "y": torch.cat([torch.sin(x[:, :2]), x[:, 2:3] ** 2], dim=1),  # (60, 3)
        "f0": 0.3 * torch.randn(60, 3, generator=g, dtype=torch.float64),
        "ft0": 0.3 * torch.randn(9, 3, generator=g, dtype=torch.float64),
        "k": nk.scale.kernel(mlp(), x, store=root / "train.zarr", get="ntk", tile_size=16),  # ragged: 60 = 3 x 16 + 12
        "kt": nk.scale.kernel(mlp(), t, x, store=root / "test.zarr", get="ntk", tile_size=16),
        "theta": nk.kernel(mlp(), x).ntk,
        "theta_t": nk.kernel(mlp(), t, x).ntk,
    }


@pytest.mark.parametrize(
    ("loop", "source"),
    [
        ({"learning_rate": 1.0, "continuous": True}, "store"),
        ({"learning_rate": 2.0}, "tensor"),  # discrete GD (c λ_max < 2)
        ({"learning_rate": 1.0, "momentum": 0.9}, "store"),
        ({"learning_rate": 0.5, "momentum": 0.5, "continuous": True, "reduction": "sum"}, "tensor"),
    ],
)
def test_outputs_equal_the_dense_predictor(data, loop, source):
    k, kt = (data["k"], data["kt"]) if source == "store" else (data["theta"], data["theta_t"])
    fit = nk.scale.gradient_descent_mse(k, data["y"], diag_reg=REG, tol=1e-12, memory_budget=1000, **loop)
    train, test = fit(TIMES, data["f0"], data["ft0"], kt)
    dense = nk.predict.gradient_descent_mse(data["theta"], data["y"], diag_reg=REG, **loop)
    ref_train, ref_test = dense(TIMES, data["f0"], data["ft0"], data["theta_t"])
    assert train.shape == (5, 60, 3) and test.shape == (5, 9, 3)
    assert float((train - ref_train).abs().max()) <= 1e-8 * float(ref_train.abs().max())
    assert float((test - ref_test).abs().max()) <= 1e-8 * float(ref_test.abs().max())
    assert 1 < fit.steps <= 60


def test_scalar_time_and_vector_targets(data):
    y = data["y"][:, 0]
    fit = nk.scale.gradient_descent_mse(data["k"], y, learning_rate=1.0, diag_reg=REG, continuous=True, tol=1e-12)
    ref = nk.predict.gradient_descent_mse(data["theta"], y, 1.0, diag_reg=REG, continuous=True)(30.0)
    out = fit(30.0)
    assert out.shape == (60,)
    assert float((out - ref).abs().max()) <= 1e-8 * float(ref.abs().max())


def test_lanczos_exponential_converges_in_fewer_steps_than_the_dimension():
    """e^{−A} B for an SPD A (300 x 300, eigenvalues spread over [1e-3, 4]) from Lanczos equals
    torch.linalg.matrix_exp to 1e-10 after far fewer than 300 products (the Krylov approximation converges
    superlinearly for the exponential: Saad 1992)."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(1e-3, 4.0, 300, dtype=torch.float64)) @ q.T
    b = torch.randn(300, 2, generator=g, dtype=torch.float64)
    products = []

    def matvec(v):
        products.append(1)
        return a @ v

    result = lanczos_functions(matvec, b, lambda theta: torch.exp(-theta)[None], tol=1e-13, max_iter=300)
    expected = torch.linalg.matrix_exp(-a) @ b
    assert float((result.values[0] - expected).abs().max()) <= 1e-10 * float(expected.abs().max())
    assert result.steps == len(products) < 40
    assert 3.9 < result.largest <= 4.0 + 1e-12  # Ritz values lie inside the spectrum (Cauchy interlacing)


def test_errors(data):
    fit = nk.scale.gradient_descent_mse(data["k"], data["y"], diag_reg=REG)
    with pytest.raises(InvalidArgumentError, match="t must be finite"):
        fit(None)
    with pytest.raises(ShapeError, match="fx_train_0 must be"):
        fit(1.0, torch.zeros(5, 3))
    with pytest.raises(ShapeError, match="without k_test_train"):
        fit(1.0, 0.0, 0.0)
    with pytest.raises(NotConvergedError, match="after 2 steps"):
        nk.scale.gradient_descent_mse(data["k"], data["y"], diag_reg=REG, continuous=True, max_iter=2)(1000.0)
