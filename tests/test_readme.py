"""The README's Python examples run as written (each block in a fresh namespace), so the README stays true.

Each block also leaves its results in the namespace; the checks below test the shapes the README's comments
state, so a changed API or shape fails here, not only a crash.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)

# block index -> {name: expected shape} from the README's comments
EXPECTED_SHAPES = {
    0: {"ntk": (256, 256), "ntk_full": (32, 256, 10, 10), "diag": (32,), "head": (256, 256), "product": (32, 10)},
    1: {"theta0_ntk": (16, 16)},
    2: {"k_test": (20, 100), "k_cnn": (8, 8), "k_plain": (100, 100)},
    3: {"est": None},
    4: {"train": (3, 50, 1), "test": (3, 20, 1)},
    5: {"mean": (50, 10), "k2": None},
    6: {"phi": (100, 1024), "mean": (100, 1)},
}


def test_readme_has_the_examples():
    assert len(BLOCKS) == len(EXPECTED_SHAPES), "update EXPECTED_SHAPES when README examples change"


@pytest.mark.parametrize("index", range(len(EXPECTED_SHAPES)))
def test_readme_example_runs(index):
    namespace: dict = {}
    exec(compile(BLOCKS[index], f"README.md example {index}", "exec"), namespace)
    for name, shape in EXPECTED_SHAPES[index].items():
        value = namespace[name]
        if shape is not None:
            assert tuple(value.shape) == shape, name
            assert torch.isfinite(value).all(), name
