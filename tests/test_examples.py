"""The scripts in examples/: each runs end to end (small settings) and shows what it claims, using the public API.

References: for the empirical NTK, its full kernel contracted by hand (float64 round-off, 1e-12); for the
predictions of one network, its linearization trained by an explicit torch.optim loop (round-off, 1e-10); for
the linearization, that a wider network stays closer to it; for the infinite-width kernels, positive
definiteness; for the Monte Carlo estimate, the closed-form kernel within a width-dependent margin. Also: every
example imports only ``ntkit`` itself (no submodule, no private name; the optional adapters ``ntkit.sklearn`` and
``ntkit.gpytorch``, which ``import ntkit`` does not import, by ``import ntkit.<adapter>``) and is listed in README.md.
For the adapter examples: the fitted evidence above the start, and GPyTorch's posterior equal to nk.predict's.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
ADAPTERS = ("sklearn", "gpytorch")  # optional public modules, outside ntkit.__all__


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_uses_the_public_api_and_is_listed(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ntkit":
            pytest.fail(f"{path.name}: 'from {node.module} import ...'; use 'import ntkit as nk' and its public names")
        if isinstance(node, ast.Import):
            for alias in node.names:
                allowed = ("ntkit", *(f"ntkit.{a}" for a in ADAPTERS))
                assert alias.name.split(".")[0] != "ntkit" or alias.name in allowed, (path.name, alias.name)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "nk":
            assert not node.attr.startswith("_"), (path.name, node.attr)
            assert node.attr in (*__import__("ntkit").__all__, *ADAPTERS), (path.name, node.attr)
    assert f"examples/{path.name}" in (ROOT / "README.md").read_text(encoding="utf-8"), f"README.md lists {path.name}"


def test_empirical_ntk_example():
    out = load("empirical_ntk").main(["--width", "64", "--n", "8"])
    assert out["operator_error"] < 1e-12 and out["trace_error"] < 1e-12


def test_linearize_example():
    """The point of the example: the wider network stays closer to its linearization (seeded, so deterministic;
    at these widths the gap is about 15x, far from a tie)."""
    rmse = load("linearize").main(["--widths", "16", "256", "--steps", "10"])
    assert rmse[256] < 0.5 * rmse[16]


def test_infinite_kernels_example():
    smallest = load("infinite_kernels").main(["--n", "6"])
    assert all(value > 0 for value in smallest.values())


def test_predict_example():
    out = load("predict").main(["--steps", "20"])
    assert out["difference"] < 1e-10  # closed form against the trained linearization: round-off
    assert out["ensemble_rmse"] < 0.1  # the converged NTK ensemble fits sin on the training interval


def test_monte_carlo_example():
    """At width 128 the expected finite kernel is within a few percent of the limit; 16 networks add a sampling
    error of the same order, so 15% is a loose but failing-if-wrong margin (a wrong kernel is off by O(1))."""
    errors = load("monte_carlo").main(["--width", "128", "--samples", "4", "16"])
    assert errors[16] < 0.15


def test_fit_hyperparameters_example():
    """Maximising the evidence raises it (the optimiser's job) and, on wine, the test likelihood with it."""
    out = load("fit_hyperparameters").main(["--data", "wine", "--steps", "5"])
    assert out["fitted"]["evidence"] > out["defaults"]["evidence"]
    assert out["fitted"]["test_log_lik"] > out["defaults"]["test_log_lik"]


def test_gpytorch_exact_gp_example():
    """GPyTorch's posterior equals nk.predict.gp_inference's "ntkgp" one (float64 round-off, 1e-10) and Adam on
    ExactMarginalLogLikelihood raises the evidence."""
    out = load("gpytorch_exact_gp").main(["--n-train", "40", "--n-test", "20", "--steps", "3"])
    assert out["mean_difference"] < 1e-10 and out["cov_difference"] < 1e-10
    assert out["evidence_end"] > out["evidence_start"]


@pytest.mark.slow
def test_botorch_example():
    out = load("botorch_optimize").main(["--rounds", "2"])
    assert out["best"] >= out["initial_best"]
