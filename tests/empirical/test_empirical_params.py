"""Parameter selections and plain functions f(params, x), against the dense float64 reference.

The reference Jacobian is restricted to the selected parameters (columns of the full dense Jacobian, in
``named_parameters`` order); tolerance as in :data:`empirical_reference.TOL`.
"""

from __future__ import annotations

import fnmatch

import pytest
import torch
from empirical_reference import TOL, case, kernel_from_jacobians
from empirical_zoo import functional_mlp
from torch.func import jacrev, vmap

import ntkit as nk
from reference import dense_jacobian, rel_err

METHODS = ["jacobian", "ntvp", "structured"]


def _columns(model, names):
    """Indices of the named parameters' entries in the dense Jacobian's last axis."""
    cols, start = [], 0
    for n, p in model.named_parameters():
        if n in names:
            cols.append(torch.arange(start, start + p.numel()))
        start += p.numel()
    return torch.cat(cols)


def _selects(selection, name: str) -> bool:
    if callable(selection):
        return selection(name)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in selection)


SELECTIONS = {
    "last layer by name": ("mlp", ["4.weight", "4.bias"]),
    "biases by pattern": ("mlp", ["*.bias"]),
    "predicate": ("cnn2d", lambda n: n.startswith("4.") or n.startswith("5.")),
    "LoRA adapters only": ("lora", ["*lora_*"]),
    "attention projections": ("transformer", ["encoder.layers.1.self_attn.*"]),
    "embedding table only": ("attention", ["emb.weight"]),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("label", list(SELECTIONS))
def test_parameter_subsets(label, method):
    name, selection = SELECTIONS[label]
    model, x1, x2, J1, J2 = case(name)
    cols = _columns(model, [n for n, _ in model.named_parameters() if _selects(selection, n)])
    for trace_outputs in (True, False):
        got = nk.empirical_ntk(model, x1, x2, params=selection, method=method, trace_outputs=trace_outputs)
        want = kernel_from_jacobians(J1[..., cols], J2[..., cols], trace_outputs)
        assert rel_err(got, want) < TOL, label


@pytest.mark.parametrize("method", METHODS)
def test_params_dict_sets_values(method):
    """A dict of tensors selects these parameters *at these values*; the reference is a copy of the model
    with the values loaded."""
    model, x1, x2, _, _ = case("residual")
    new = {n: torch.randn_like(p) for n, p in model.named_parameters() if n.startswith("blocks.1")}
    twin = type(model)().double().eval()
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        for n, v in new.items():
            twin.get_parameter(n).copy_(v)
    names = list(new)
    want = kernel_from_jacobians(dense_jacobian(twin, x1, names), dense_jacobian(twin, x2, names), False)
    got = nk.empirical_ntk(model, x1, x2, params=new, method=method, trace_outputs=False)
    assert rel_err(got, want) < TOL


@pytest.mark.parametrize("method", METHODS)
def test_plain_function(method):
    """f(params, x) with a dict of tensors; reference: per-example jacrev of the same function, contracted."""
    f, params, x1, x2 = functional_mlp()

    def jac(x):
        J = vmap(jacrev(lambda p, xi: f(p, xi[None])[0]), (None, 0))(params, x)
        return torch.cat([j.flatten(2) for j in J.values()], -1)

    want = kernel_from_jacobians(jac(x1), jac(x2), False)
    got = nk.empirical_ntk(f, x1, x2, params=params, method=method, trace_outputs=False)
    assert rel_err(got, want) < TOL
