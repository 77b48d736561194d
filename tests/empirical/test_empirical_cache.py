"""The trace cache of ``nk.empirical_ntk`` (``tracing.cached_trace``): repeated calls reuse the traced structure,
and every change the trace depends on traces again, so that the kernel stays exact (against the dense float64
Jacobian, to ``TOL``: both routes are exact, so the difference is round-off; a stale trace that misses a use of a
parameter is off by far more, as ``test_replaced_layer_is_traced_again`` shows with a hidden use)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from empirical_reference import TOL, kernel_from_jacobians
from torch import nn

import ntkit as nk
from ntkit.empirical import tracing
from ntkit.empirical.terms import Workspace
from reference import dense_jacobian, rel_err

DT = torch.float64


@pytest.fixture
def traces(monkeypatch):
    """The list of per-example input shapes :func:`tracing.trace_model` was called with (one per real trace)."""
    calls: list[tuple[int, ...]] = []
    real = tracing.trace_model

    def counting(fm, x):
        calls.append(tuple(x.shape[1:]))
        return real(fm, x)

    monkeypatch.setattr(tracing, "trace_model", counting)
    tracing.clear_trace_cache()
    yield calls
    tracing.clear_trace_cache()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(DT).eval()


def exact(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, full: bool = False) -> torch.Tensor:
    J1 = dense_jacobian(model, x1)
    return kernel_from_jacobians(J1, J1 if x2 is None else dense_jacobian(model, x2), not full)


def check(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, **kw) -> None:
    got = nk.empirical_ntk(model, x1, x2, trace_outputs=not kw.get("full", False), **kw.get("extra", {}))
    assert rel_err(got, exact(model, x1, x2, kw.get("full", False))) < TOL


def test_repeated_calls_trace_once(traces):
    model, x = mlp(), torch.randn(6, 5, dtype=DT)
    for _ in range(3):
        check(model, x)
    check(model, torch.randn(4, 5, dtype=DT), torch.randn(3, 5, dtype=DT))  # another batch size: same trace
    check(model, x, full=True)
    assert traces == [(5,)]


def test_parameter_changes_trace_again(traces):
    """An in-place update (an optimizer step) and a replaced parameter both trace again, and the kernel is the
    new parameters' kernel."""
    model, x = mlp(), torch.randn(6, 5, dtype=DT)
    check(model, x)
    with torch.no_grad():
        model[0].weight.mul_(2.0)
    check(model, x)
    model[2].weight = nn.Parameter(torch.randn(3, 7, dtype=DT))
    check(model, x)
    assert len(traces) == 3


def test_dtype_shape_mode_and_selection_trace_again(traces):
    model, x = mlp(), torch.randn(6, 5, dtype=DT)
    check(model, x)
    model.float()
    got = nk.empirical_ntk(model, x.float())
    assert got.dtype == torch.float32
    model.double()
    model.train()  # no dropout or batch norm: the kernel is the same, but the flag is part of the key
    check(model, x)
    model.eval()
    got = nk.empirical_ntk(model, x, params=["2.*"])
    J = dense_jacobian(model, x, ["2.weight", "2.bias"])
    assert rel_err(got, kernel_from_jacobians(J, J, True)) < TOL
    assert len(traces) == 4  # float32, train mode, the selection; double() and eval() return to earlier keys
    conv = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).to(DT).eval()
    check(conv, torch.randn(3, 2, 5, 5, dtype=DT))
    check(conv, torch.randn(3, 2, 6, 7, dtype=DT))
    assert traces[-2:] == [(2, 5, 5), (2, 6, 7)]


class Plain(nn.Module):
    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x))


class Hidden(Plain):
    """Uses ``lin.weight`` once more where no torch function mode can see it (only the trace's gradient check
    finds that use, and moves the weight to Jacobian contraction)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = super().forward(x)
        with torch._C.DisableTorchFunction():
            return torch.tanh(h @ self.lin.weight.T)


def test_replaced_layer_is_traced_again(traces):
    """Same parameter names and tensors, another module using them: a stale trace would contract lin.weight
    by its rule only and miss the hidden term."""
    torch.manual_seed(0)
    model = nn.Sequential(Plain(nn.Linear(4, 4)), nn.Linear(4, 2)).to(DT).eval()
    x = torch.randn(5, 4, dtype=DT)
    check(model, x, extra={"method": "structured"})
    model[0] = Hidden(model[0].lin)
    check(model, x, extra={"method": "structured"})
    assert len(traces) == 2


def test_plain_function_keys_on_its_parameters(traces):
    torch.manual_seed(0)
    W = torch.randn(3, 4, dtype=DT)

    def f(p, x):
        return torch.tanh(x @ p["W"].T)

    x = torch.randn(5, 4, dtype=DT)
    for W_now in (W, W, W * 3.0):
        got = nk.empirical_ntk(f, x, params={"W": W_now})
        model = nn.Linear(4, 3, bias=False).to(DT)
        model.weight.data = W_now
        assert rel_err(got, exact(nn.Sequential(model, nn.Tanh()), x)) < TOL
    assert len(traces) == 2  # another tensor: its storage is part of the key


def test_cache_does_not_keep_the_model_alive(traces):
    model = mlp()
    nk.empirical_ntk(model, torch.randn(3, 5, dtype=DT))
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_clear_trace_cache(traces):
    model, x = mlp(), torch.randn(3, 5, dtype=DT)
    nk.empirical_ntk(model, x)
    tracing.clear_trace_cache()
    nk.empirical_ntk(model, x)
    assert len(traces) == 2


def test_warm_calls_reuse_the_plan(traces, monkeypatch):
    """The structured method's per-parameter forms are planned once per trace and problem size: repeated calls do
    not plan again, another batch size does, and an in-place parameter update (a new trace) plans again and gives
    the new parameters' kernel."""
    from ntkit.empirical import structured

    plans = []
    real = structured._groups
    monkeypatch.setattr(structured, "_groups", lambda *a: plans.append(a[2]) or real(*a))
    model, x = mlp(), torch.randn(6, 5, dtype=DT)
    for _ in range(3):
        check(model, x, extra={"method": "structured"})
    assert len(plans) == 1
    check(model, x[:4], extra={"method": "structured"})
    assert len(plans) == 2
    with torch.no_grad():
        model[2].weight.add_(1.0)
    check(model, x, extra={"method": "structured"})
    assert len(plans) == 3 and len(traces) == 2


