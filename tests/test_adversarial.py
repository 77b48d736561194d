"""Bad inputs through every public entry point (issue 10): each must raise an :class:`ntkit.errors.NtkitError`
subclass at the call that received the bad value, with a message that names it (checked by ``match``).

The table is the contract of docs/errors.md. ``test_every_entry_point_is_in_the_table`` fails when a public
function or layer with arguments is added without a row here, so new entry points join the table. Rows for the
numerical rules (n_samples=1, memory budgets of the predictors, ...) belong here too.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import ntkit as nk
import ntkit.nn as N
from ntkit.errors import (
    BatchCouplingError,
    InvalidArgumentError,
    NtkitError,
    ParameterSelectionError,
    ShapeError,
    UnsupportedError,
)

NAN = float("nan")


@dataclass(frozen=True)
class Case:
    entry: str  # the public entry point that receives the bad value (a name checked against ntkit's API)
    name: str
    call: Callable[[], object]
    error: type[NtkitError]
    match: str


def x(n: int = 5, d: int = 4) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(n * 31 + d))


def linear(d: int = 4, o: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(d, o)


def net() -> nn.Module:
    return N.Sequential(N.Linear(4, 8), N.ReLU(), N.Linear(8, 1))


class _Wrap(nn.Module):
    """A linear layer followed by ``post(y)``: models that break a rule after a normal layer."""

    def __init__(self, post: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.post = nn.Linear(4, 3), post

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.post(self.lin(inputs))


def per_row_branch(y: torch.Tensor) -> torch.Tensor:
    return torch.stack([row if row.sum() > 0 else -row for row in y])  # Python control flow on tensor values


def per_row_item(y: torch.Tensor) -> torch.Tensor:
    return torch.stack([row * row.sum().item() for row in y])  # .item() on a per-example value


#: Models whose output for one example depends on the rest of the batch (issue 10 item 5).
COUPLED = {
    "centred by the batch mean": lambda y: y - y.mean(0),
    "softmax over the batch": lambda y: torch.softmax(y, dim=0),
    "outputs flattened across the batch": lambda y: y.reshape(1, -1),
}


def coupled_cases() -> list[Case]:
    calls = {
        "empirical_ntk": lambda m: nk.empirical_ntk(m, x()),
        "empirical_nngp": lambda m: nk.empirical_nngp(m, x()),
        "ntk_vector_product": lambda m: nk.ntk_vector_product(m, x(), x(3), torch.ones(3, 3)),
        "linearize": lambda m: nk.linearize(m)(x()),
    }
    return [
        Case(entry, f"{entry}: {what}", lambda call=call, post=post: call(_Wrap(post)), BatchCouplingError, "batch")
        for entry, call in calls.items()
        for what, post in COUPLED.items()
    ]


def declared(W_std: float, b_std: float | None) -> nn.Module:
    return nk.declare_init(nn.Linear(4, 4), W_std=W_std, b_std=b_std)


class Echo(nn.Module):
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs


def register_bad_kernel() -> object:
    nk.register_kernel(Echo, lambda m, k: 3)
    return nk.kernel(nn.Sequential(Echo()), x())


def mse(**kw: object) -> object:
    k = torch.eye(5, dtype=torch.float64) + 0.1
    y = torch.ones(5, 1, dtype=torch.float64)
    return nk.predict.gradient_descent_mse(kw.pop("k", k), kw.pop("y", y), **kw)


CASES = [
    # --- finite-width kernels and linearization: the model's outputs (item 8)
    Case("empirical_ntk", "model returns a scalar", lambda: nk.empirical_ntk(_Wrap(torch.sum), x()), ShapeError,
         "scalar"),
    Case("empirical_nngp", "model returns a scalar", lambda: nk.empirical_nngp(_Wrap(torch.sum), x()), ShapeError,
         "scalar"),
    Case("empirical_ntk", "integer outputs", lambda: nk.empirical_ntk(_Wrap(lambda y: y.round().long()), x()),
         UnsupportedError, "int64 outputs"),
    *[
        Case("empirical_ntk", f"data-dependent control flow ({m})",
             lambda m=m: nk.empirical_ntk(_Wrap(per_row_branch), x(), method=m), UnsupportedError,
             r"\.item\(\) or branches on the values")
        for m in ("jacobian", "ntvp")  # structured runs plain autograd on the batch: exact (test_empirical_structured)
    ],
    Case("empirical_ntk", ".item() on per-example values", lambda: nk.empirical_ntk(_Wrap(per_row_item), x()),
         UnsupportedError, r"\.item\(\) or branches on the values"),
    Case("empirical_ntk", "params dict of the wrong shape",
         lambda: nk.empirical_ntk(linear(), x(), params={"weight": torch.randn(3, 3)}), ParameterSelectionError,
         r"params\['weight'\] has shape \(3, 3\) but the model's parameter 'weight' has shape \(2, 4\)"),
    Case("empirical_ntk", "chunk_size=2.5", lambda: nk.empirical_ntk(linear(), x(), chunk_size=2.5),
         InvalidArgumentError, "chunk_size"),
    Case("empirical_ntk", 'memory_budget="inf"', lambda: nk.empirical_ntk(linear(), x(), memory_budget="inf"),
         InvalidArgumentError, "memory_budget .* got 'inf'"),
    Case("empirical_ntk", 'memory_budget="-1G"', lambda: nk.empirical_ntk(linear(), x(), memory_budget="-1G"),
         InvalidArgumentError, "memory_budget .* got '-1G'"),
    Case("ntk_vector_product", "v of the wrong shape",
         lambda: nk.ntk_vector_product(linear(), x(), x(3), torch.ones(4, 2)), ShapeError, "v must have shape"),
    Case("linearize", "integer inputs to a float model", lambda: nk.linearize(linear())(torch.ones(5, 4).long()),
         UnsupportedError, "dtype torch.int64"),
    Case("taylor_expand", "degree=-1", lambda: nk.taylor_expand(linear(), degree=-1), InvalidArgumentError, "degree"),
    *coupled_cases(),
    # --- infinite width: architectures that cannot run on the inputs (item 4)
    Case("kernel", "wrong in_features (plain torch)",
         lambda: nk.kernel(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1)), x(5, 7)), ShapeError,
         r"Linear\(in_features=4.* expects 4 input features, but its inputs have 7"),
    Case("kernel", "mismatched consecutive layers",
         lambda: nk.kernel(N.Sequential(N.Linear(4, 16), N.ReLU(), N.Linear(8, 1)), x()), ShapeError,
         r"Linear\(8, 1.* expects 8 input features, but its inputs have 16"),
    Case("kernel", "wrong Flatten -> Linear size",
         lambda: nk.kernel(N.Sequential(N.Conv2d(1, 2, 3), N.Flatten(), N.Linear(8, 1)), torch.ones(2, 1, 3, 3)),
         ShapeError, "expects 8 input features, but its inputs have 18"),
    Case("kernel", "wrong in_channels",
         lambda: nk.kernel(nn.Sequential(nn.Conv2d(3, 2, 3)), torch.ones(2, 1, 5, 5)), ShapeError,
         "expects 3 input channels, but its inputs have 1"),
    Case("kernel", "convolution larger than its input",
         lambda: nk.kernel(N.Sequential(N.Conv2d(1, 2, 5, padding="valid")), torch.ones(2, 1, 3, 3)), ShapeError,
         r"filter of size \(5, 5\) is larger than its input"),
    Case("kernel", "AvgPool2d larger than its input",
         lambda: nk.kernel(N.Sequential(N.Conv2d(1, 2, 1), N.AvgPool2d(5)), torch.ones(2, 1, 3, 3)), ShapeError,
         "pooling window of size .* is larger than its input"),
    # --- infinite width: arguments (item 8)
    Case("kernel", 'memory_budget="inf"', lambda: nk.kernel(net(), x(), memory_budget="inf"), InvalidArgumentError,
         "memory_budget"),
    Case("kernel", "negative string memory_budget", lambda: nk.kernel(net(), x(), memory_budget="-1G"),
         InvalidArgumentError, "memory_budget"),
    Case("kernel", "a tuple of inputs for a network with one", lambda: nk.kernel(net(), (x(), x())), ShapeError,
         "takes one input, but the layers before it give 2 tensors"),
    Case("kernel", "a network with two outputs", lambda: nk.kernel(N.FanOut(2), x()), ShapeError,
         "the network has 2 outputs .* use nk.kernels"),
    Case("kernels", "an unknown keyword", lambda: nk.kernels(net(), x(), blocksize=2), InvalidArgumentError,
         "unexpected argument.*blocksize"),
    Case("FanOut", "n=0", lambda: N.FanOut(0), InvalidArgumentError, r"FanOut\(n\) takes the number of copies"),
    Case("FanInConcat", "dim=0", lambda: N.FanInConcat(dim=0), InvalidArgumentError, "dim is the concatenation axis"),
    *[
        Case("kernel", f"block_size={b}", lambda b=b: nk.kernel(net(), x(), block_size=b), InvalidArgumentError,
             f"block_size must be a positive integer or None, got {b}")
        for b in (2.5, 0, -3)
    ],
    Case("kernel", 'diagonal_spatial="x"', lambda: nk.kernel(net(), x(), diagonal_spatial="x"),
         InvalidArgumentError, "diagonal_spatial"),
    Case("register_kernel", "a kernel function returning a non-Kernel", register_bad_kernel, UnsupportedError,
         "returned int, not a Kernel"),
    Case("register_kernel", "not a module type", lambda: nk.register_kernel(int, lambda m, k: k), InvalidArgumentError,
         "Module subclass"),
    Case("declare_init", "W_std=nan", lambda: declared(NAN, 0.1), InvalidArgumentError, "W_std .* got nan"),
    Case("declare_init", "b_std=None with a bias", lambda: declared(1.0, None), InvalidArgumentError, "b_std"),
    Case("kernel", "torch LayerNorm with eps < 0",
         lambda: nk.kernel(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4, eps=-1.0)), x()), InvalidArgumentError,
         "eps"),
    Case("monte_carlo_kernel", "n_samples=2.5",
         lambda: nk.monte_carlo_kernel(lambda: nn.Linear(4, 1), x(), n_samples=2.5), InvalidArgumentError,
         "n_samples"),
    Case("monte_carlo_kernel", "n_samples=1 (no standard error)",
         lambda: nk.monte_carlo_kernel(lambda: nn.Linear(4, 1), x(), n_samples=1), InvalidArgumentError,
         "at least 2"),
    # --- ntkit.nn layers: checked when built, not when the kernel is first computed (item 8)
    Case("Linear", "in_features=-1", lambda: N.Linear(-1, 4), InvalidArgumentError, "in_features"),
    Case("Linear", 'W_std="1"', lambda: N.Linear(4, 4, W_std="1"), InvalidArgumentError, "W_std .* got '1'"),
    Case("Linear", "W_std=nan", lambda: N.Linear(4, 4, W_std=NAN), InvalidArgumentError, "W_std .* got nan"),
    Case("Linear", "b_std=-1", lambda: N.Linear(4, 4, b_std=-1.0), InvalidArgumentError, "b_std"),
    Case("Linear", "width multiplier s in the NTK parameterization", lambda: N.Linear(4, 4, s=(1, 2)),
         InvalidArgumentError, "standard parameterization only"),
    Case("Conv2d", "s=(0, 2)", lambda: N.Conv2d(1, 2, 3, parameterization="standard", s=(0, 2)),
         InvalidArgumentError, "pair of positive ints"),
    Case("Conv1d", "in_channels=0", lambda: N.Conv1d(0, 2, 3), InvalidArgumentError, "in_channels"),
    Case("Conv2d", "W_std tensor with two entries", lambda: N.Conv2d(1, 2, 3, W_std=torch.ones(2)),
         InvalidArgumentError, "W_std"),
    # a float size used to escape as a raw TypeError ('float' object is not iterable)
    Case("Conv2d", "kernel_size=2.5", lambda: N.Conv2d(1, 2, 2.5), InvalidArgumentError, "kernel_size must be an int"),
    Case("RBF", "gamma=-1", lambda: N.RBF(-1), InvalidArgumentError, "gamma must be a finite real number > 0"),
    Case("LeakyReLU", "negative_slope=nan", lambda: N.LeakyReLU(NAN), InvalidArgumentError, "negative_slope"),
    Case("ABReLU", "a='x'", lambda: N.ABReLU("x", 1.0), InvalidArgumentError, "slope a"),
    Case("LayerNorm", "eps < 0", lambda: N.LayerNorm(4, eps=-1.0), InvalidArgumentError, "eps"),
    Case("LayerNorm", "normalized_shape=0", lambda: N.LayerNorm(0), InvalidArgumentError, "normalized_shape"),
    Case("AvgPool1d", "kernel_size=0", lambda: N.AvgPool1d(0), InvalidArgumentError, "kernel_size"),
    Case("AvgPool2d", "padding=-1", lambda: N.AvgPool2d(2, padding=-1), InvalidArgumentError, "padding"),
    Case("AvgPool3d", "padding_mode='reflect'", lambda: N.AvgPool3d(2, padding_mode="reflect"), InvalidArgumentError,
         "padding_mode"),
    *[
        Case(layer.__name__, "kernel_size=0", lambda layer=layer: layer(0), InvalidArgumentError, "kernel_size")
        for layer in (N.SumPool1d, N.SumPool2d, N.SumPool3d)
    ],
    Case("Conv3d", "in_channels=0", lambda: N.Conv3d(0, 2, 3), InvalidArgumentError, "in_channels"),
    Case("ConvLocal1d", "input_size=0", lambda: N.ConvLocal1d(1, 2, 3, 0), InvalidArgumentError, "input_size"),
    *[
        Case(layer.__name__, "input smaller than the filter", lambda layer=layer: layer(1, 2, 3, 2, padding="valid"),
             InvalidArgumentError, "input_size")
        for layer in (N.ConvLocal2d, N.ConvLocal3d)
    ],
    *[
        Case(layer.__name__, "padding > kernel_size - 1", lambda layer=layer: layer(1, 2, 2, padding=2),
             InvalidArgumentError, "padding")
        for layer in (N.ConvTranspose1d, N.ConvTranspose2d, N.ConvTranspose3d)
    ],
    Case("Resize", "neither size nor scale_factor", lambda: N.Resize(), InvalidArgumentError, "exactly one"),
    Case("kernel", "mask_constant=nan", lambda: nk.kernel(N.Sequential(N.Conv1d(2, 2, 1), N.Flatten()),
         torch.randn(2, 2, 3), mask_constant=float("nan")), InvalidArgumentError, "mask_constant"),
    Case("SelfAttention", "mechanism='tanh'", lambda: N.SelfAttention(2, 2, key_channels=2, value_channels=2,
         mechanism="tanh"), InvalidArgumentError, "mechanism"),
    Case("SelfAttention", "positional embeddings without input_size", lambda: N.SelfAttention(2, 2,
         key_channels=2, value_channels=2, pos_emb="sum"), InvalidArgumentError, "input_size"),
    Case("ExpNormalized", "gamma=0", lambda: N.ExpNormalized(0.0), InvalidArgumentError, "gamma"),
    Case("Aggregate", "adjacency not square", lambda: N.Aggregate(torch.ones(2, 3)), InvalidArgumentError,
         "square"),
    Case("graph_patterns", "not a batch of graphs", lambda: N.graph_patterns(torch.ones(4, 4)).__enter__(),
         InvalidArgumentError, "tensor of graphs"),
    Case("kernel", "pattern with an edge to a node that does not exist",
         lambda: nk.kernel(N.Sequential(N.Conv1d(2, 3, 1), N.Aggregate()), torch.randn(2, 2, 5),
                           pattern=torch.tensor([[[0, 5]], [[1, 2]]])), InvalidArgumentError, "node 5"),
    Case("Aggregate", "wrong number of nodes",
         lambda: nk.kernel(N.Sequential(N.Conv1d(2, 3, 1), N.Aggregate(torch.eye(4))), torch.randn(2, 2, 5)),
         ShapeError, "4 nodes"),
    Case("Dropout", "p=1.5", lambda: N.Dropout(1.5), InvalidArgumentError, "dropout probability"),
    *[
        Case(layer.__name__, "a parameter that is nan", lambda layer=layer: layer(NAN), InvalidArgumentError, "nan")
        for layer in (N.Cos, N.Sin, N.Erf, N.Exp, N.Gaussian)
    ],
    Case("Polynomial", "a nan coefficient", lambda: N.Polynomial([1.0, NAN]), InvalidArgumentError, "c_1"),
    Case("Monomial", "degree=1.5", lambda: N.Monomial(1.5), InvalidArgumentError, "degree"),
    Case("Elementwise", "fn not callable", lambda: N.Elementwise(3), InvalidArgumentError, "callable"),
    Case("Composed", "not an activation", lambda: N.Composed([3]), InvalidArgumentError, "activations"),
    Case("compose", "not an activation", lambda: N.compose(3), InvalidArgumentError, "activations"),
    Case("Parallel", "not a module", lambda: N.Parallel(3), InvalidArgumentError, "torch modules"),
    Case("Residual", "not a module", lambda: N.Residual(3), InvalidArgumentError, "torch modules"),
    Case("Sequential", "not a module", lambda: N.Sequential(3), InvalidArgumentError, "torch modules"),
    # --- training dynamics and inference (item 8)
    Case("gradient_descent_mse", "y_train with the wrong number of rows", lambda: mse(y=torch.ones(6, 1)),
         ShapeError, r"y_train has 6 rows .* the kernel of 5 examples"),
    Case("gradient_descent_mse", "y_train of shape (5, 0)", lambda: mse(y=torch.ones(5, 0)), ShapeError,
         r"zero size \(shape \(5, 0\)\)"),
    Case("gradient_descent_mse", "negative learning rate", lambda: mse(learning_rate=-1.0), InvalidArgumentError,
         "learning_rate"),
    Case("gp_inference", "y_train with the wrong number of rows",
         lambda: nk.predict.gp_inference({"nngp": torch.eye(5)}, torch.ones(6, 1))("nngp", {"nngp": torch.ones(2, 5)}),
         ShapeError, r"y_train has 6 rows .* the kernel of 5 examples"),
    Case("gp_inference", "'ntk' covariance from plain tensors (one kernel, two needed)",
         lambda: nk.predict.gp_inference(torch.eye(5), torch.ones(5, 1))("ntk", torch.ones(2, 5), torch.eye(2)),
         UnsupportedError, "needs both the NNGP K"),
    Case("gradient_descent", "loss not callable",
         lambda: nk.predict.gradient_descent("mse", torch.eye(3), torch.ones(3, 1)), InvalidArgumentError, "loss"),
    Case("gradient_descent_mse_ensemble", "kernel_fn not callable",
         lambda: nk.predict.gradient_descent_mse_ensemble(3, x(), torch.ones(5, 1)), InvalidArgumentError, "kernel_fn"),
    Case("max_learning_rate", "momentum=1", lambda: nk.predict.max_learning_rate(torch.eye(3), momentum=1.0),
         InvalidArgumentError, "momentum"),
    Case("critical_learning_rate", "unknown reduction",
         lambda: nk.predict.critical_learning_rate(torch.eye(3), reduction="max"), InvalidArgumentError, "reduction"),
    Case("marginal_log_likelihood", "negative diag_reg",
         lambda: nk.predict.marginal_log_likelihood(torch.eye(5, dtype=torch.float64), torch.ones(5, 1), diag_reg=-1.0),
         InvalidArgumentError, "diag_reg must be >= 0"),
    Case("weight_change", "negative time",
         lambda: nk.predict.weight_change(linear(4, 1), x(), torch.ones(5, 1), 0.1, -1.0), InvalidArgumentError,
         "times must be >= 0"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.entry}: {c.name}")
def test_bad_input_raises_an_ntkit_error_that_names_it(case: Case) -> None:
    with pytest.raises(case.error, match=case.match):
        case.call()


def _public_entry_points() -> set[str]:
    """Functions of ntkit and ntkit.predict, and ntkit.nn layers that take arguments."""
    names = {n for n in nk.__all__ if inspect.isfunction(getattr(nk, n))}
    names |= set(nk.predict.__all__)
    for n in N.__all__:
        obj = getattr(N, n)
        init = obj.__init__ if inspect.isclass(obj) else obj
        params = [p for p in inspect.signature(init).parameters.values() if p.name != "self"]
        takes_arguments = params and not all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)
        if (takes_arguments or n == "Sequential") and n != "Activation":  # Activation: the abstract base
            names.add(n)
    return names


def test_every_entry_point_is_in_the_table() -> None:
    missing = _public_entry_points() - {c.entry for c in CASES}
    assert not missing, f"public entry points without a bad-input row in tests/test_adversarial.py: {missing}"


def test_independent_models_pass_the_coupling_check() -> None:
    """No false alarm: per-example models in float32 and float64 (batched and single forwards differ by
    round-off only), with one example (the check then builds the second) and with integer token ids."""
    for dtype in (torch.float32, torch.float64):
        model = nn.Sequential(nn.Conv1d(2, 8, 3), nn.Tanh(), nn.Flatten(), nn.Linear(16, 3)).to(dtype)
        inputs = torch.randn(4, 2, 4, dtype=dtype)
        assert nk.empirical_ntk(model, inputs).shape == (4, 4)
        assert nk.empirical_ntk(model, inputs[:1]).shape == (1, 1)
    tokens = torch.tensor([[1, 2], [3, 0]])
    emb = nn.Sequential(nn.Embedding(4, 3), nn.Flatten(), nn.Linear(6, 1))
    assert math.isfinite(float(nk.empirical_nngp(emb, tokens[:1]).sum()))
