"""The report: index.html is self-contained and holds every section, results.json is strict JSON that
round-trips, figures are written as PNG files, and the terminal summary lists every experiment."""

import base64
import json
import math
import os
import re

import numpy as np
import pytest
import torch

from ntkit.report import (
    ExperimentResult,
    Figure,
    Table,
    collect_environment,
    load_results,
    new_figure,
    plot_style,
    summary_table,
    to_jsonable,
    write_report,
)


def _figure(name):
    with plot_style():
        fig, (ax,) = new_figure()
        ax.loglog([1, 2, 4], [1, 0.5, 0.25], "o-")
    return Figure.from_matplotlib(name, fig, f"caption of {name}")


@pytest.fixture(scope="module")
def results():
    ok = ExperimentResult(
        id="E1",
        title="Kernel convergence",
        claim="The empirical kernels converge to the analytic ones <fast> & surely.",
        measured="slope -0.49 [-0.55, -0.43]",
        supported=True,
        verdict="Supported: the slope interval contains -1/2.",
        metrics={"slope": -0.49, "nan": math.nan, "inf": math.inf, "tensor": torch.tensor([1.0, 2.0]),
                 "nested": {"array": np.arange(3), "int": np.int64(4)}},
        tables=[Table("Slopes", ["quantity", "slope", "ok"], [["Θ̂", -0.49, True], ["K̂", None, False]], "cap")],
        figures=[_figure("E1-convergence")],
        config={"widths": (16, 32), "dtype": torch.float64},
        runtime_s=3.2,
    )  # fmt: skip
    undecided = ExperimentResult(id="E2", title="Undecided", claim="c2", supported=None, verdict="Inconclusive: wide.")
    failed = ExperimentResult(
        id="E3", title="Broken", claim="c3", status="failed", error="Traceback ...\nRuntimeError: boom", runtime_s=0.1
    )
    return [ok, undecided, failed]


@pytest.fixture(scope="module")
def report_dir(results, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    run = {
        "command": "ntkit reproduce --quick",
        "mode": "quick",
        "dataset": "digits",
        "seed": 0,
        "device": "cpu",
        "started": "2026-01-01T00:00:00+00:00",
        "total_runtime_s": 12.5,
        "environment": collect_environment(),
    }
    write_report(results, out, run=run)
    return out


def test_html_is_self_contained_with_every_section(report_dir):
    page = (report_dir / "index.html").read_text()
    assert page.startswith("<!doctype html>") and "<style>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)  # no network resources
    assert "<script" not in page and "<link" not in page
    assert 'id="summary"' in page and 'id="environment"' in page
    for eid in ("E1", "E2", "E3"):
        assert f'<section class="experiment" id="{eid}">' in page and f'href="#{eid}"' in page
    assert page.count('<span class="badge supported">') == 2  # summary row + section heading
    assert "badge inconclusive" in page and "badge failed" in page
    assert "RuntimeError: boom" in page
    assert "&lt;fast&gt; &amp; surely" in page  # text is escaped
    assert "ntkit reproduce --quick" in page and "torch" in page and "Total run time" in page
    assert "Paper’s claim" in page and "Measured" in page and "caption of E1-convergence" in page
    imgs = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(imgs) == 1
    assert base64.b64decode(imgs[0]) == (report_dir / "figures" / "E1-convergence.png").read_bytes()


def test_results_json_is_strict_and_round_trips(results, report_dir):
    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    data = json.loads((report_dir / "results.json").read_text(), parse_constant=no_constants)
    e1 = data["experiments"][0]
    assert e1["metrics"]["nan"] is None and e1["metrics"]["inf"] is None
    assert e1["metrics"]["tensor"] == [1.0, 2.0] and e1["metrics"]["nested"] == {"array": [0, 1, 2], "int": 4}
    assert e1["verdict_label"] == "supported" and e1["figures"][0]["file"] == "figures/E1-convergence.png"
    assert data["run"]["seed"] == 0 and {"python", "torch", "numpy", "device"} <= set(data["run"]["environment"])
    run, loaded = load_results(report_dir / "results.json")
    assert run["command"] == "ntkit reproduce --quick"
    assert [r.id for r in loaded] == ["E1", "E2", "E3"]
    assert [r.label for r in loaded] == ["supported", "inconclusive", "failed"]
    assert loaded[0].tables == [
        Table("Slopes", ["quantity", "slope", "ok"], [["Θ̂", -0.49, True], ["K̂", None, False]], "cap")
    ]
    assert loaded[0].figures[0].png == results[0].figures[0].png
    assert loaded[0].metrics == to_jsonable(results[0].metrics) and loaded[0].config == {
        "widths": [16, 32],
        "dtype": "torch.float64",
    }
    assert loaded[2].error == results[2].error
    # writing the loaded results again gives the same JSON
    again = report_dir.parent / "again"
    write_report(loaded, again, run=run)
    assert json.loads((again / "results.json").read_text()) == data


def test_summary_table_text(results):
    text = summary_table(results)
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "Experiment", "Verdict", "Time"]
    assert any(line.startswith("E1") and "supported" in line and "3.2 s" in line for line in lines)
    assert any(line.startswith("E3") and "failed" in line for line in lines)
    assert "Supported: the slope interval contains -1/2." in text
    assert lines[-1] == "1 supported, 1 inconclusive, 1 failed"


def test_table_rows_must_match_header_and_figure_names_must_be_unique(results, tmp_path):
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        Table("t", ["a", "b", "c"], [[1, 2]])
    dup = ExperimentResult(id="E4", title="t", claim="c", figures=[results[0].figures[0]])
    with pytest.raises(ValueError, match="unique"):
        write_report([results[0], dup], tmp_path)


def test_to_jsonable():
    assert to_jsonable({"a": (1, float("nan")), 2: np.float32(0.5), "t": torch.tensor(3)}) == {
        "a": [1, None],
        "2": 0.5,
        "t": 3,
    }


def test_an_interrupted_write_leaves_the_previous_report_whole(results, tmp_path, monkeypatch):
    """Report files are written to a temporary name and renamed: a failure before the rename (here the
    rename of index.html itself) leaves the old file as it was and no temporary file behind."""
    write_report(results[1:], tmp_path)
    before = (tmp_path / "index.html").read_text()

    def fail_on_index(src, dst):
        if str(dst).endswith("index.html"):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    real_replace = os.replace
    monkeypatch.setattr(os, "replace", fail_on_index)
    with pytest.raises(KeyboardInterrupt):
        write_report(results, tmp_path)
    assert (tmp_path / "index.html").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "index.html", "results.json"]
