"""Every method against the dense float64 reference (plain autograd) on every model kind.

Each model of the zoo (MLP with a multi-output head, Conv1d/Conv2d CNNs with pooling, BatchNorm in eval mode
and GroupNorm, a residual network with LayerNorm, Embedding + MultiheadAttention, a TransformerEncoder,
tied weights, a LoRA adapter) is checked for x2 = x1 (x2=None) and x2 != x1, traced and full output
kernels, and the diagonal. Tolerance: :data:`empirical_reference.TOL` (see there why).
"""

from __future__ import annotations

import pytest
import torch
from empirical_reference import TOL, case, kernel_from_jacobians
from empirical_zoo import MODELS

import ntkit as nk
from reference import rel_err

METHODS = ["jacobian", "ntvp", "structured"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(MODELS))
def test_matches_dense_reference(name, method):
    model, x1, x2, J1, J2 = case(name)
    for other, J_other in ((None, J1), (x2, J2)):
        for trace_outputs in (True, False):
            got = nk.empirical_ntk(model, x1, other, method=method, trace_outputs=trace_outputs)
            want = kernel_from_jacobians(J1, J_other, trace_outputs)
            assert got.shape == want.shape
            assert got.dtype == torch.float64
            assert rel_err(got, want) < TOL, (other is None, trace_outputs)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["mlp", "cnn2d", "attention", "transformer"])
def test_diagonal_matches_dense_reference(name, method):
    model, x1, x2, J1, J2 = case(name)
    pairs = x2.shape[0]
    for trace_outputs in (True, False):
        got = nk.empirical_ntk(model, x1, method=method, trace_outputs=trace_outputs, diagonal=True)
        assert rel_err(got, kernel_from_jacobians(J1, J1, trace_outputs, diagonal=True)) < TOL
        # paired rows: Θ̂(x1_n, x2_n)
        got = nk.empirical_ntk(model, x1[:pairs], x2, method=method, trace_outputs=trace_outputs, diagonal=True)
        want = kernel_from_jacobians(J1[:pairs], J2, trace_outputs, diagonal=True)
        assert rel_err(got, want) < TOL


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "residual", "tied", "lora"])
def test_auto_matches_dense_reference(name):
    model, x1, x2, J1, J2 = case(name)
    got = nk.empirical_ntk(model, x1, x2, trace_outputs=False)
    assert rel_err(got, kernel_from_jacobians(J1, J2, False)) < TOL


def test_x2_identical_object_is_symmetric_case():
    model, x1, _, J1, _ = case("mlp")
    assert rel_err(nk.empirical_ntk(model, x1, x1), kernel_from_jacobians(J1, J1, True)) < TOL


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["mlp", "cnn2d", "attention"])
def test_x2_none_is_exactly_symmetric(name, method):
    """Issue 10 item 9: the ntvp kernel (a jvp of a vjp) was symmetric only to round-off within the blocks on the
    diagonal. Θ̂(x, x) = Θ̂(x, x)ᵀ (output axes swapped in the full kernel) holds exactly now, for every method;
    and x2 equal to x1 (a copy) gives the x2=None result exactly (the same path)."""
    model, x1, _, _, _ = case(name)
    for trace_outputs, swap in ((True, (1, 0)), (False, (1, 0, 3, 2))):
        for chunk_size in (None, 3):
            got = nk.empirical_ntk(model, x1, method=method, trace_outputs=trace_outputs, chunk_size=chunk_size)
            assert torch.equal(got, got.permute(*swap)), (trace_outputs, chunk_size)
            copy = nk.empirical_ntk(
                model, x1, x1.clone(), method=method, trace_outputs=trace_outputs, chunk_size=chunk_size
            )
            assert torch.equal(copy, got), (trace_outputs, chunk_size)


def test_float32_model_gives_float32_kernel():
    model, x1, x2, J1, J2 = case("mlp")
    got = nk.empirical_ntk(model.float(), x1.float(), x2.float())
    model.double()
    assert got.dtype == torch.float32
    # float32 round-off: about 1e-7 relative per operation
    assert rel_err(got.double(), kernel_from_jacobians(J1, J2, True)) < 1e-5


