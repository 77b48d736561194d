"""Registry selection and the run loop: ordering, unknown ids, failures captured as results, timing."""

import pytest

from ntkit.errors import InvalidArgumentError
from ntkit.experiments import EXPERIMENTS, Experiment, RunContext, known_ids, register, run_experiments, select
from ntkit.experiments.registry import EXPERIMENTS as REGISTRY
from ntkit.report import ExperimentResult


def test_select_parses_orders_and_rejects_unknown_ids():
    assert [e.id for e in select(None)] == known_ids()
    assert [e.id for e in select(" e3 ,E3")] == ["E3"]
    with pytest.raises(InvalidArgumentError, match=r"unknown experiment E99, X; known experiments: .*E3"):
        select("E3,E99,X")
    with pytest.raises(InvalidArgumentError, match="no experiment selected"):
        select(" , ")


def test_every_experiment_has_quick_and_full_configurations():
    for eid, exp in EXPERIMENTS.items():
        assert exp.id == eid and exp.title and exp.claim and exp.quick is not None and exp.full is not None


def _ok(cfg, ctx):
    return ExperimentResult(id="E97", title="ok", claim="c", supported=True, verdict="v", metrics={"x": cfg["x"]})


def _boom(cfg, ctx):
    raise RuntimeError("the experiment broke")


def test_run_loop_captures_failures_and_times_each(monkeypatch):
    monkeypatch.setitem(REGISTRY, "E97", Experiment("E97", "ok", "c", _ok, {"x": 1}, {"x": 2}))
    monkeypatch.setitem(REGISTRY, "E98", Experiment("E98", "boom", "c", _boom, {}, {}))
    started, ended = [], []
    results = run_experiments(
        select("E98,E97"),
        RunContext(quick=False),
        on_start=lambda i, e: started.append(e.id),
        on_end=lambda i, r: ended.append(r.label),
    )
    assert started == ["E97", "E98"] and ended == ["supported", "failed"]
    ok, failed = results
    assert ok.metrics == {"x": 2} and ok.config == {"x": 2}  # the full configuration was used
    assert (
        failed.status == "failed"
        and failed.supported is None
        and "RuntimeError: the experiment broke" in failed.verdict
    )
    assert "Traceback" in failed.error and "_boom" in failed.error
    assert (failed.id, failed.title, failed.claim) == ("E98", "boom", "c")  # from the registry
    assert ok.runtime_s >= 0 and failed.runtime_s >= 0


def test_register_twice_is_an_error(monkeypatch):
    monkeypatch.setitem(REGISTRY, "E96", Experiment("E96", "t", "c", _ok, {}, {}))
    with pytest.raises(ValueError, match="twice"):
        register("E96", title="t", claim="c", quick={}, full={})(_ok)


def test_derive_seed_is_deterministic_and_distinct():
    a, b = RunContext(seed=0), RunContext(seed=1)
    assert a.derive_seed("E3", 64, 0) == RunContext(seed=0).derive_seed("E3", 64, 0)
    assert len({a.derive_seed("E3", 64, 0), a.derive_seed("E3", 64, 1), b.derive_seed("E3", 64, 0)}) == 3


def test_register_fills_in_id_title_and_claim(monkeypatch):
    monkeypatch.delitem(REGISTRY, "E95", raising=False)
    fn = register("E95", title="t95", claim="c95", quick={}, full={})(lambda cfg, ctx: ExperimentResult(verdict="v"))
    try:
        for result in (fn({}, RunContext()), REGISTRY["E95"].run(RunContext())):
            assert (result.id, result.title, result.claim, result.verdict) == ("E95", "t95", "c95", "v")
    finally:
        del REGISTRY["E95"]
