"""The structured method's machinery: the rules are really used, and anything they cannot see falls back.

The kernels themselves are checked against the dense reference in ``test_empirical_methods.py``; here the white-box
checks make sure that passing those tests does not just mean "everything fell back to Jacobian contraction",
and that uses of a weight the rules do not cover are detected (then the kernel is still exact).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from empirical_reference import TOL, case, kernel_from_jacobians
from empirical_zoo import MODELS
from torch import nn

import ntkit as nk
from ntkit._functional import functionalize
from ntkit.empirical.cost import Problem
from ntkit.empirical.structured import StructuredMethod
from ntkit.empirical.tracing import trace_model
from ntkit.errors import UnsupportedError
from reference import dense_jacobian, rel_err

DT = torch.float64


def structured(model, x1, n2=None, full=False):
    fm = functionalize(model)
    trace = trace_model(fm, x1)
    n2 = x1.shape[0] if n2 is None else n2
    return trace, StructuredMethod(fm, trace, Problem(x1.shape[0], n2, n2 is None, False, full, trace.n_outputs))


@pytest.mark.parametrize("name", [n for n in MODELS if n != "lora"])
def test_every_parameter_of_the_zoo_has_a_rule(name):
    """Linear, conv, embedding, norm, attention projection and tied parameters are all covered by rules."""
    model, x1, _, _, _ = case(name)
    trace, _ = structured(model, x1)
    assert trace.fallback == []
    assert set(trace.uses) == {n for n, _ in model.named_parameters()}


def test_raw_parameter_adapters_fall_back():
    model, x1, _, _, _ = case("lora")
    trace, method = structured(model, x1)
    assert sorted(trace.fallback) == ["0.lora_A", "0.lora_B", "2.lora_A", "2.lora_B"]
    covered = {g.name for g in method.groups} | {g.bias for g in method.groups if g.bias}
    assert covered == {"0.base.weight", "0.base.bias", "2.base.weight", "2.base.bias"}


def test_dense_bias_joins_its_weight_in_gram_form():
    """A dense layer's bias is computed with its weight (inputs gain a constant 1: one Gram of output cotangents
    for both); the kernel equals the dense float64 Jacobian's (the zoo tests), here checked per term too."""
    model, x1, _, _, _ = case("mlp")
    _, method = structured(model, x1)
    assert {g.name: g.bias for g in method.groups} == {"0.weight": "0.bias", "2.weight": "2.bias", "4.weight": "4.bias"}
    for g, term in zip(method.groups, method.features(x1), strict=True):
        J = dense_jacobian(model, x1, [g.name, g.bias])
        expected = kernel_from_jacobians(J, J, trace_outputs=True) * J.shape[1]  # pair() sums over outputs
        assert rel_err(term.pair(term, False), expected) < TOL


def test_forms_follow_the_cost_model():
    """Gram form for dense layers on vectors; Jacobian form for convolutions over many positions."""
    model, x1, _, _, _ = case("mlp")
    _, method = structured(model, x1)
    assert {g.name: g.form for g in method.groups if g.name.endswith("weight")} == {
        "0.weight": "gram",
        "2.weight": "gram",
        "4.weight": "gram",
    }
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)).to(DT)
    x = torch.randn(6, 3, 12, 12, dtype=DT)
    model(x)
    _, method = structured(model.eval(), x)
    assert {g.name: g.form for g in method.groups}["0.weight"] == "jacobian"


class HiddenUse(nn.Module):
    """Uses one weight through F.linear and once more where no torch function mode can see it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        with torch._C.DisableTorchFunction():
            hidden = torch.tanh(h @ self.lin.weight.T)
        return self.out(hidden)


def test_use_invisible_to_the_interceptor_is_caught_by_the_gradient_check():
    model = HiddenUse().to(DT).eval()
    x1, x2 = torch.randn(4, 4, dtype=DT), torch.randn(3, 4, dtype=DT)
    trace, _ = structured(model, x1)
    assert trace.fallback == ["lin.weight"]  # the rule alone would miss the hidden term
    want = kernel_from_jacobians(dense_jacobian(model, x1), dense_jacobian(model, x2), False)
    got = nk.empirical_ntk(model, x1, x2, method="structured", trace_outputs=False)
    assert rel_err(got, want) < TOL


class TransposedUse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x) + torch.tanh(x @ self.lin.weight.T)


def test_use_outside_a_rule_is_flagged():
    model = TransposedUse().to(DT).eval()
    x1 = torch.randn(4, 4, dtype=DT)
    trace, _ = structured(model, x1)
    assert trace.fallback == ["lin.weight"]
    assert "lin.bias" in trace.uses
    want = kernel_from_jacobians(dense_jacobian(model, x1), dense_jacobian(model, x1), True)
    assert rel_err(nk.empirical_ntk(model, x1, method="structured"), want) < TOL


class ChangesItsMind(nn.Module):
    """Calls its layer twice on the first forward pass and once afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = self.lin(x)
        return self.lin(h) if self.calls == 1 else h


def test_layer_calls_that_change_between_examples():
    with pytest.raises(UnsupportedError, match="method='jacobian'"):
        nk.empirical_ntk(ChangesItsMind().to(DT), torch.randn(3, 3, dtype=DT), method="structured")