def test_pass_through_mode_only_where_a_fused_layer_needs_it():
    """``autodiff_context(model)`` skips the pass-through torch function mode (its Python dispatch of every call
    is a fixed cost) only for a module without a fused-path layer; a transformer, or a plain function whose layers
    cannot be seen, gets it. The Jacobian method, which passes its module, stays exact on both (the zoo's
    transformer and attention models in ``test_matches_dense_reference``; here a model without such layers)."""
    from ntkit.empirical.autodiff import autodiff_context

    def mode_active(model):
        with autodiff_context(model):
            return torch._C._is_torch_function_mode_enabled()

    mlp, _, _, _, _ = case("mlp")
    transformer, _, _, _, _ = case("transformer")
    attention, _, _, _, _ = case("attention")
    assert not mode_active(mlp)
    assert mode_active(transformer) and mode_active(attention) and mode_active(None) and mode_active(lambda p, x: x)
    model, x1, _, J1, _ = case("residual")
    got = nk.empirical_ntk(model, x1, method="jacobian", trace_outputs=False)
    assert rel_err(got, kernel_from_jacobians(J1, J1, False)) < TOL


@pytest.mark.parametrize("route", ["batched", "per-example"])
@pytest.mark.parametrize("name", list(MODELS))
def test_jacobian_method_routes_match_dense_reference(name, route, monkeypatch):
    """The Jacobian method's two routes (module docs of ``empirical.jacobian``), each forced, on every zoo model:
    symmetric and not, traced and full, and the diagonal."""
    from ntkit.empirical import jacobian

    monkeypatch.setattr(jacobian, "BATCHED_FLOPS", float("inf") if route == "batched" else 0.0)
    taken = []
    real = jacobian.batched_jacobians
    monkeypatch.setattr(jacobian, "batched_jacobians", lambda fm, x: taken.append(len(x)) or real(fm, x))
    model, x1, x2, J1, J2 = case(name)
    for other, J_other in ((None, J1), (x2, J2)):
        for trace_outputs in (True, False):
            got = nk.empirical_ntk(model, x1, other, method="jacobian", trace_outputs=trace_outputs)
            assert rel_err(got, kernel_from_jacobians(J1, J_other, trace_outputs)) < TOL, (other is None, trace_outputs)
    diagonal = nk.empirical_ntk(model, x1, method="jacobian", diagonal=True, trace_outputs=False)
    assert rel_err(diagonal, kernel_from_jacobians(J1, J1, False, diagonal=True)) < TOL
    assert bool(taken) == (route == "batched")


def test_jacobian_method_takes_the_batched_route_only_for_tiny_chunks(monkeypatch):
    """2·O·N·(N − 1)·FP under BATCHED_FLOPS: batched; a chunk of many examples of a larger model: per example."""
    from torch import nn

    from ntkit.empirical import jacobian

    taken = []
    real = jacobian.batched_jacobians
    monkeypatch.setattr(jacobian, "batched_jacobians", lambda fm, x: taken.append(len(x)) or real(fm, x))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2)).double().eval()
    nk.empirical_ntk(model, torch.randn(8, 8, dtype=torch.float64), method="jacobian")
    assert taken == [8]
    big = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 4)).double().eval()
    nk.empirical_ntk(big, torch.randn(64, 64, dtype=torch.float64), method="jacobian")  # ~2e9 FLOPs batched
    assert taken == [8]


def test_values_read_into_python_numbers_leave_the_batched_jacobian_route():
    """A model that reads values into Python numbers (.item()) would have its batched reverse pass differentiate
    another function (the values as constants): the Jacobian method then takes the per-example route, which refuses
    it with the clear error (without the check the batched route returned that other function's kernel)."""
    from torch import nn

    from ntkit.errors import UnsupportedError

    class ReadsItsValues(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            y = self.lin(x)
            return torch.stack([row * row.sum().item() for row in y])

    with pytest.raises(UnsupportedError, match=r"\.item\(\) or branches"):
        nk.empirical_ntk(ReadsItsValues().double().eval(), torch.randn(4, 4, dtype=torch.float64), method="jacobian")
