"""The empirical NNGP against explicit products of the model's outputs or a layer's features.

The reference is computed with the model called directly (a plain forward, or a Sequential slice for the
layer features); both routes do the same float64 arithmetic up to summation order, hence 1e-12.
"""

from __future__ import annotations

import copy

import pytest
import torch
from empirical_reference import case
from torch import nn

import ntkit as nk
from ntkit.errors import ParameterSelectionError, ShapeError, UnsupportedError
from reference import rel_err

DT = torch.float64


def test_output_kernel():
    model, x1, x2, _, _ = case("mlp")
    with torch.no_grad():
        f1, f2 = model(x1), model(x2)
    assert rel_err(nk.empirical_nngp(model, x1, x2), f1 @ f2.T / 3) < 1e-12
    assert rel_err(nk.empirical_nngp(model, x1), f1 @ f1.T / 3) < 1e-12
    full = nk.empirical_nngp(model, x1, x2, trace_outputs=False)
    assert rel_err(full, torch.einsum("na,mb->nmab", f1, f2)) < 1e-12
    assert rel_err(nk.empirical_nngp(model, x1, diagonal=True), (f1 * f1).sum(1) / 3) < 1e-12
    assert rel_err(nk.empirical_nngp(model, x1, chunk_size=3), f1 @ f1.T / 3) < 1e-12


def test_layer_features():
    """The penultimate features of the MLP (after the ReLU), flattened, divided by their count (6)."""
    model, x1, x2, _, _ = case("mlp")
    with torch.no_grad():
        h1, h2 = model[:4](x1), model[:4](x2)
    got = nk.empirical_nngp(model, x1, x2, layer="3")
    assert rel_err(got, h1 @ h2.T / 6) < 1e-12


def test_layer_features_of_images_are_flattened():
    model, x1, _, _, _ = case("cnn2d")
    with torch.no_grad():
        h = model[:5](x1).flatten(1)
    assert rel_err(nk.empirical_nngp(model, x1, layer="4"), h @ h.T / h.shape[1]) < 1e-12


def test_params_dict_sets_values():
    model, x1, _, _, _ = case("mlp")
    new = {"4.weight": torch.randn(3, 6, dtype=DT)}
    with torch.no_grad():
        f = model[:4](x1) @ new["4.weight"].T + model[4].bias
    assert rel_err(nk.empirical_nngp(model, x1, params=new), f @ f.T / 3) < 1e-12


def test_frozen_feature_extractor():
    """No derivative is taken, so a model without trainable parameters has an NNGP kernel too."""
    model, x1, _, _, _ = case("cnn2d")
    frozen = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        f = model(x1)
    assert rel_err(nk.empirical_nngp(frozen, x1), f @ f.T / 3) < 1e-12


def test_plain_function():
    w = torch.randn(2, 4, dtype=DT)
    x = torch.randn(5, 4, dtype=DT)
    got = nk.empirical_nngp(lambda p, x: torch.tanh(x @ p["w"].T), x, params={"w": w})
    f = torch.tanh(x @ w.T)
    assert rel_err(got, f @ f.T / 2) < 1e-12


def test_layer_errors():
    model, x1, _, _, _ = case("mlp")
    with pytest.raises(ParameterSelectionError, match="not a submodule"):
        nk.empirical_nngp(model, x1, layer="nope")
    with pytest.raises(UnsupportedError, match="outputs only"):
        nk.empirical_nngp(model, x1, layer="3", trace_outputs=False)
    with pytest.raises(UnsupportedError, match=r"needs a torch\.nn\.Module"):
        nk.empirical_nngp(lambda p, x: x @ p["w"], x1, params={"w": torch.randn(5, 2, dtype=DT)}, layer="0")
    attention_model, ids, _, _, _ = case("attention")
    with pytest.raises(UnsupportedError, match="returns tuple"):
        nk.empirical_nngp(attention_model, ids, layer="attn")


def test_layer_whose_first_axis_is_not_the_batch():
    class SeqFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.inner = nn.Identity()

        def forward(self, x):  # x: (N, L, 2); the inner layer sees (L, N, 2)
            return self.inner(self.lin(x).transpose(0, 1)).sum(0)

    with pytest.raises(ShapeError, match="first axis must index the examples"):
        nk.empirical_nngp(SeqFirst().to(DT), torch.randn(3, 4, 2, dtype=DT), layer="inner")