def test_functional_layers_in_a_plain_function_use_rules():
    """f(params, x) built from F.conv1d, F.layer_norm and F.linear gets the same rules as modules."""
    params = {
        "conv": torch.randn(3, 2, 3, dtype=DT),
        "ln_w": torch.randn(3, dtype=DT),
        "ln_b": torch.randn(3, dtype=DT),
        "head": torch.randn(2, 3, dtype=DT),
    }

    def f(p, x):
        h = F.conv1d(x, p["conv"], padding="same").transpose(1, 2)  # (N, L, C)
        h = F.layer_norm(torch.tanh(h), (3,), p["ln_w"], p["ln_b"])
        return F.linear(h.mean(1), p["head"])

    x1 = torch.randn(4, 2, 6, dtype=DT)
    fm = functionalize(f, params)
    assert trace_model(fm, x1).fallback == []
    from torch.func import jacrev, vmap

    J = vmap(jacrev(lambda p, xi: f(p, xi[None])[0]), (None, 0))(params, x1)
    J = torch.cat([j.flatten(2) for j in J.values()], -1)
    got = nk.empirical_ntk(f, x1, params=params, method="structured", trace_outputs=False)
    assert rel_err(got, kernel_from_jacobians(J, J, False)) < TOL


class SequenceFirst(nn.Module):
    """Token vectors (N, L, d) handled sequence-first inside: the layers see the batch at axis 1."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.conv = nn.Conv1d(4, 2, 2)
        self.out = nn.Linear(2, 2)

    def forward(self, x):
        h = torch.tanh(self.lin(x.transpose(0, 1)))  # (L, N, 4)
        h = torch.tanh(self.conv(h.permute(1, 2, 0)))  # (N, 2, L - 1)
        return self.out(h.mean(2))


class FoldsTheBatch(nn.Module):
    """Folds examples and positions into one axis before its layer: (N·L, d)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return torch.tanh(self.lin(x.reshape(-1, 3))).reshape(x.shape[0], -1)


@pytest.mark.parametrize(("model", "batched"), [(SequenceFirst(), True), (FoldsTheBatch(), False)])
def test_capture_of_the_whole_batch(monkeypatch, model, batched):
    """The structured method captures layer inputs and cotangents by plain autograd on the whole batch, with the
    batch axis of each call found by its traced shape (here at axis 1 for the sequence-first layer); a model that
    folds the batch into another axis takes the per-example route. Both exact against the dense reference."""
    routes = []
    real = StructuredMethod._capture_batched
    monkeypatch.setattr(StructuredMethod, "_capture_batched", lambda m, x: routes.append(r := real(m, x)) or r)
    model = model.to(DT).eval()
    x1, x2 = torch.randn(4, 5, 3, dtype=DT), torch.randn(3, 5, 3, dtype=DT)
    for other in (None, x2):
        for trace_outputs in (True, False):
            got = nk.empirical_ntk(model, x1, other, method="structured", trace_outputs=trace_outputs)
            J1 = dense_jacobian(model, x1)
            want = kernel_from_jacobians(J1, J1 if other is None else dense_jacobian(model, x2), trace_outputs)
            assert rel_err(got, want) < TOL
    assert routes and all((r is not None) == batched for r in routes)
    assert structured(model, x1)[0].fallback == []


def test_capture_routes_agree():
    """The whole-batch capture gives the per-example route's tensors (to round-off: the same products, batched
    differently), including a single example (where no axis tells the batch apart)."""
    model, x1, _, _, _ = case("cnn2d")
    for x in (x1, x1[:1]):
        _, method = structured(model, x)
        batched, per_example = method._capture_batched(x), method._capture_per_example(x)
        assert batched is not None
        for got, want in zip(batched[:2], per_example[:2], strict=True):
            for key in want.keys() if isinstance(want, dict) else range(len(want)):
                assert got[key].shape == want[key].shape
                assert torch.allclose(got[key], want[key], rtol=1e-12, atol=1e-12)


class PerRowBranch(nn.Module):
    """Python control flow on each example's values: per-example transforms (vmap) cannot trace it, autograd on
    the batch can (each row takes its own branch)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        y = self.lin(x)
        return torch.stack([row if row.sum() > 0 else -row for row in y])


def test_per_example_branches_are_exact_with_the_whole_batch_capture():
    torch.manual_seed(0)
    model = PerRowBranch().to(DT).eval()
    x = torch.randn(8, 4, dtype=DT) * 3
    J = dense_jacobian(model, x)
    assert {bool(r.sum() > 0) for r in model.lin(x)} == {True, False}  # both branches taken
    got = nk.empirical_ntk(model, x, method="structured", trace_outputs=False)
    assert rel_err(got, kernel_from_jacobians(J, J, False)) < TOL


class ReadsItsValues(PerRowBranch):
    def forward(self, x):
        y = self.lin(x)
        return torch.stack([row * row.sum().item() for row in y])  # .item(): autograd sees a constant


def test_values_read_into_python_numbers_take_the_per_example_route():
    """.item() would make whole-batch autograd differentiate a different function (the value as a constant): the
    structured method takes the per-example route, which refuses it with the clear error (regression: the
    whole-batch capture returned that other function's kernel)."""
    with pytest.raises(UnsupportedError, match=r"\.item\(\) or branches"):
        nk.empirical_ntk(ReadsItsValues().to(DT).eval(), torch.randn(4, 4, dtype=DT), method="structured")
