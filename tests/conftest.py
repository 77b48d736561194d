import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state, so tolerances are stated for a fixed draw."""
    torch.manual_seed(0)
    yield