def test_added_hook_is_traced_again(traces):
    """A forward hook that uses a weight outside its layer call (where only tracing finds it) makes a new trace: a
    stale one would contract ``0.weight`` by its rule only and miss the hook's term. Removing the hook returns to
    the first trace's key."""
    model, x = mlp(), torch.randn(6, 5, dtype=DT)
    check(model, x, extra={"method": "structured"})
    handle = model[2].register_forward_hook(lambda mod, args, out: out + torch.tanh(model[0].weight).sum())
    check(model, x, extra={"method": "structured"})
    handle.remove()
    check(model, x, extra={"method": "structured"})
    assert len(traces) == 2


def test_global_hook_and_parametrization_trace_again(traces):
    """A global forward hook, and a parametrization (which swaps the module's class and moves its weight), both
    change what the model computes from its parameters: each traces again and the kernel is the new model's."""
    from torch.nn.utils import parametrize

    model, x = mlp(), torch.randn(6, 5, dtype=DT)
    check(model, x, extra={"method": "structured"})
    handle = nn.modules.module.register_module_forward_hook(
        lambda mod, args, out: out + torch.tanh(model[0].weight).sum() if mod is model[2] else None
    )
    try:
        check(model, x, extra={"method": "structured"})
    finally:
        handle.remove()

    class Doubled(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return 2.0 * w

    parametrize.register_parametrization(model[2], "weight", Doubled())
    check(model, x, extra={"method": "structured"})
    assert len(traces) == 3


def test_warm_calls_reuse_the_method_choice(traces, monkeypatch):
    """The method choice and block plan (``ntk.unlimited_choice``) are kept with the trace: repeated calls do not
    build or plan the methods again; another batch size, another parameter selection, train mode, an in-place
    update and another dtype do (a new problem or a new trace), and every kernel is the current model's."""
    from ntkit.empirical import ntk

    chosen = []
    real = ntk._choose
    monkeypatch.setattr(ntk, "_choose", lambda *a: chosen.append(a[3]) or real(*a))
    model, x = mlp(), torch.randn(6, 5, dtype=DT)
    for _ in range(3):
        check(model, x)
    assert len(chosen) == 1
    check(model, x[:4])
    assert len(chosen) == 2
    got = nk.empirical_ntk(model, x, params=["2.*"])
    J = dense_jacobian(model, x, ["2.weight", "2.bias"])
    assert rel_err(got, kernel_from_jacobians(J, J, True)) < TOL and len(chosen) == 3
    model.train()
    check(model, x)
    model.eval()
    assert len(chosen) == 4
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    check(model, x)
    assert len(chosen) == 5
    got = nk.empirical_ntk(model.float(), x.float())
    assert got.dtype == torch.float32 and len(chosen) == 6


def _held_scratch_bytes() -> int:
    """Bytes held by every live :class:`~ntkit.empirical.terms.Workspace` (the structured method's kept buffers)."""
    gc.collect()
    return sum(
        b.numel() * b.element_size() for w in gc.get_objects() if isinstance(w, Workspace) for b in w._buffers.values()
    )


def test_buffers_are_kept_once_per_model(traces):
    """A training loop traces again at every step (the parameters change in place); the new trace takes over the
    previous one's scratch buffers, so the memory held after five steps is that of one call, not of the four traces
    the cache keeps (before ModelTrace.scratch it was four times as much), and every kernel stays exact."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).to(DT)  # fmt: skip
    x = torch.randn(6, 2, 5, 5, dtype=DT)
    before = _held_scratch_bytes()
    check(model, x)
    one_call = _held_scratch_bytes() - before
    assert one_call > 0
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.9)
        check(model, x)
    assert len(traces) == 6
    assert _held_scratch_bytes() - before == one_call
