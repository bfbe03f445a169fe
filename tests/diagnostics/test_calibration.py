"""bayesdistill.diagnostics.calibration: CalibrationResult against independent computations
(brute-force binning, bd.evaluate's ECE, interval coverage by hand with scipy's normal quantiles)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from scipy.stats import norm

import bayesdistill as bd
from bayesdistill.diagnostics import CalibrationResult, calibration, expected_calibration_error

N_BINS = 15


def _brute_force_bins(probs: torch.Tensor, targets: torch.Tensor, n_bins: int):
    """Per bucket (n_bins half-open bins [k/n, (k+1)/n) and [1, 1]): count, confidence sum, correct sum."""
    count, conf, acc = [0] * (n_bins + 1), [0.0] * (n_bins + 1), [0.0] * (n_bins + 1)
    for p, t in zip(probs.tolist(), targets.tolist()):
        c = max(p)
        k = n_bins if c >= 1.0 else next(b for b in range(n_bins) if b / n_bins <= c < (b + 1) / n_bins)
        count[k] += 1
        conf[k] += c
        acc[k] += float(p.index(c) == t)
    return count, conf, acc


def test_reliability_matches_brute_force_binning():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 4, generator=g, dtype=torch.float64), dim=-1)
    targets = torch.randint(0, 4, (500,), generator=g)
    probs[:5] = torch.nn.functional.one_hot(targets[:5], 4).double()  # confidence exactly 1.0
    res = CalibrationResult.from_probs(probs, targets, n_bins=N_BINS)
    count, conf, acc = _brute_force_bins(probs, targets, N_BINS)
    assert res.task == "classification" and res.n_bins == N_BINS and res.num_examples == 500
    assert res.count == count and count[-1] == 5 and sum(count) == 500
    for k in range(N_BINS + 1):
        if count[k]:
            assert res.confidence[k] == pytest.approx(conf[k] / count[k], abs=1e-12)
            assert res.accuracy[k] == pytest.approx(acc[k] / count[k], abs=1e-12)
        else:
            assert math.isnan(res.confidence[k]) and math.isnan(res.accuracy[k])
    assert res.bin_lower[:N_BINS] == pytest.approx([k / N_BINS for k in range(N_BINS)])
    assert res.bin_lower[-1] == res.bin_upper[-1] == 1.0
    assert res.ece == pytest.approx(sum(abs(a - c) for a, c in zip(acc, conf)) / 500, abs=1e-12)
    assert res.ece == float(expected_calibration_error(probs, targets, n_bins=N_BINS))


def test_calibration_of_a_bnn_equals_evaluate_ece(trained):
    bnn, _, test = trained
    res = calibration(bnn, test, num_samples=16, n_bins=N_BINS, seed=3)
    logits, y = bd.predict(bnn, test, num_samples=16, seed=3)
    probs = (torch.logsumexp(torch.log_softmax(logits, -1), 0) - math.log(16)).exp()
    assert res.ece == float(expected_calibration_error(probs, y, n_bins=N_BINS))
    assert res.ece == pytest.approx(bd.evaluate(bnn, test, num_samples=16, seed=3)["ece"], abs=1e-12)
    assert (res.num_samples, res.seed, res.num_examples) == (16, 3, len(test)) and sum(res.count) == len(test)


def test_to_dict_is_plain_json():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    res = CalibrationResult.from_probs(probs, torch.tensor([0, 1, 1]), n_bins=4)
    d = res.to_dict()
    text = json.dumps(d, allow_nan=False)  # empty bins are None, not NaN
    assert json.loads(text) == d
    assert d["task"] == "classification" and d["ece"] == res.ece and d["bins"]["count"] == res.count
    assert d["bins"]["accuracy"][0] is None and "levels" not in d


def test_calibration_argument_errors(trained):
    bnn, _, test = trained
    with pytest.raises(TypeError):
        calibration()
    with pytest.raises(TypeError):
        calibration(bnn, test, probs=torch.full((2, 2), 0.5))
    with pytest.raises(TypeError):
        calibration(bnn)
    with pytest.raises(TypeError):
        CalibrationResult.from_probs(torch.full((2, 2), 0.5))
    with pytest.raises(ValueError):  # logits instead of probabilities
        CalibrationResult.from_probs(torch.randn(10, 3) * 5, torch.zeros(10, dtype=torch.long))
    with pytest.raises(TypeError, match="bd.BNN"):
        calibration(bnn.net, test)
    with pytest.raises(ValueError, match="labelled"):
        calibration(bnn, test.tensors[0])


# ----------------------------------------------------------------------------- regression: coverage
def test_coverage_by_hand():
    mean, std = torch.zeros(4), torch.ones(4)
    targets = torch.tensor([0.1, -0.5, 1.0, 2.0])  # |z| = 0.1, 0.5, 1.0, 2.0
    res = CalibrationResult.from_gaussian(mean, std, targets, levels=[0.5, 0.9])
    # central 50% interval: |z| <= 0.674 (0.1, 0.5 inside); 90%: |z| <= 1.645 (three inside)
    assert res.task == "regression" and res.levels == [0.5, 0.9]
    assert res.observed == pytest.approx([0.5, 0.75], abs=1e-15)
    assert res.coverage_error == pytest.approx((0.0 + 0.15) / 2, abs=1e-12)
    with pytest.raises(ValueError, match="levels"):
        CalibrationResult.from_gaussian(mean, std, targets, levels=[0.5, 1.0])
    with pytest.raises(ValueError, match="shape"):
        CalibrationResult.from_gaussian(mean, std, targets[:3])


def test_coverage_of_a_regression_bnn_matches_a_hand_computation(regression):
    bnn, data = regression
    res = calibration(bnn, data, num_samples=8, seed=1)
    means, y = bd.predict(bnn, data, num_samples=8, seed=1)
    mu = means.double().mean(0).reshape(-1).tolist()
    sigma = float(bnn.likelihood.scale.detach())
    var = means.double().var(0, unbiased=False).reshape(-1).tolist()
    y = y.double().reshape(-1).tolist()
    assert res.levels == pytest.approx([0.05 * k for k in range(1, 20)])
    expected = []
    for p in res.levels:
        half = norm.ppf(0.5 + p / 2)  # the central p-interval of N(mu, s^2) is mu +- half * s
        expected.append(sum(abs(t - m) <= half * math.sqrt(sigma**2 + v) for t, m, v in zip(y, mu, var)) / len(y))
    assert res.observed == pytest.approx(expected, abs=1e-12)
    assert res.coverage_error == pytest.approx(sum(abs(o - p) for o, p in zip(expected, res.levels)) / 19)
    assert 0.0 <= res.coverage_error <= 1.0 and res.num_samples == 8 and res.num_examples == 200
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["observed"] == res.observed and d["coverage_error"] == res.coverage_error and "bins" not in d
