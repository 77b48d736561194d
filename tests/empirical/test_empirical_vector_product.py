"""ntk_vector_product against the dense float64 full kernel applied to v.

out[n, a] = Σ_{m, b} Θ̂(x1_n, x2_m)[a, b] v[m, b]; reference: the dense (N1, N2, O, O) kernel from plain
autograd Jacobians, contracted with v. Tolerance as in :data:`empirical_reference.TOL`.
"""

from __future__ import annotations

import pytest
import torch
from empirical_reference import TOL, case, kernel_from_jacobians
from torch import nn

import ntkit as nk
from ntkit.errors import ShapeError
from reference import dense_jacobian, rel_err

DT = torch.float64


@pytest.mark.parametrize("name", ["mlp", "cnn2d", "attention", "transformer"])
def test_matches_dense_kernel_times_v(name):
    """The transformer exercises forward mode through attention (math backend, no fused inference path)."""
    model, x1, x2, J1, J2 = case(name)
    v = torch.randn(x2.shape[0], J2.shape[1], dtype=DT)
    want = torch.einsum("nmab,mb->na", kernel_from_jacobians(J1, J2, False), v)
    assert rel_err(nk.ntk_vector_product(model, x1, x2, v), want) < TOL
    chunked = nk.ntk_vector_product(model, x1, x2, v, chunk_size=2)
    assert rel_err(chunked, want) < TOL


def test_single_output_vector_and_x2_none():
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).to(DT)
    x = torch.randn(4, 3, dtype=DT)
    J = dense_jacobian(model, x)
    v = torch.randn(4, dtype=DT)
    got = nk.ntk_vector_product(model, x, None, v)
    assert got.shape == (4,)
    assert rel_err(got, kernel_from_jacobians(J, J, True) @ v) < TOL


def test_parameter_subset():
    model, x1, x2, _, _ = case("mlp")
    names = ["4.weight"]
    K = kernel_from_jacobians(dense_jacobian(model, x1, names), dense_jacobian(model, x2, names), False)
    v = torch.randn(x2.shape[0], 3, dtype=DT)
    got = nk.ntk_vector_product(model, x1, x2, v, params=names)
    assert rel_err(got, torch.einsum("nmab,mb->na", K, v)) < TOL


def test_v_of_the_wrong_shape():
    model, x1, x2, _, _ = case("mlp")
    with pytest.raises(ShapeError, match=r"v must have shape \(3, 3\)"):
        nk.ntk_vector_product(model, x1, x2, torch.randn(3, dtype=DT))
    with pytest.raises(ShapeError, match="v must have shape"):
        nk.ntk_vector_product(model, x1, x2, torch.randn(4, 3, dtype=DT))


class Cube(torch.autograd.Function):
    """x ** 3 with a backward but no jvp: forward mode through it raises inside torch."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad


class CubeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return Cube.apply(self.lin(x))


def test_operation_without_forward_derivative():
    """ntvp and ntk_vector_product fall back to two reverse passes (exact) where forward mode is missing."""
    model = CubeNet().to(DT)
    x1, x2 = torch.randn(4, 3, dtype=DT), torch.randn(3, 3, dtype=DT)
    K = kernel_from_jacobians(dense_jacobian(model, x1), dense_jacobian(model, x2), False)
    v = torch.randn(3, 2, dtype=DT)
    assert rel_err(nk.ntk_vector_product(model, x1, x2, v), torch.einsum("nmab,mb->na", K, v)) < TOL
    assert rel_err(nk.empirical_ntk(model, x1, x2, method="ntvp", trace_outputs=False), K) < TOL
    diag = nk.empirical_ntk(model, x2, method="ntvp", diagonal=True)
    assert rel_err(diag, kernel_from_jacobians(dense_jacobian(model, x2), dense_jacobian(model, x2), True, True)) < TOL
