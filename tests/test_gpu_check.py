"""benchmarks/gpu_check.py, the one-command GPU check of issue 14: its argument handling, its refusal without CUDA,
and a rehearsal of its quick steps on the CPU (the GPU run itself needs a GPU machine; see benchmarks/README.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_refuses_without_cuda(gpu_check, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "check.txt"
    assert gpu_check.main(["--out", str(out)]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err
    assert not out.exists()


def test_dry_run_lists_every_step(gpu_check, capsys):
    assert gpu_check.main(["--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == ["env", "roofline", "tests", "infinite", "linearize", "reproduce", "empirical", "conv"]
    commands = dict(zip(names, lines, strict=True))
    assert "tests/test_cuda.py" in commands["tests"]
    assert "reproduce --quick --device cuda" in commands["reproduce"]
    for name in ("roofline", "infinite", "linearize", "empirical"):
        assert "--device cuda" in commands[name]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "tpu"], "--device must be cuda"),
        (["--budget", "0"], "--budget must be a positive"),
        (["--steps", "nope", "--dry-run"], "unknown steps ['nope']"),
    ],
)
def test_bad_arguments(gpu_check, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def rehearse(gpu_check, tmp_path, steps: list[str]) -> str:
    out = tmp_path / "check.txt"
    argv = ["--device", "cpu", "--steps", *steps, "--out", str(out), "--python", sys.executable]
    assert gpu_check.main(argv) == 0
    return out.read_text()


def test_rehearsal_on_the_cpu(gpu_check, tmp_path):
    """A step runs for real on the CPU and lands in the output file under its header, with its exit status."""
    text = rehearse(gpu_check, tmp_path, ["env"])
    assert "=== env:" in text and "available False" in text and "--- env: exit status 0" in text
    assert "gpu_check finished" in text


@pytest.mark.slow
def test_rehearsal_of_the_benchmarks_on_the_cpu(gpu_check, tmp_path):
    """The roofline and the benchmark steps in their small CPU versions (a few minutes on a loaded machine)."""
    text = rehearse(gpu_check, tmp_path, ["roofline", "infinite", "linearize", "empirical"])
    for step in ("roofline", "infinite", "linearize", "empirical"):
        assert f"--- {step}: exit status 0" in text
    assert "roofline (CPU" in text and "x the recipe" in text
