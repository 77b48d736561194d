"""The linearized model as a torch module: storage layout, serialization, dtype/device moves, DDP, and
independence from the wrapped model. Equalities here are exact (same operations on the same numbers)
unless a dtype conversion is involved."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from linearize_cases import bn_model, dense_linearization, mlp, random_delta, set_delta
from torch.nn.parallel import DistributedDataParallel

import ntkit as nk
from reference import rel_err

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def moved(model, degree=1, params=None):
    """A Taylor-expanded model of ``model`` whose θ has been moved away from θ0."""
    tay = nk.taylor_expand(model, degree, params)
    set_delta(tay, random_delta(tay))
    return tay


def test_state_dict_layout():
    model = bn_model()
    lin = nk.linearize(model, ["1.*", "4.weight"])
    state = lin.state_dict()
    assert sorted(k for k in state if k.startswith("theta.")) == ["theta.1.bias", "theta.1.weight", "theta.4.weight"]
    # θ0 of the selected, frozen values of the others and the model's buffers all live in model0
    assert {k.removeprefix("model0.") for k in state if k.startswith("model0.")} == set(model.state_dict())
    for name, value in model.state_dict().items():
        assert torch.equal(state[f"model0.{name}"], value)


@pytest.mark.parametrize("degree", [1, 2])
def test_state_dict_round_trip_into_a_fresh_model(tmp_path, degree):
    """Loading a saved state into a Taylor expansion of a differently initialised model reproduces the outputs:
    θ, θ0 and the buffers are all in the state_dict."""
    lin = moved(bn_model(), degree, ["1.*", "4.weight"])
    x = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    torch.save(lin.state_dict(), tmp_path / "lin.pt")
    fresh = nk.taylor_expand(bn_model(), degree, ["1.*", "4.weight"])  # other random init, other running stats
    assert not torch.equal(fresh(x), lin(x))
    fresh.load_state_dict(torch.load(tmp_path / "lin.pt", weights_only=True))
    assert torch.equal(fresh(x), lin(x))


def test_whole_module_save_load(tmp_path):
    lin = moved(mlp())
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.save(lin, tmp_path / "lin.pt")
    loaded = torch.load(tmp_path / "lin.pt", weights_only=False)
    assert isinstance(loaded, nk.LinearizedModel)
    assert torch.equal(loaded(x), lin(x))


def test_function_model_save_load(tmp_path):
    """A linearized plain function f(params, x) keeps θ0 as buffers too (the function must be picklable)."""
    lin = nk.linearize(_quadratic, {"w": torch.randn(3, dtype=torch.float64)})
    set_delta(lin, random_delta(lin))
    x = torch.randn(4, 3, dtype=torch.float64)
    assert sorted(lin.state_dict()) == ["model0.w", "theta.w"]
    torch.save(lin, tmp_path / "lin.pt")
    assert torch.equal(torch.load(tmp_path / "lin.pt", weights_only=False)(x), lin(x))


def _quadratic(params, x):
    return (x @ params["w"]) ** 2


@pytest.mark.parametrize("device", DEVICES)
def test_double_and_to(device):
    """A float32 linearized model moved with .double() / .to(device, float64) equals the float64 linearization
    of the same numbers (dense-Jacobian reference in float64; exact formulas, so 1e-10)."""
    model32 = bn_model().float()
    lin = nk.linearize(model32)
    set_delta(lin, random_delta(lin))
    theta0 = lin.theta0()
    delta = {n: p.detach().double() - theta0[n].double() for n, p in lin.theta.named_parameters()}  # exact in float64
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    model64 = copy.deepcopy(model32).double()
    expected = dense_linearization(model64, x, delta)
    # each converted copy is moved to the device with its input (on CUDA a CPU model would fail)
    for converted in (copy.deepcopy(lin).double().to(device), copy.deepcopy(lin).to(device, torch.float64)):
        out = converted(x.to(device)).detach().cpu()
        assert out.dtype == torch.float64
        assert rel_err(out, expected) < 1e-10
    assert lin.theta0()["0.weight"].dtype == torch.float32  # copies were converted, not the original


def test_wrapped_model_is_never_modified():
    model = bn_model()
    before = copy.deepcopy(model.state_dict())
    lin = nk.linearize(model)
    x = torch.randn(6, 2, 6, 6, dtype=torch.float64)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        lin(x).square().mean().backward()
        opt.step()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])
    assert all(p.grad is None for p in model.parameters())
    # and training the model does not move its linearization
    out = lin(x).detach()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert torch.equal(lin(x), out)


def test_train_eval_keep_model0_mode():
    """lin.train() (called by every training loop) must not put a BatchNorm of model0 into train mode."""
    lin = moved(bn_model())
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    out = lin(x).detach()
    running_mean = lin.model0[1].running_mean.clone()
    lin.train()
    assert lin.training and not lin.model0[1].training
    assert torch.equal(lin(x), out)
    assert torch.equal(lin.model0[1].running_mean, running_mean)  # no running-statistics update either
    lin.eval()
    assert not lin.training and torch.equal(lin(x), out)


def test_distributed_data_parallel_matches_plain_module(tmp_path):
    """DDP (gloo, one process): a forward/backward/step gives the gradients and parameters of the plain module."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        lin = moved(bn_model(), 1, ["1.*", "4.weight"])
        plain = copy.deepcopy(lin)
        ddp = DistributedDataParallel(lin)
        x = torch.randn(6, 2, 6, 6, dtype=torch.float64)
        y = torch.randn(6, 2, dtype=torch.float64)
        opt_ddp = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        opt_plain = torch.optim.SGD(plain.parameters(), lr=0.05, momentum=0.9)
        for _ in range(2):
            for module, opt in ((ddp, opt_ddp), (plain, opt_plain)):
                opt.zero_grad()
                torch.nn.functional.mse_loss(module(x), y).backward()
            for p_ddp, p_plain in zip(ddp.module.parameters(), plain.parameters(), strict=True):
                assert p_ddp.grad is not None
                assert rel_err(p_ddp.grad, p_plain.grad) < 1e-12
            opt_ddp.step()
            opt_plain.step()
        assert rel_err(ddp(x).detach(), plain(x).detach()) < 1e-12
    finally:
        dist.destroy_process_group()
