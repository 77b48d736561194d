"""Bad input gets a clear ntkit error, for every method (and for the NNGP and the NTK-vector product)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit.errors import (
    BatchCouplingError,
    InvalidArgumentError,
    NonFiniteError,
    NtkitError,
    ParameterSelectionError,
    ShapeError,
    UnsupportedError,
)

METHODS = ["auto", "jacobian", "ntvp", "structured"]
DT = torch.float64


def mlp():
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).to(DT).eval()


def x(n=3, d=4):
    return torch.randn(n, d, dtype=DT)


ENTRY_POINTS = {
    "ntk": lambda model, x1, x2=None, **kw: nk.empirical_ntk(model, x1, x2, **kw),
    "nngp": lambda model, x1, x2=None, **kw: nk.empirical_nngp(model, x1, x2, **kw),
    "vp": lambda model, x1, x2=None, **kw: nk.ntk_vector_product(
        model, x1, x2, torch.ones((x1 if x2 is None else x2).shape[0], 2, dtype=DT), **kw
    ),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_mismatched_feature_shapes(entry):
    with pytest.raises(ShapeError, match="same per-example shape"):
        ENTRY_POINTS[entry](mlp(), x(3, 4), x(2, 5))


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_input_the_model_cannot_take(entry):
    with pytest.raises(ShapeError, match=r"per-example shape \(N, 5\)"):
        ENTRY_POINTS[entry](mlp(), x(3, 5))


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs(entry, bad):
    x1 = x()
    x1[1, 2] = bad
    with pytest.raises(NonFiniteError, match="x1 holds"):
        ENTRY_POINTS[entry](mlp(), x1)
    with pytest.raises(NonFiniteError, match="x2 holds"):
        ENTRY_POINTS[entry](mlp(), x(), x1)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_empty_batch(entry):
    with pytest.raises(ShapeError, match="empty"):
        ENTRY_POINTS[entry](mlp(), x(0))


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_complex_inputs(entry):
    with pytest.raises(UnsupportedError, match="complex"):
        ENTRY_POINTS[entry](mlp(), torch.randn(3, 4, dtype=torch.complex128))


def test_complex_model_parameters():
    model = nn.Linear(4, 2, dtype=torch.complex64)
    with pytest.raises(UnsupportedError, match="are complex"):
        nk.empirical_ntk(model, torch.randn(3, 4))


def test_input_dtype_differs_from_model():
    with pytest.raises(UnsupportedError, match=r"float64 but the input is torch\.float32"):
        nk.empirical_ntk(mlp(), torch.randn(3, 4))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("params", [["nothing*"], lambda n: False, {"missing": torch.zeros(2)}, 3])
def test_params_selecting_nothing(method, params):
    with pytest.raises(ParameterSelectionError):
        nk.empirical_ntk(mlp(), x(), params=params, method=method)


@pytest.mark.parametrize("method", METHODS)
def test_batchnorm_in_train_mode(method):
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)).to(DT).train()
    with pytest.raises(BatchCouplingError, match=r"model.eval\(\)"):
        nk.empirical_ntk(model, x(), method=method)


@pytest.mark.parametrize("method", METHODS)
def test_batchnorm_without_running_statistics(method):
    """track_running_stats=False normalises with batch statistics even in eval mode."""
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, track_running_stats=False), nn.Linear(6, 2))
    with pytest.raises(BatchCouplingError, match="batch"):
        nk.empirical_ntk(model.to(DT).eval(), x(), method=method)


@pytest.mark.parametrize("method", METHODS)
def test_dropout_in_train_mode(method):
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.Linear(6, 2)).to(DT).train()
    with pytest.raises(BatchCouplingError, match="random"):
        nk.empirical_ntk(model, x(), method=method)


def test_unknown_method_and_bad_chunk_size():
    with pytest.raises(InvalidArgumentError, match="unknown method"):
        nk.empirical_ntk(mlp(), x(), method="fast")
    for bad in (0, -2, 1.5, True):
        with pytest.raises(InvalidArgumentError, match="chunk_size"):
            nk.empirical_ntk(mlp(), x(), chunk_size=bad)


def test_diagonal_needs_paired_batches():
    with pytest.raises(ShapeError, match="diagonal"):
        nk.empirical_ntk(mlp(), x(3), x(2), diagonal=True)


def test_model_returning_a_tuple():
    class Two(nn.Module):
        def forward(self, x):
            return x, x

    model = nn.Sequential(nn.Linear(4, 2), Two()).to(DT)
    with pytest.raises(UnsupportedError, match="single tensor"):
        nk.empirical_ntk(model, x())


def test_errors_are_ntkit_errors():
    """Every deliberate error derives from NtkitError (and from the built-in a user would catch)."""
    with pytest.raises(NtkitError):
        nk.empirical_ntk(mlp(), x(0))
    with pytest.raises(ValueError):
        nk.empirical_ntk(mlp(), x(0))
