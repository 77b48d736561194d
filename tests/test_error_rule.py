"""The error rule (ntkit/errors.py, docs/development.md): a bad argument raises an NtkitError subclass, never a
plain ValueError or TypeError; invalid arguments are InvalidArgumentError, valid-but-unsupported ones
UnsupportedError. The places below raised plain ValueErrors (or UnsupportedError for invalid arguments) before.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import ntkit as nk
from ntkit.errors import InvalidArgumentError, ShapeError, UnsupportedError
from ntkit.infinite import spatial
from ntkit.report import Table

SRC = Path(__file__).resolve().parents[1] / "src" / "ntkit"


def plain_raises(paths: list[Path], root: Path = SRC) -> list[str]:
    """``raise ValueError(...)``, ``raise TypeError`` (with or without a call, or as ``builtins.X``) in ``paths``."""

    def name(exc: ast.expr | None) -> str | None:
        target = exc.func if isinstance(exc, ast.Call) else exc
        if isinstance(target, ast.Name):
            return target.id
        return target.attr if isinstance(target, ast.Attribute) else None

    return [
        f"{path.relative_to(root)}:{node.lineno}"
        for path in paths
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Raise) and name(node.exc) in ("ValueError", "TypeError")
    ]


def test_no_plain_value_or_type_error_is_raised_in_src():
    plain = plain_raises(sorted(SRC.rglob("*.py")))
    assert not plain, "raise an ntkit.errors class instead: " + ", ".join(plain)


def test_the_scan_finds_plain_raises(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import builtins\ndef f(x):\n    if x:\n        raise ValueError('x')\n    raise builtins.TypeError\n"
        "def g():\n    raise KeyError('fine: not an argument error')\n"
    )
    assert sorted(plain_raises([bad], tmp_path)) == ["bad.py:4", "bad.py:5"]


def test_invalid_argument_error_is_caught_as_value_or_type_error():
    for builtin in (ValueError, TypeError):
        with pytest.raises(builtin):
            nk.taylor_expand(torch.nn.Linear(2, 1), degree=-1)


def test_former_plain_value_errors():
    lin = nk.linearize(torch.nn.Linear(2, 1))
    with pytest.raises(InvalidArgumentError, match="boolean"):
        lin.train("yes")
    with pytest.raises(ShapeError, match="a row has 1 cells for 2 columns"):
        Table("t", ["a", "b"], [[1]])
    with pytest.raises(ShapeError, match="circular padding"):
        spatial.pad_trailing(torch.zeros(2, 3), [(4, 0)], circular=True)
    with pytest.raises(UnsupportedError, match="spatial axes are supported"):
        nk.Kernel.from_inputs(torch.zeros((1, 1) + (1,) * 12))
    pytest.importorskip("sklearn")
    from ntkit.sklearn import NeuralKernel

    x = torch.randn(3, 2, dtype=torch.float64).numpy()
    # scikit-learn's kernel contract asks for a ValueError here: InvalidArgumentError is one
    with pytest.raises(InvalidArgumentError, match="Y is None"):
        NeuralKernel(nk.nn.Sequential(nk.nn.Linear(2, 1)))(x, x, eval_gradient=True)


def test_invalid_arguments_are_not_unsupported():
    with pytest.raises(InvalidArgumentError, match="callable"):
        nk.nn.Elementwise("tanh")
    with pytest.raises(InvalidArgumentError, match="method"):
        nk.linearize(torch.nn.Linear(2, 1), method="forward")
    with pytest.raises(InvalidArgumentError, match="Module subclass"):
        nk.register_kernel(int, lambda m, k: k)
