"""The ``ntkit`` command: clear one-line errors with exit code 2, a full run that writes the report, exit code 1
when an experiment fails, ``python -m ntkit``, and no lost runs (checkpoints, reuse, Ctrl-C, stale files)."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from datafiles import patch_md5s, write_mnist
from ntkit.cli import main
from ntkit.data import mnist
from ntkit.experiments import Experiment
from ntkit.experiments.e3_width_scaling import WidthScalingConfig
from ntkit.experiments.registry import EXPERIMENTS
from ntkit.report import ExperimentResult, Figure

TINY_E3 = WidthScalingConfig(
    widths=(16, 64), depth=1, n_train=8, n_kernel=4, n_test=None, steps=4, n_times=2, repeats=1
)


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    out = capsys.readouterr()
    assert "Traceback" not in out.err and out.err.startswith("ntkit: error: ")
    return out.err


def test_unknown_experiment_lists_the_known_ones(capsys):
    err = _error(capsys, ["reproduce", "--only", "E3,E42"])
    assert "unknown experiment E42" in err and "known experiments: " in err and "E3" in err


def test_missing_data_dir(capsys, tmp_path):
    err = _error(capsys, ["reproduce", "--data-dir", str(tmp_path / "nope"), "--dataset", "mnist"])
    assert "does not exist" in err and "nope" in err


def test_missing_data_files_say_where_to_put_them(capsys, tmp_path):
    err = _error(capsys, ["reproduce", "--data-dir", str(tmp_path), "--dataset", "fashion-mnist"])
    assert "train-images-idx3-ubyte.gz" in err and str(tmp_path) in err and "--download" in err


def test_cuda_without_cuda(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _error(capsys, ["reproduce", "--device", "cuda"])
    assert "CUDA is not available" in err


def test_bad_choice_is_an_argparse_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--dataset", "svhn"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_list(capsys):
    assert main(["reproduce", "--list"]) == 0
    assert "E3  Weights, kernels and linearization vs width" in capsys.readouterr().out


def test_a_run_writes_the_report_and_prints_the_summary(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(EXPERIMENTS, "E3", replace(EXPERIMENTS["E3"], quick=TINY_E3))
    out = tmp_path / "rep"
    assert main(["reproduce", "--quick", "--only", "E3", "--out", str(out), "--seed", "3", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "[1/1] E3 Weights, kernels and linearization vs width" in text
    assert "ID  Experiment" in text and f"Report: {(out / 'index.html').resolve()}" in text
    data = json.loads((out / "results.json").read_text())
    assert data["run"]["seed"] == 3 and data["run"]["mode"] == "quick" and data["run"]["dataset"] == "digits"
    assert data["run"]["command"] == f"ntkit reproduce --quick --only E3 --out {out} --seed 3 --no-progress"
    assert data["experiments"][0]["config"]["widths"] == [16, 64]
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["E3-kernels.png", "E3-rmse.png", "E3-weights.png"]


def test_a_failed_experiment_gives_exit_code_1_and_is_in_the_report(capsys, monkeypatch, tmp_path):
    def boom(cfg, ctx):
        raise ValueError("bad numbers")

    monkeypatch.setitem(EXPERIMENTS, "E99", Experiment("E99", "Always fails", "none", boom, {}, {}))
    assert main(["reproduce", "--quick", "--only", "E99", "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "failed" in captured.out and "E99" in captured.err
    page = (tmp_path / "index.html").read_text()
    assert "ValueError: bad numbers" in page


def test_python_dash_m_ntkit():
    src = Path(__file__).resolve().parents[1] / "src"
    proc = subprocess.run(
        [sys.executable, "-m", "ntkit", "reproduce", "--only", "E0"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 2 and "unknown experiment E0" in proc.stderr and "Traceback" not in proc.stderr


def test_corrupt_data_files_are_a_usage_error(capsys, tmp_path):
    write_mnist(tmp_path)  # valid IDX files, but not the official ones: their MD5s differ
    err = _error(capsys, ["reproduce", "--dataset", "mnist", "--data-dir", str(tmp_path)])
    assert "MD5" in err and "official mnist file" in err


def test_a_run_on_a_file_data_set(capsys, monkeypatch, tmp_path):
    write_mnist(tmp_path / "d", seed=1)
    patch_md5s(monkeypatch, mnist, "MNIST", tmp_path / "d")
    monkeypatch.setitem(EXPERIMENTS, "E3", replace(EXPERIMENTS["E3"], quick=TINY_E3))
    argv = ["reproduce", "--quick", "--only", "e3", "--dataset", "mnist", "--data-dir", str(tmp_path / "d")]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["experiments"][0]["config"]["dataset"] == "mnist" and data["run"]["dataset"] == "mnist"


def test_import_ntkit_needs_no_repro_extras():
    """`import ntkit` (and the data/report/experiments modules) must not import matplotlib or scikit-learn."""
    src = Path(__file__).resolve().parents[1] / "src"
    code = (
        "import sys, ntkit, ntkit.data, ntkit.report, ntkit.experiments, ntkit.cli\n"
        "print(sorted(m for m in ('matplotlib', 'sklearn') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(src)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_no_verify_accepts_files_that_are_not_the_official_ones(capsys, monkeypatch, tmp_path):
    write_mnist(tmp_path / "d")
    monkeypatch.setitem(EXPERIMENTS, "E3", replace(EXPERIMENTS["E3"], quick=TINY_E3))
    argv = ["reproduce", "--quick", "--only", "E3", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "d")]
    assert main([*argv, "--no-verify", "--out", str(tmp_path / "out")]) == 0


def test_threads_option(capsys, monkeypatch, tmp_path):
    err = _error(capsys, ["reproduce", "--threads", "0"])
    assert "--threads must be a positive integer" in err
    monkeypatch.setitem(EXPERIMENTS, "E3", replace(EXPERIMENTS["E3"], quick=TINY_E3))
    before = torch.get_num_threads()
    try:
        assert main(["reproduce", "--quick", "--threads", "1", "--out", str(tmp_path), "--only", "E3"]) == 0
        assert torch.get_num_threads() == 1
        assert "1 threads" in json.loads((tmp_path / "results.json").read_text())["run"]["environment"]["device"]
    finally:
        torch.set_num_threads(before)


def test_busy_machine_hint(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(EXPERIMENTS, "E3", replace(EXPERIMENTS["E3"], quick=TINY_E3))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (50.0, 50.0, 50.0))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    argv = ["reproduce", "--quick", "--only", "E3", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert "this machine is busy (load 50.0" in capsys.readouterr().err
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert main(argv) == 0
    assert "busy" not in capsys.readouterr().err


# --- lost runs (issue 10 item 2): --out checked first, experiments saved as they finish, reused, Ctrl-C kept


@dataclass(frozen=True)
class FakeConfig:
    value: int = 1
    figure: str = "a"


def _fake(eid: str, calls: list[str], *, interrupt: bool = False, config: FakeConfig = FakeConfig()) -> Experiment:
    """An instant experiment that records its calls and returns one figure (``interrupt``: raises Ctrl-C)."""

    def fn(cfg: FakeConfig, ctx) -> ExperimentResult:
        calls.append(eid)
        if interrupt:
            raise KeyboardInterrupt
        figure = Figure(f"{eid}-{cfg.figure}", "caption", png=f"png of {eid} {cfg}".encode())
        return ExperimentResult(eid, f"fake {eid}", "claim", supported=True, metrics={"v": cfg.value},
                                figures=[figure])  # fmt: skip

    return Experiment(eid, f"fake {eid}", "claim", fn, config, config)


def test_unwritable_out_is_a_usage_error_before_anything_runs(capsys, monkeypatch, tmp_path):
    calls: list[str] = []
    monkeypatch.setitem(EXPERIMENTS, "E97", _fake("E97", calls))
    (tmp_path / "file").write_text("not a folder")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        err = _error(capsys, ["reproduce", "--only", "E97", "--out", str(out)])
        assert f"--out {out}" in err
    assert calls == []  # checked before the experiment ran
    new = tmp_path / "new" / "deep"  # creatable: accepted, but a usage error later creates nothing
    _error(capsys, ["reproduce", "--only", "E97", "--out", str(new), "--dataset", "mnist", "--data-dir", str(new)])
    assert not (tmp_path / "new").exists()


def test_ctrl_c_keeps_finished_experiments_and_a_rerun_reuses_them(capsys, monkeypatch, tmp_path):
    calls: list[str] = []
    monkeypatch.setitem(EXPERIMENTS, "E97", _fake("E97", calls))
    monkeypatch.setitem(EXPERIMENTS, "E98", _fake("E98", calls, interrupt=True))
    argv = ["reproduce", "--quick", "--only", "E97,E98", "--out", str(tmp_path)]
    assert main(argv) == 130
    assert calls == ["E97", "E98"]
    assert "1 finished experiment(s) kept" in capsys.readouterr().err
    assert json.loads((tmp_path / "checkpoints" / "E97" / "result.json").read_text())["result"]["metrics"] == {"v": 1}
    partial = json.loads((tmp_path / "results.json").read_text())  # the report of what finished
    assert [e["id"] for e in partial["experiments"]] == ["E97"] and partial["run"]["interrupted"]

    monkeypatch.setitem(EXPERIMENTS, "E98", _fake("E98", calls))
    assert main(argv) == 0
    assert calls == ["E97", "E98", "E98"]  # E97 reused, E98 run
    assert "from an earlier run, reused" in capsys.readouterr().out
    data = json.loads((tmp_path / "results.json").read_text())
    assert [e["id"] for e in data["experiments"]] == ["E97", "E98"] and data["run"]["reused"] == ["E97"]
    assert (tmp_path / "figures" / "E97-a.png").read_bytes() == b"png of E97 FakeConfig(value=1, figure='a')"

    assert main([*argv, "--no-resume"]) == 0
    assert calls[3:] == ["E97", "E98"]


def test_a_changed_configuration_runs_again_and_stale_figures_go(capsys, monkeypatch, tmp_path):
    calls: list[str] = []
    monkeypatch.setitem(EXPERIMENTS, "E97", _fake("E97", calls))
    monkeypatch.setitem(EXPERIMENTS, "E98", _fake("E98", calls))
    assert main(["reproduce", "--quick", "--only", "E97,E98", "--out", str(tmp_path)]) == 0
    monkeypatch.setitem(EXPERIMENTS, "E97", _fake("E97", calls, config=FakeConfig(2, "b")))
    assert main(["reproduce", "--quick", "--only", "E97", "--out", str(tmp_path)]) == 0
    assert calls == ["E97", "E98", "E97"]
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["E97-b.png"]  # E97-a and E98-a were stale
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "E97").iterdir()) == ["E97-b.png", "result.json"]
    assert json.loads((tmp_path / "results.json").read_text())["experiments"][0]["metrics"] == {"v": 2}
