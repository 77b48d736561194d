"""The weight-space example runs end to end in a tiny configuration and writes its figure."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "weight_space.py"


def load_example():
    spec = importlib.util.spec_from_file_location("weight_space_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_weight_space_example_tiny(tmp_path):
    out = tmp_path / "fig.png"
    history = load_example().main(["--steps", "5", "--width", "64", "--n-train", "128", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert history["steps"] == [0, 1, 2, 3, 4, 5]
    # same θ0: identical outputs before training (float32 round-off), then the two models part
    assert history["test_rmse"][0] < 1e-5 < history["test_rmse"][-1]
    for name in ("network", "linearized"):
        losses = history[name]["train_loss"]
        assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
