"""Tests for bayesdistill.diagnostics.metrics against independent reference computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.special
import scipy.stats
import torch
import torch.nn.functional as F

from bayesdistill.diagnostics.metrics import (
    calibration_curve,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    regression_metrics,
)

CLASSIFICATION_KEYS = {
    "accuracy",
    "nll",
    "ece",
    "brier",
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "num_samples",
}
REGRESSION_KEYS = {"rmse", "mse", "nll", "gaussian_nll", "predictive_std", "num_samples"}


# --------------------------------------------------------------------------- #
# independent numpy references
# --------------------------------------------------------------------------- #
def ece_bruteforce(probs: np.ndarray, targets: np.ndarray, n_bins: int) -> float:
    """Plain-loop ECE with explicit edges.

    Bins are [edges[k], edges[k+1]) for k < n_bins, plus a separate bucket for confidence == 1.0
    (the torchmetrics convention).
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    members: list[list[int]] = [[] for _ in range(n_bins + 1)]
    for i in range(probs.shape[0]):
        conf = float(np.max(probs[i]))
        if conf >= 1.0:
            members[n_bins].append(i)
            continue
        for k in range(n_bins):
            if edges[k] <= conf < edges[k + 1]:
                members[k].append(i)
                break
        else:  # pragma: no cover - confidences are in [1/C, 1]
            raise AssertionError(f"confidence {conf} not binned")
    n = probs.shape[0]
    ece = 0.0
    for idx in members:
        if not idx:
            continue
        confs = [float(np.max(probs[i])) for i in idx]
        accs = [float(np.argmax(probs[i]) == targets[i]) for i in idx]
        ece += len(idx) / n * abs(sum(accs) / len(idx) - sum(confs) / len(idx))
    return ece


