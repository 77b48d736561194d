"""gp_inference against the posterior formulas written with dense solves (theory.md §3.1-3.4)."""

import pytest
import torch
from predict_helpers import rel, relu_kernels

import ntkit as nk

N, M, N_OUT = 16, 6, 3


@pytest.fixture
def data():
    x = torch.randn(N + M, 4, dtype=torch.float64)
    y = torch.randn(N, N_OUT, dtype=torch.float64)
    return relu_kernels(x[:N], x[:N]), relu_kernels(x[N:], x[:N]), relu_kernels(x[N:], x[N:]), y


@pytest.mark.parametrize("diag_reg", [0.0, 1e-2])
def test_posteriors_match_dense_formulas(data, diag_reg):
    k_dd, k_td, k_tt, y = data
    eye = torch.eye(N, dtype=torch.float64)
    reg = {g: k_dd[g] + diag_reg * k_dd[g].diagonal().mean() * eye for g in ("nngp", "ntk")}
    predict = nk.predict.gp_inference(k_dd, y, diag_reg=diag_reg)

    # NNGP posterior (eq. 13)
    mean, cov = predict("nngp", k_td, k_tt)
    assert rel(mean, k_td["nngp"] @ torch.linalg.solve(reg["nngp"], y)) < 1e-12
    assert rel(cov, k_tt["nngp"] - k_td["nngp"] @ torch.linalg.solve(reg["nngp"], k_td["nngp"].T)) < 1e-12

    # NTK ensemble at t = inf (eq. 16, matrix form); diag_reg regularizes only the inverted Θ, and K stays f_0's
    # covariance (neural-tangents' rule, issue 17 item 6)
    gain = k_td["ntk"] @ torch.linalg.inv(reg["ntk"])
    ref_cov = k_tt["nngp"] + gain @ k_dd["nngp"] @ gain.T - gain @ k_td["nngp"].T - k_td["nngp"] @ gain.T
    mean, cov = predict("ntk", k_td, k_tt)
    assert rel(mean, gain @ y) < 1e-12
    assert rel(cov, ref_cov) < 1e-11

    # NTK-GP: GP posterior with the NTK as prior
    mean, cov = predict("ntkgp", k_td, k_tt)
    assert rel(mean, gain @ y) < 1e-12
    assert rel(cov, k_tt["ntk"] - k_td["ntk"] @ torch.linalg.solve(reg["ntk"], k_td["ntk"].T)) < 1e-12


def test_mean_only_tuple_get_and_absolute_reg(data):
    k_dd, k_td, k_tt, y = data
    predict = nk.predict.gp_inference(k_dd, y, diag_reg=0.5, diag_reg_absolute_scale=True)
    out = predict(("nngp", "ntkgp"), k_td)
    assert set(out) == {"nngp", "ntkgp"}
    eye = torch.eye(N, dtype=torch.float64)
    assert rel(out["nngp"], k_td["nngp"] @ torch.linalg.solve(k_dd["nngp"] + 0.5 * eye, y)) < 1e-12
    # 1-D targets give 1-D means; the same covariance
    mean, cov = nk.predict.gp_inference(k_dd, y[:, 0])("nngp", k_td, k_tt)
    assert mean.shape == (M,) and cov.shape == (M, M)


def test_kernel_objects_with_attributes(data):
    """Anything with .nngp / .ntk works (ntkit's nk.Kernel); dicts too."""
    k_dd, k_td, k_tt, y = data

    class Kernel:
        def __init__(self, d):
            self.nngp, self.ntk = d["nngp"], d["ntk"]

    a = nk.predict.gp_inference(Kernel(k_dd), y)("ntk", Kernel(k_td), Kernel(k_tt))
    b = nk.predict.gp_inference(k_dd, y)("ntk", k_td, k_tt)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_nngp_only_kernels_suffice_for_nngp(data):
    k_dd, k_td, k_tt, y = data
    only = {"nngp": k_dd["nngp"]}
    mean, _ = nk.predict.gp_inference(only, y)("nngp", {"nngp": k_td["nngp"]}, {"nngp": k_tt["nngp"]})
    assert mean.shape == (M, N_OUT)
    with pytest.raises(nk.errors.UnsupportedError, match="'ntk'"):
        nk.predict.gp_inference(only, y)("ntk", {"nngp": k_td["nngp"]})


def test_plain_tensors_where_one_kernel_suffices(data):
    """Issue 17 item 6 (neural-tangents' convention): a plain tensor is the one kernel a get needs, K for "nngp",
    Θ for "ntkgp" and for the "ntk" mean; the results equal those from kernel dicts (same arithmetic: exactly)."""
    k_dd, k_td, k_tt, y = data
    by_dict = nk.predict.gp_inference(k_dd, y, diag_reg=1e-3)
    mean, cov = nk.predict.gp_inference(k_dd["nngp"], y, diag_reg=1e-3)("nngp", k_td["nngp"], k_tt["nngp"])
    ref_mean, ref_cov = by_dict("nngp", k_td, k_tt)
    assert torch.equal(mean, ref_mean) and torch.equal(cov, ref_cov)
    on_ntk = nk.predict.gp_inference(k_dd["ntk"], y, diag_reg=1e-3)
    mean, cov = on_ntk("ntkgp", k_td["ntk"], k_tt["ntk"])
    ref_mean, ref_cov = by_dict("ntkgp", k_td, k_tt)
    assert torch.equal(mean, ref_mean) and torch.equal(cov, ref_cov)
    assert torch.equal(on_ntk("ntk", k_td["ntk"]), by_dict("ntk", k_td))
    with pytest.raises(nk.errors.UnsupportedError, match="k_train_train, k_test_train, k_test_test is a plain"):
        on_ntk("ntk", k_td["ntk"], k_tt["ntk"])


def test_float32_inputs_give_float32_outputs(data):
    """Linear algebra runs in float64; results come back in the inputs' dtype, close to the float64 ones
    (the float32 rounding of the kernels, amplified by cond(K) ~ 1e2 here: 1e-4 relative)."""
    k_dd, k_td, k_tt, y = data
    single = {name: {g: k[g].float() for g in k} for name, k in (("dd", k_dd), ("td", k_td), ("tt", k_tt))}
    mean32, cov32 = nk.predict.gp_inference(single["dd"], y.float())("ntk", single["td"], single["tt"])
    mean64, cov64 = nk.predict.gp_inference(k_dd, y)("ntk", k_td, k_tt)
    assert mean32.dtype == cov32.dtype == torch.float32
    assert rel(mean32.double(), mean64) < 1e-4 and rel(cov32.double(), cov64) < 1e-4
    x = torch.randn(N + M, 4)
    predict = nk.predict.gradient_descent_mse_ensemble(relu_kernels, x[:N], y.float(), 0.1)
    mean, cov = predict(torch.tensor([1, 5]), x[N:], "nngp", compute_cov=True)
    assert mean.dtype == cov.dtype == torch.float32 and mean.shape == (2, M, N_OUT)
