"""Fixtures shared by every test: a fixed random state. The helper modules next to this file (reference.py,
datafiles.py, ...) are importable because pyproject.toml puts tests/ on the path (pytest's ``pythonpath``)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state, so tolerances are stated for a fixed draw."""
    torch.manual_seed(0)
    yield