def softmax_np(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def random_probs(gen: torch.Generator, n: int, c: int, conc: float = 1.0) -> torch.Tensor:
    """[N, C] float64 Dirichlet(conc) rows, seeded from ``gen``."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.dirichlet(np.full(c, conc), size=n))


# --------------------------------------------------------------------------- #
# ECE / calibration curve
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("n_bins", [1, 3, 10, 15])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ece_matches_bruteforce(gen, n_bins, dtype):
    probs = random_probs(gen, 500, 5, conc=0.5).to(dtype)
    targets = torch.randint(0, 5, (500,), generator=gen)
    got = expected_calibration_error(probs, targets, n_bins=n_bins)
    want = ece_bruteforce(probs.double().numpy(), targets.numpy(), n_bins)
    assert got.dim() == 0
    assert got.item() == pytest.approx(want, abs=1e-6)


def test_ece_hand_worked_case_with_confidence_one():
    # n_bins = 5 -> bins [0,.2) [.2,.4) [.4,.6) [.6,.8) [.8,1) plus the {1.0} bucket.
    #   sample 0: conf 0.85, correct -> bin [.8,1)
    #   sample 1: conf 0.90, correct -> bin [.8,1)
    #   sample 2: conf 0.50, correct -> bin [.4,.6)
    #   sample 3: conf 1.00, WRONG   -> bucket {1.0}
    # bin [.8,1):  acc 1,  conf 0.875 -> 2/4 * 0.125 = 0.0625
    # bin [.4,.6): acc 1,  conf 0.5   -> 1/4 * 0.5   = 0.125
    # bucket 1.0:  acc 0,  conf 1.0   -> 1/4 * 1.0   = 0.25
    # ECE = 0.4375.  (Had 1.0 been merged into [.8,1): acc 2/3, conf 2.75/3 -> 3/4 * 0.25 = 0.1875,
    # giving 0.3125 -- so this case pins down the binning convention.)
    probs = torch.tensor(
        [
            [0.85, 0.05, 0.05, 0.05],
            [0.04, 0.90, 0.03, 0.03],
            [0.50, 0.30, 0.10, 0.10],
            [1.00, 0.00, 0.00, 0.00],
        ],
        dtype=torch.float64,
    )
    targets = torch.tensor([0, 1, 0, 2])
    assert expected_calibration_error(probs, targets, n_bins=5).item() == pytest.approx(0.4375, abs=1e-12)
    assert ece_bruteforce(probs.numpy(), targets.numpy(), 5) == pytest.approx(0.4375, abs=1e-12)
    # float32 saturated softmax: same answer
    assert expected_calibration_error(probs.float(), targets, n_bins=5).item() == pytest.approx(0.4375, abs=1e-6)


def test_ece_torchmetrics_documented_example():
    # Example value published in the torchmetrics docs for multiclass_calibration_error(n_bins=3, norm="l1").
    # By hand: confs .55(wrong) .55(wrong) .60(right) in [1/3,2/3): 3/4*|1/3-0.5667| = 0.175;
    #          .90(right) in [2/3,1): 1/4*0.1 = 0.025  -> 0.2
    probs = torch.tensor([[0.25, 0.20, 0.55], [0.55, 0.05, 0.40], [0.10, 0.30, 0.60], [0.90, 0.05, 0.05]])
    targets = torch.tensor([0, 1, 2, 0])
    assert expected_calibration_error(probs, targets, n_bins=3).item() == pytest.approx(0.2, abs=1e-6)


def test_ece_edge_goes_to_upper_bin():
    # conf exactly 0.5 with n_bins=2 -> bin [0.5, 1), not [0, 0.5)
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.4, 0.3, 0.3]], dtype=torch.float64)
    targets = torch.tensor([0, 0])
    curve = calibration_curve(probs, targets, n_bins=2)
    assert curve["count"].tolist() == [1, 1, 0]
    assert curve["confidence"][0].item() == pytest.approx(0.4)
    assert curve["confidence"][1].item() == pytest.approx(0.5)


def test_ece_perfectly_calibrated(gen):
    n, c = 200_000, 4
    probs = random_probs(gen, n, c, conc=1.0)
    targets = torch.multinomial(probs, 1, generator=gen).squeeze(1)
    ece = expected_calibration_error(probs, targets, n_bins=15).item()
    assert ece < 0.02
    # and a badly over-confident model is clearly flagged
    sharp = probs.pow(4)
    sharp = sharp / sharp.sum(-1, keepdim=True)
    assert expected_calibration_error(sharp, targets, n_bins=15).item() > 0.1


def test_calibration_curve_consistent_with_ece(gen):
    probs = random_probs(gen, 300, 3, conc=0.3)
    probs[:7] = F.one_hot(torch.arange(7) % 3, 3).double()  # some exact 1.0 confidences
    targets = torch.randint(0, 3, (300,), generator=gen)
    curve = calibration_curve(probs, targets, n_bins=10)
    assert set(curve) == {"bin_lower", "bin_upper", "confidence", "accuracy", "count"}
    for v in curve.values():
        assert v.shape == (11,)
    assert int(curve["count"].sum()) == 300
    assert int(curve["count"][-1]) == 7
    assert curve["bin_lower"][-1].item() == 1.0 and curve["bin_upper"][-1].item() == 1.0
    np.testing.assert_allclose(curve["bin_lower"][:-1].numpy(), np.linspace(0, 1, 11)[:-1], atol=1e-12)
    w = curve["count"].double() / 300
    ece_curve = torch.nansum(w * (curve["accuracy"] - curve["confidence"]).abs()).item()
    assert ece_curve == pytest.approx(expected_calibration_error(probs, targets, n_bins=10).item(), abs=1e-12)
    assert ece_curve == pytest.approx(ece_bruteforce(probs.numpy(), targets.numpy(), 10), abs=1e-12)
    empty = curve["count"] == 0
    assert torch.isnan(curve["accuracy"][empty]).all() and torch.isnan(curve["confidence"][empty]).all()


# --------------------------------------------------------------------------- #
# classification_metrics
# --------------------------------------------------------------------------- #
def test_classification_metrics_against_references(gen):
    s, n, c = 7, 64, 5
    logits = 3.0 * torch.randn(s, n, c, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, c, (n,), generator=gen)
    m = classification_metrics(logits, targets, n_bins=10)
    assert set(m) == CLASSIFICATION_KEYS
    assert isinstance(m["num_samples"], int) and m["num_samples"] == s
    for k, v in m.items():
        if k != "num_samples":
            assert type(v) is float, k

    # numpy reference: plain average of softmax probabilities
    probs_s = softmax_np(logits.numpy())  # [S, N, C]
    p = probs_s.mean(axis=0)  # [N, C]
    y = targets.numpy()

    # NLL vs torch's nll_loss on log of averaged probabilities
    nll_ref = F.nll_loss(torch.log(torch.from_numpy(p)), targets).item()
    assert m["nll"] == pytest.approx(nll_ref, rel=1e-10)
    assert m["accuracy"] == pytest.approx(float(np.mean(p.argmax(1) == y)))
    onehot = np.eye(c)[y]
    assert m["brier"] == pytest.approx(float(np.mean(np.sum((p - onehot) ** 2, axis=1))), rel=1e-10)

    # entropies vs scipy.stats.entropy (natural log)
    h_pred = scipy.stats.entropy(p, axis=1)
    h_exp = scipy.stats.entropy(probs_s, axis=2).mean(axis=0)
    assert m["predictive_entropy"] == pytest.approx(float(h_pred.mean()), rel=1e-10)
    assert m["expected_entropy"] == pytest.approx(float(h_exp.mean()), rel=1e-10)
    assert m["mutual_information"] == pytest.approx(float((h_pred - h_exp).mean()), abs=1e-10)
    assert m["mutual_information"] > 0

    # ECE on the predictive probabilities vs the brute-force loop
    assert m["ece"] == pytest.approx(ece_bruteforce(p, y, 10), abs=1e-10)


def test_classification_float32_close_to_float64(gen):
    logits = 2.0 * torch.randn(5, 200, 10, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 10, (200,), generator=gen)
    m64 = classification_metrics(logits, targets)
    m32 = classification_metrics(logits.float(), targets)
    for k in CLASSIFICATION_KEYS - {"num_samples", "ece"}:
        assert m32[k] == pytest.approx(m64[k], abs=1e-4), k
    assert m32["ece"] == pytest.approx(m64["ece"], abs=1e-2)


def test_mutual_information_zero_for_single_sample(gen):
    logits = torch.randn(1, 50, 6, generator=gen)
    targets = torch.randint(0, 6, (50,), generator=gen)
    m = classification_metrics(logits, targets)
    assert m["num_samples"] == 1
    assert abs(m["mutual_information"]) < 1e-6
    assert m["predictive_entropy"] == pytest.approx(m["expected_entropy"], abs=1e-6)
    # S=1 NLL equals plain cross-entropy
    assert m["nll"] == pytest.approx(F.cross_entropy(logits[0], targets).item(), rel=1e-5)


def test_mutual_information_log2_for_disagreeing_samples():
    # two confident samples voting for different classes -> predictive (0.5, 0.5)
    logits = torch.tensor([[[12.0, -12.0]], [[-12.0, 12.0]]], dtype=torch.float64)
    targets = torch.tensor([0])
    m = classification_metrics(logits, targets)
    assert m["predictive_entropy"] == pytest.approx(math.log(2), abs=1e-9)
    assert m["expected_entropy"] < 1e-6
    assert m["mutual_information"] == pytest.approx(math.log(2), abs=1e-6)
    assert m["nll"] == pytest.approx(math.log(2), abs=1e-9)


def test_nll_stable_for_extreme_logits():
    # naive mean-of-softmax underflows to 0 for the target class -> log 0 = -inf; log-space must not.
    logits = torch.tensor([[[0.0, -5000.0]], [[0.0, -6000.0]]], dtype=torch.float64)
    targets = torch.tensor([1])
    m = classification_metrics(logits, targets)
    # log p(y=1) = logsumexp(-5000, -6000) - log 2 = -5000 + log1p(e^-1000) - log 2
    assert m["nll"] == pytest.approx(5000.0 + math.log(2), rel=1e-12)
    assert all(math.isfinite(v) for v in m.values())
    # float32 too
    m32 = classification_metrics(logits.float(), targets)
    assert m32["nll"] == pytest.approx(5000.0 + math.log(2), rel=1e-6)


def test_classification_errors():
    logits = torch.zeros(3, 4, 5)
    targets = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"\[S, N, C\].*\(4, 5\)"):
        classification_metrics(torch.zeros(4, 5), targets)
    with pytest.raises(ValueError, match=r"shape \(3,\).*expected \(4,\)"):
        classification_metrics(logits, targets[:3])
    with pytest.raises(ValueError, match=r"min=0, max=5 \(C=5\)"):
        classification_metrics(logits, torch.tensor([0, 1, 2, 5]))
    with pytest.raises(ValueError, match=r"min=-1, max=3"):
        classification_metrics(logits, torch.tensor([-1, 1, 2, 3]))
    with pytest.raises(ValueError, match="integer"):
        classification_metrics(logits, targets.float())
    bad = logits.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        classification_metrics(bad, targets)
    bad[1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        classification_metrics(bad, targets)
    with pytest.raises(ValueError, match="n_bins"):
        classification_metrics(logits, targets, n_bins=0)
    with pytest.raises(ValueError, match="floating"):
        classification_metrics(torch.zeros(3, 4, 5, dtype=torch.long), targets)


def test_ece_errors():
    probs = torch.full((4, 2), 0.5)
    targets = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        expected_calibration_error(probs.unsqueeze(0), targets)
    with pytest.raises(ValueError, match=r"expected \(4,\)"):
        expected_calibration_error(probs, targets[:2])
    with pytest.raises(ValueError, match=r"max=2 \(C=2\)"):
        expected_calibration_error(probs, torch.tensor([0, 1, 2, 1]))
    with pytest.raises(ValueError, match="logits"):
        expected_calibration_error(torch.tensor([[3.0, -1.0]] * 4), targets)
    with pytest.raises(ValueError, match="sum to 1"):
        expected_calibration_error(torch.full((4, 2), 0.3), targets)
    with pytest.raises(ValueError, match="non-finite"):
        expected_calibration_error(torch.tensor([[float("nan"), 0.5]] * 4), targets)
    with pytest.raises(ValueError, match="n_bins"):
        calibration_curve(probs, targets, n_bins=-3)


# --------------------------------------------------------------------------- #
# regression_metrics
# --------------------------------------------------------------------------- #
def regression_reference(mu: np.ndarray, y: np.ndarray, sigma: np.ndarray) -> dict[str, float]:
    """numpy/scipy reference; sigma already broadcast to mu's shape [S, N, D]."""
    s = mu.shape[0]
    # mixture over samples of products over D
    comp = np.prod(scipy.stats.norm.pdf(y[None], loc=mu, scale=sigma), axis=-1)  # [S, N]
    nll = float(np.mean(-np.log(comp.mean(axis=0))))
    mean = mu.mean(axis=0)
    var = (sigma**2).mean(axis=0) + mu.var(axis=0)
    gnll = float(np.mean(-scipy.stats.norm.logpdf(y, loc=mean, scale=np.sqrt(var)).sum(axis=-1)))
    mse = float(np.mean((mean - y) ** 2))
    return {
        "rmse": math.sqrt(mse),
        "mse": mse,
        "nll": nll,
        "gaussian_nll": gnll,
        "predictive_std": float(np.sqrt(var).mean()),
        "num_samples": s,
    }


@pytest.mark.parametrize(
    "noise_kind",
    ["float", "scalar_tensor", "per_dim", "per_point", "per_sample", "full"],
)
def test_regression_against_scipy(gen, noise_kind):
    s, n, d = 6, 40, 3
    mu = torch.randn(s, n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(n, d, generator=gen, dtype=torch.float64) * 1.5
    if noise_kind == "float":
        noise = 0.7
    elif noise_kind == "scalar_tensor":
        noise = torch.tensor(0.7, dtype=torch.float64)
    elif noise_kind == "per_dim":
        noise = torch.tensor([0.3, 0.8, 1.4], dtype=torch.float64)
    elif noise_kind == "per_point":
        noise = 0.2 + torch.rand(n, d, generator=gen, dtype=torch.float64)
    elif noise_kind == "per_sample":
        noise = 0.2 + torch.rand(s, 1, 1, generator=gen, dtype=torch.float64)
    else:
        noise = 0.2 + torch.rand(s, n, d, generator=gen, dtype=torch.float64)
    sigma_np = np.broadcast_to(torch.as_tensor(noise, dtype=torch.float64).numpy(), (s, n, d))
    want = regression_reference(mu.numpy(), y.numpy(), sigma_np)
    got = regression_metrics(mu, y, noise)
    assert set(got) == REGRESSION_KEYS
    assert isinstance(got["num_samples"], int) and got["num_samples"] == s
    for k in REGRESSION_KEYS - {"num_samples"}:
        assert type(got[k]) is float
        assert got[k] == pytest.approx(want[k], rel=1e-10), k


def test_regression_rmse_numpy_and_1d_inputs(gen):
    mu = torch.randn(4, 30, generator=gen)
    y = torch.randn(30, generator=gen)
    got = regression_metrics(mu, y, 0.5)
    rmse = float(np.sqrt(np.mean((mu.numpy().mean(0) - y.numpy()) ** 2)))
    assert got["rmse"] == pytest.approx(rmse, rel=1e-5)
    assert got["mse"] == pytest.approx(rmse**2, rel=1e-5)


def test_regression_single_sample_nll_equals_gaussian_nll(gen):
    mu = torch.randn(1, 20, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(20, 2, generator=gen, dtype=torch.float64)
    got = regression_metrics(mu, y, 0.4)
    assert got["nll"] == pytest.approx(got["gaussian_nll"], rel=1e-12)
    assert got["predictive_std"] == pytest.approx(0.4, rel=1e-12)
    ref = -torch.distributions.Normal(mu[0], 0.4).log_prob(y).sum(-1).mean().item()
    assert got["nll"] == pytest.approx(ref, rel=1e-12)


def test_regression_nll_stable_far_from_data():
    # every component density underflows in float64 (z ~ 1000) -> naive mixture gives log 0
    mu = torch.tensor([[[0.0]], [[1.0]]], dtype=torch.float64)
    y = torch.tensor([[1000.0]], dtype=torch.float64)
    got = regression_metrics(mu, y, 1.0)
    log_comp = scipy.stats.norm.logpdf(1000.0, loc=np.array([0.0, 1.0]), scale=1.0)
    want = -(scipy.special.logsumexp(log_comp) - math.log(2))
    assert math.isfinite(got["nll"])
    assert got["nll"] == pytest.approx(want, rel=1e-12)


def test_regression_errors():
    mu = torch.zeros(3, 5, 2)
    y = torch.zeros(5, 2)
    with pytest.raises(ValueError, match=r"shape \(5, 3\).*expected \(5, 2\)"):
        regression_metrics(mu, torch.zeros(5, 3), 1.0)
    with pytest.raises(ValueError, match=r"\[S, N, D\]"):
        regression_metrics(torch.zeros(3, 5, 2, 1), y, 1.0)
    with pytest.raises(ValueError, match="positive"):
        regression_metrics(mu, y, 0.0)
    with pytest.raises(ValueError, match="positive"):
        regression_metrics(mu, y, torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="broadcastable"):
        regression_metrics(mu, y, torch.ones(4))
    bad = mu.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        regression_metrics(bad, y, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        regression_metrics(mu, torch.full((5, 2), float("inf")), 1.0)


# --------------------------------------------------------------------------- #
# fit_temperature (temperature scaling)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("true_t", [0.4, 1.0, 3.0])
def test_fit_temperature_is_the_nll_minimizer_of_a_brute_force_scan(true_t):
    g = torch.Generator().manual_seed(1)
    z = 2 * torch.randn(3000, 5, generator=g, dtype=torch.float64)
    y = torch.multinomial((z / true_t).softmax(-1), 1, generator=g).squeeze(1)
    tau = fit_temperature(z, y)
    # independently: scipy's bounded scalar minimizer of the NLL of softmax(z / t) over log t
    zn, yn = z.numpy(), y.numpy()

    def nll(log_t: float) -> float:
        t = math.exp(log_t)
        return float(np.mean(scipy.special.logsumexp(zn / t, axis=1) - zn[np.arange(len(yn)), yn] / t))

    best = math.exp(scipy.optimize.minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded",
                                                   options={"xatol": 1e-9}).x)
    assert tau == pytest.approx(best, rel=1e-5)
    assert tau == pytest.approx(true_t, rel=0.15)  # the labels' own temperature, recovered


def test_fit_temperature_returns_the_bound_where_the_nll_keeps_falling():
    z = torch.tensor([[5.0, 0.0], [0.0, 5.0], [4.0, 1.0]])
    y = torch.tensor([0, 1, 0])  # every label ranked first: sharper is always better
    assert fit_temperature(z, y) == 0.05
    assert fit_temperature(z, y, bounds=(0.5, 4.0)) == 0.5
    # every label ranked last: the flattest softmax in range
    assert fit_temperature(z, torch.tensor([1, 0, 1])) == 20.0


def test_fit_temperature_rejects_bad_input():
    z, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"shape \[N, C\]"):
        fit_temperature(z[0], y)
    with pytest.raises(ValueError, match=r"targets` has shape \(3,\), expected \(4,\)"):
        fit_temperature(z, y[:3])
    with pytest.raises(ValueError, match="must lie in"):
        fit_temperature(z, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="non-finite"):
        fit_temperature(torch.full((4, 3), float("nan")), y)
    with pytest.raises(ValueError, match="0 < lowest < highest"):
        fit_temperature(z, y, bounds=(2.0, 1.0))
