"""nk.scale.gp_inference (Cholesky and preconditioned CG on stored kernels) against nk.predict.gp_inference
(dense float64 Cholesky on in-memory kernels) and the closed forms of theory.md §3.1-3.4.

Tolerances: Cholesky on the same float64 matrices agrees to round-off (1e-10 here); CG stops at a relative
residual of 1e-12, which on these well-regularized kernels (condition number < 1e5) bounds the error of the
weights by ~1e-7 relative; the issue asks for 1e-6.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("zarr")

from scale_helpers import inputs, mlp

import ntkit as nk
from ntkit.errors import (
    IllConditionedError,
    InvalidArgumentError,
    MemoryBudgetError,
    NotConvergedError,
    ShapeError,
)

REG = 1e-3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gp")
    x, t = inputs(70, 5), inputs(12, 5, seed=2)
    y = torch.cat([torch.sin(x[:, :2]), x[:, 2:3] ** 2], dim=1)  # (70, 3)
    return {
        "y": y,
        "k": nk.scale.kernel(mlp(), x, store=root / "train.zarr", tile_size=16),  # ragged: 70 = 4 x 16 + 6
        "kt": nk.scale.kernel(mlp(), t, x, store=root / "test.zarr", tile_size=16),
        "ref_k": nk.kernel(mlp(), x),
        "ref_t": nk.kernel(mlp(), t, x),
        "ref_tt": nk.kernel(mlp(), t),
    }


@pytest.mark.parametrize("get", ["nngp", "ntk", "ntkgp"])
@pytest.mark.parametrize("method", ["cholesky", "cg"])
def test_means_and_variances_equal_dense_gp_inference(data, get, method):
    fit = nk.scale.gp_inference(data["k"], data["y"], get=get, diag_reg=REG, method=method, tol=1e-12, rank=8)
    assert fit.method == method
    if method == "cg":
        assert 1 < fit.iterations < 200 and fit.residual <= 1e-12  # rank 8 < N: CG really iterates
    mean_ref, cov_ref = nk.predict.gp_inference(data["ref_k"], data["y"], REG)(get, data["ref_t"], data["ref_tt"])
    tol = 1e-10 if method == "cholesky" else 1e-6
    assert float((fit(data["kt"]) - mean_ref).abs().max()) <= tol
    if get != "ntk":  # nk.predict regularizes K inside the "ntk" covariance as well; checked below
        points = [0, 5, 11]
        var = fit.variance(data["kt"], data["ref_tt"], points=points)
        assert float((var - cov_ref.diagonal()[points]).abs().max()) <= tol


@pytest.mark.parametrize("method", ["cholesky", "cg"])
def test_ntk_variance_regularizes_only_the_inverted_kernel(data, method):
    """K_tt + m K mᵀ − 2 m K_Xt with m = Θ_tX (Θ + δI)⁻¹ and K as it is (DESIGN.md's diag_reg rule), dense."""
    theta, k = data["ref_k"].ntk, data["ref_k"].nngp
    delta = REG * float(theta.diagonal().mean())
    m = torch.linalg.solve(theta + delta * torch.eye(70, dtype=torch.float64), data["ref_t"].ntk.T).T
    expected = data["ref_tt"].nngp.diagonal() + ((m @ k) * m).sum(1) - 2 * (m * data["ref_t"].nngp).sum(1)
    fit = nk.scale.gp_inference(data["k"], data["y"], get="ntk", diag_reg=REG, method=method, tol=1e-12, rank=8)
    var = fit.variance(data["kt"], data["ref_tt"].nngp.diagonal())
    assert float((var - expected).abs().max()) <= 1e-6


def test_ntk_variance_equals_dense_gp_inference_without_regularization(data):
    fit = nk.scale.gp_inference(data["k"], data["y"], get="ntk", method="cholesky")
    _, cov = nk.predict.gp_inference(data["ref_k"], data["y"])("ntk", data["ref_t"], data["ref_tt"])
    var = fit.variance(data["kt"], {"nngp": data["ref_tt"].nngp})
    assert float((var - cov.diagonal()).abs().max()) <= 1e-8


def test_tensors_in_memory_and_auto_choice(data):
    theta, theta_t = data["ref_k"].ntk, data["ref_t"].ntk
    big = nk.scale.gp_inference(theta, data["y"][:, 0], diag_reg=REG)
    small = nk.scale.gp_inference(theta, data["y"][:, 0], diag_reg=REG, memory_budget=10_000, rank=8, tol=1e-12)
    assert (big.method, small.method) == ("cholesky", "cg")
    assert big(theta_t).shape == (12,)
    assert float((big(theta_t) - small(theta_t)).abs().max()) <= 1e-6


def test_the_preconditioner_cuts_iterations(data):
    # 87 iterations without, 29 with rank 48 (seed 0); the top eigenvalues of K + δI are mapped to λ̂_r + δ.
    plain = nk.scale.gp_inference(data["k"], data["y"], diag_reg=REG, method="cg", rank=0, tol=1e-10)
    nystrom = nk.scale.gp_inference(data["k"], data["y"], diag_reg=REG, method="cg", rank=48, tol=1e-10)
    assert nystrom.iterations < plain.iterations / 2


def test_pivoted_cholesky_preconditioner_cuts_iterations_and_keeps_the_solution(data):
    """CG with the pivoted-Cholesky preconditioner: fewer iterations than without, and the means of the dense
    Cholesky solve (nk.predict.gp_inference) to 1e-6, from the store (columns read tile by tile) and memory."""
    plain = nk.scale.gp_inference(data["k"], data["y"], diag_reg=REG, method="cg", preconditioner=None, tol=1e-12)
    mean_ref, _ = nk.predict.gp_inference(data["ref_k"], data["y"], REG)("ntk", data["ref_t"], data["ref_tt"])
    for k in (data["k"], data["ref_k"].ntk):
        fit = nk.scale.gp_inference(
            k,
            data["y"],
            diag_reg=REG,
            method="cg",
            preconditioner="pivoted_cholesky",
            rank=24,
            tol=1e-12,
            memory_budget=1000,
        )  # 1000 bytes: the store is streamed
        assert 1 < fit.iterations < 0.7 * plain.iterations  # 50-53 iterations with rank 24, 98-99 without
        assert float((fit(data["kt"]) - mean_ref).abs().max()) <= 1e-6


def test_pivoted_cholesky_factor_is_the_greedy_cholesky_of_the_kernel():
    """Full rank: L Lᵀ = K (float64 round-off); the first pivot is the largest diagonal entry and every later one
    the largest remaining diagonal of K − L Lᵀ, checked against a direct dense computation; the block size in
    which columns are read does not change the factor."""
    from ntkit.scale.preconditioners import PivotedCholeskyPreconditioner

    theta = nk.kernel(mlp(), inputs(30, 5)).ntk
    calls = []

    def columns(index):
        calls.append(len(index))
        return theta[:, index]

    full = PivotedCholeskyPreconditioner(theta.diagonal(), columns, 30, 0.0, block=8)
    assert float((full.factor @ full.factor.T - theta).abs().max()) <= 1e-12 * float(theta.abs().max())
    assert int(full.pivots[0]) == int(theta.diagonal().argmax())
    low = PivotedCholeskyPreconditioner(theta.diagonal(), lambda i: theta[:, i], 6, 1e-3, block=1)
    remaining = theta.diagonal().clone()
    for m, p in enumerate(low.pivots.tolist()):
        assert p == int(remaining.argmax())
        l_m = low.factor[:, : m + 1]
        remaining = (theta - l_m @ l_m.T).diagonal()
    assert torch.equal(full.pivots[:6], low.pivots)
    assert float((full.factor[:, :6] - low.factor).abs().max()) <= 1e-12
    assert sum(calls) < 60  # columns were read in blocks (at most twice the rank), not all N at each step
    r = torch.randn(30, 2, dtype=torch.float64)
    p_matrix = low.factor @ low.factor.T + 1e-3 * torch.eye(30, dtype=torch.float64)
    assert torch.allclose(low(r), torch.linalg.solve(p_matrix, r), rtol=1e-9, atol=0)


@pytest.mark.parametrize("kept", [False, True])
def test_columns_read_from_a_symmetric_store_equal_the_dense_kernel(data, kept):
    from ntkit.scale.matrix import KernelMatrix

    matrix = KernelMatrix.of(data["k"], "ntk", "k")
    if kept:
        matrix.keep_in_memory()
    index = torch.tensor([69, 0, 17, 33, 64, 5])  # rows of the ragged last tile and of tiles below the diagonal
    # 1e-12: the stored tiles equal the in-memory kernel to round-off (test_scale_store.py)
    assert float((matrix.columns(index) - data["ref_k"].ntk[:, index]).abs().max()) <= 1e-12


def test_errors(data, tmp_path):
    with pytest.raises(NotConvergedError, match=r"did not converge in 2 iterations: relative residual"):
        nk.scale.gp_inference(data["k"], data["y"], diag_reg=REG, method="cg", rank=0, max_iter=2)
    with pytest.raises(MemoryBudgetError, match="Use method='cg'"):
        nk.scale.gp_inference(data["k"], data["y"], method="cholesky", memory_budget=1000)
    with pytest.raises(IllConditionedError, match="not positive definite"):
        nk.scale.gp_inference(-torch.eye(4, dtype=torch.float64), torch.ones(4), method="cholesky")
    with pytest.raises(InvalidArgumentError, match="preconditioner must be one of"):
        nk.scale.gp_inference(data["k"], data["y"], method="cg", preconditioner="jacobi")
    with pytest.raises(InvalidArgumentError, match="method must be one of"):
        nk.scale.gp_inference(data["k"], data["y"], method="lu")
    with pytest.raises(ShapeError, match=r"y_train must be \(70, O\)"):
        nk.scale.gp_inference(data["k"], data["y"][:5])
    with pytest.raises(InvalidArgumentError, match="points must be indices"):
        nk.scale.gp_inference(data["k"], data["y"], get="nngp").variance(data["kt"], data["ref_tt"], points=[12])
    only_nngp = nk.scale.kernel(mlp(), inputs(8, 5), store=tmp_path / "n.zarr", get="nngp")
    with pytest.raises(InvalidArgumentError, match="'ntk' is needed"):
        nk.scale.gp_inference(only_nngp, torch.ones(8))


def test_products_streamed_from_the_store_equal_products_from_memory(data):
    """A budget below the stored tiles' size makes CG read the store once per product instead of keeping it."""
    kept = nk.scale.gp_inference(data["k"], data["y"], diag_reg=REG, method="cg", rank=8, tol=1e-12)
    streamed = nk.scale.gp_inference(
        data["k"], data["y"], diag_reg=REG, method="cg", rank=8, tol=1e-12, memory_budget=1000
    )
    assert streamed.iterations == kept.iterations
    assert float((streamed.weights - kept.weights).abs().max()) <= 1e-12 * float(kept.weights.abs().max())


@pytest.fixture(scope="module")
def float32_store(tmp_path_factory):
    """A symmetric float32 store with ragged tiles (70 = 4 x 16 + 6) and its values as a dense float64 tensor."""
    k = nk.scale.kernel(
        mlp(), inputs(70, 5).float(), store=tmp_path_factory.mktemp("f32") / "k.zarr", get="ntk", tile_size=16
    )
    return k, k.to_torch("ntk").double()


@pytest.mark.parametrize("kept", [False, True])
def test_products_of_a_float32_store_are_exact_float64_products_of_its_values(float32_store, kept):
    """K V for a block of 10 vectors, from float32 tiles (upper triangle only, converted into one reused buffer,
    ragged tiles of several sizes), equals the dense float64 product of the stored values to 1e-12: each tile is
    converted exactly and multiplied in float64 (a product in float32 would differ by ~1e-7)."""
    from ntkit.scale.matrix import KernelMatrix

    store, dense = float32_store
    matrix = KernelMatrix.of(store, "ntk", "k")
    if kept:
        matrix.keep_in_memory()
    v = torch.randn(70, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reference = dense @ v
    out = matrix.matmul(v)
    assert out.dtype == torch.float64
    assert float((out - reference).abs().max()) <= 1e-12 * float(reference.abs().max())
    # dtype=float32 (the Nyström sketch): float32 products summed in float64, ~1e-7 relative; not float64-exact
    sketch = matrix.matmul(v, dtype=torch.float32)
    assert sketch.dtype == torch.float64
    assert 0 < float((sketch - reference).abs().max()) <= 1e-5 * float(reference.abs().max())


def test_products_of_a_non_symmetric_float32_kernel_in_memory_and_transposed():
    """A float32 tensor (M, N) in row blocks: K v and Kᵀ w are the float64 products of its values to 1e-12."""
    from ntkit.scale import matrix as module

    k = torch.rand(5000, 30, generator=torch.Generator().manual_seed(2))  # 5000 rows: 3 row blocks of 2048
    assert k.shape[0] > 2 * module._ROW_BLOCK
    matrix = module.KernelMatrix(k, "k")
    v = torch.randn(30, 3, dtype=torch.float64)
    w = torch.randn(5000, 3, dtype=torch.float64)
    assert float((matrix.matmul(v) - k.double() @ v).abs().max()) <= 1e-12 * float((k.double() @ v).abs().max())
    reference = k.double().T @ w
    assert float((matrix.matmul(w, transpose=True) - reference).abs().max()) <= 1e-12 * float(reference.abs().max())


def test_cg_on_a_float32_store_with_a_float32_sketch_equals_cholesky(float32_store):
    """The Nyström sketch K Ω of a float32 store is computed in float32 (its stabilising shift ν uses float32's
    round-off): P is only a preconditioner, so CG, whose products stay float64, still solves the system of the
    stored values; it agrees with Cholesky of the same float64 values to 1e-8 (tol 1e-12, condition number
    < 1e5 at diag_reg 1e-3) and takes fewer than half the iterations of plain CG."""
    store, dense = float32_store
    y = torch.randn(70, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    chol = nk.scale.gp_inference(dense, y, diag_reg=REG, method="cholesky")
    plain = nk.scale.gp_inference(store, y, diag_reg=REG, method="cg", rank=0, tol=1e-12)
    fit = nk.scale.gp_inference(store, y, diag_reg=REG, method="cg", rank=48, tol=1e-12)
    assert fit.iterations < plain.iterations / 2
    assert float((fit.weights - chol.weights).abs().max()) <= 1e-8 * float(chol.weights.abs().max())
