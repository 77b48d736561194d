"""Slope fits, RMSE, relative change and accuracy against scipy / numpy / closed forms."""

import numpy as np
import pytest
import torch
from scipy import stats

from ntkit.errors import NonFiniteError, ShapeError
from ntkit.experiments import accuracy, fit_loglog_slope, relative_change, rmse


def test_exact_power_law_is_recovered_with_a_zero_width_interval():
    x = np.array([32, 64, 128, 256, 512])
    fit = fit_loglog_slope(x, 3.0 * x**-0.5)
    assert fit.slope == pytest.approx(-0.5, abs=1e-12) and np.exp(fit.intercept) == pytest.approx(3.0, rel=1e-12)
    assert fit.halfwidth == pytest.approx(0.0, abs=1e-10) and fit.r2 == pytest.approx(1.0)
    np.testing.assert_allclose(fit.predict([1000]), 3.0 * 1000**-0.5, rtol=1e-12)


def test_matches_scipy_linregress_on_noisy_data():
    rng = np.random.default_rng(0)
    x = np.repeat([16, 32, 64, 128, 256], 3)
    y = 2.0 * x**-0.8 * np.exp(0.2 * rng.standard_normal(len(x)))
    fit, ref = fit_loglog_slope(x, y), stats.linregress(np.log(x), np.log(y))
    assert fit.slope == pytest.approx(ref.slope, rel=1e-12) and fit.stderr == pytest.approx(ref.stderr, rel=1e-10)
    t = stats.t.ppf(0.975, len(x) - 2)
    assert fit.ci_low == pytest.approx(ref.slope - t * ref.stderr, rel=1e-10)
    assert fit.r2 == pytest.approx(ref.rvalue**2, rel=1e-10)
    assert fit.format().startswith(f"{ref.slope:+.2f} [")


def test_confidence_interval_covers_the_true_slope_95_percent_of_the_time():
    """2000 simulated fits: the coverage has binomial sd 0.5%, so [0.93, 0.97] is a 4-sd band around 0.95."""
    rng = np.random.default_rng(1)
    x = np.array([8, 16, 32, 64, 128, 256])
    hits = 0
    for _ in range(2000):
        fit = fit_loglog_slope(x, x**-0.7 * np.exp(0.3 * rng.standard_normal(len(x))))
        hits += fit.ci_low <= -0.7 <= fit.ci_high
    assert 0.93 <= hits / 2000 <= 0.97


def test_two_points_give_an_infinite_interval_and_bad_input_is_rejected():
    fit = fit_loglog_slope([1, 2], [1.0, 0.5])
    assert fit.slope == pytest.approx(-1.0) and fit.ci_low == -np.inf and fit.ci_high == np.inf
    with pytest.raises(NonFiniteError, match="positive"):
        fit_loglog_slope([1, 2, 3], [1.0, 0.0, 2.0])
    with pytest.raises(ShapeError):
        fit_loglog_slope([1, 2], [1.0, 2.0, 3.0])
    with pytest.raises(ShapeError, match="two distinct"):
        fit_loglog_slope([4, 4, 4], [1.0, 2.0, 3.0])


def test_rmse_relative_change_accuracy():
    a, b = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    assert rmse(a, b) == pytest.approx(1.0)
    assert relative_change(b, a) == pytest.approx(2.0 / np.sqrt(30.0))
    assert accuracy(torch.tensor([[0.5], [-1.0], [2.0]]), torch.tensor([1, 1, 1])) == pytest.approx(2 / 3)
    assert accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1])) == pytest.approx(0.5)
    with pytest.raises(ShapeError):
        rmse(a, b[:1])
