"""Tests for bayesdistill.diagnostics.plots (Agg backend, small synthetic networks)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from matplotlib.figure import Figure
from torch.utils.data import TensorDataset

import bayesdistill as bd
from bayesdistill.diagnostics import expected_calibration_error, plots
from bayesdistill.diagnostics.metrics import calibration_curve

N_BINS = 15


def _classification_data(n: int = 240, d: int = 8, c: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, c, generator=g)
    y = (x @ w + 0.5 * torch.randn(n, c, generator=g)).argmax(1)
    return TensorDataset(x, y)


@pytest.fixture(scope="module")
def trained():
    """A small classification BNN trained for a few epochs, with held-out metrics per epoch."""
    torch.manual_seed(0)
    train, test = _classification_data(seed=0), _classification_data(n=120, seed=1)
    net = bd.models.build("mlp", (8,), 3, hidden=(16,))
    bnn = bd.BNN(net, prior=bd.priors.Normal(scale=1.0), likelihood=bd.likelihoods.Categorical(),
                 dataset_size=len(train))
    result = bd.fit(bnn, train, epochs=4, lr=1e-2, batch_size=64, progress=False, eval_data=test, seed=0)
    return bnn, result, test


@pytest.fixture(scope="module")
def regression():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g)
    y = x @ torch.randn(4, 1, generator=g) + 0.1 * torch.randn(200, 1, generator=g)
    data = TensorDataset(x, y)
    net = bd.models.build("mlp", (4,), 1, hidden=(8,))
    bnn = bd.BNN(net, likelihood=bd.likelihoods.Normal(scale=0.1, learn_scale=True), dataset_size=200)
    bd.fit(bnn, data, epochs=3, lr=1e-2, progress=False)
    return bnn, data


def _n_layers(q: bd.MeanFieldPosterior) -> int:
    return len({info.module for info in q.info.values()})


# ----------------------------------------------------------------------------- elbo
def test_elbo_two_panels_without_eval_columns(trained):
    _, result, _ = trained
    history = [{k: v for k, v in row.items() if not k.startswith("eval_")} for row in result.history]
    fig = plots.elbo(history)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    top, mid = fig.axes
    assert len(top.lines) == 1 and len(mid.lines) == 2
    assert list(top.lines[0].get_ydata()) == pytest.approx(result.column("elbo"))
    assert list(mid.lines[0].get_ydata()) == pytest.approx(result.column("nll"))
    assert list(mid.lines[1].get_ydata()) == pytest.approx(result.column("kl"))
    assert "nats" in top.get_ylabel() and "nats" in mid.get_ylabel()
    assert list(top.lines[0].get_xdata()) == [1, 2, 3, 4]


def test_elbo_third_panel_for_eval_columns(trained):
    _, result, _ = trained
    eval_keys = [k for k in result.history[0] if k.startswith("eval_")]
    assert eval_keys, "fit(eval_data=...) should record eval_* columns"
    fig = plots.elbo(result)
    assert len(fig.axes) == 3
    assert len(fig.axes[2].lines) == len(eval_keys)
    labels = {line.get_label() for line in fig.axes[2].lines}
    assert "accuracy" in labels


def test_elbo_from_csv_and_on_given_axes(trained, tmp_path):
    _, result, _ = trained
    path = result.to_csv(tmp_path / "history.csv")
    fig = plots.elbo(path)
    assert len(fig.axes) == 3
    assert list(fig.axes[0].lines[0].get_ydata()) == pytest.approx(result.column("elbo"))

    host = Figure()
    ax = host.subplots()
    assert plots.elbo(result, ax=ax) is host
    assert len(ax.lines) == 3


def test_elbo_rejects_empty_or_foreign_history():
    with pytest.raises(ValueError, match="empty"):
        plots.elbo([])
    with pytest.raises(ValueError, match="elbo"):
        plots.elbo([{"epoch": 1, "loss": 1.0}])
    with pytest.raises(TypeError):
        plots.elbo(42)


# ----------------------------------------------------------------------------- calibration
def test_calibration_from_probs_matches_metric():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 4, generator=g), dim=-1)
    targets = torch.randint(0, 4, (500,), generator=g)
    probs[:5] = torch.nn.functional.one_hot(targets[:5], 4).float()  # confidence exactly 1.0
    fig = plots.calibration(probs=probs, targets=targets, n_bins=N_BINS)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2  # reliability + counts
    expected = float(expected_calibration_error(probs, targets, n_bins=N_BINS))
    assert fig.ece == expected
    assert f"ECE = {expected:.4f}" in fig.axes[0].get_title()
    # the count histogram holds every point (the exactly-1.0 bucket merged into the top bin)
    heights = [p.get_height() for p in fig.axes[1].patches]
    assert len(heights) == N_BINS and sum(heights) == 500
    curve = calibration_curve(probs, targets, n_bins=N_BINS)
    assert heights[-1] == int(curve["count"][-2] + curve["count"][-1])


def test_calibration_from_bnn_equals_evaluate_ece(trained):
    bnn, _, test = trained
    fig = plots.calibration(bnn, test, num_samples=16, n_bins=N_BINS, seed=3, title="toy")
    assert len(fig.axes) == 2
    logits, y = bd.predict(bnn, test, num_samples=16, seed=3)
    probs = (torch.logsumexp(torch.log_softmax(logits, -1), 0) - math.log(16)).exp()
    assert fig.ece == float(expected_calibration_error(probs, y, n_bins=N_BINS))
    assert fig.ece == pytest.approx(bd.evaluate(bnn, test, num_samples=16, seed=3)["ece"], abs=1e-12)
    assert fig.axes[0].get_title().startswith("toy")


def test_calibration_argument_errors(trained):
    bnn, _, test = trained
    with pytest.raises(TypeError):
        plots.calibration()
    with pytest.raises(TypeError):
        plots.calibration(bnn, test, probs=torch.full((2, 2), 0.5))
    with pytest.raises(TypeError):
        plots.calibration(bnn)
    with pytest.raises(TypeError):
        plots.calibration(probs=torch.full((2, 2), 0.5))
    with pytest.raises(ValueError):  # logits instead of probabilities
        plots.calibration(probs=torch.randn(10, 3) * 5, targets=torch.zeros(10, dtype=torch.long))


def test_calibration_regression_is_a_coverage_plot(regression):
    bnn, data = regression
    fig = plots.calibration(bnn, data, num_samples=8)
    assert len(fig.axes) == 1
    assert len(fig.axes[0].lines) == 2  # diagonal + observed coverage
    assert 0.0 <= fig.coverage_error <= 1.0


# ----------------------------------------------------------------------------- SNR
def test_snr_histogram_one_curve_per_layer(trained):
    bnn, _, _ = trained
    q = bnn.posterior()
    fig = plots.snr_histogram(q)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    n_layers = _n_layers(q)
    assert n_layers == 2
    assert len(ax.patches) == n_layers  # one step histogram per layer
    assert len(ax.get_legend().get_texts()) == n_layers
    assert ax.get_xscale() == "log"
    # every weight is counted once
    total = sum(int(t.get_text().rsplit("n=", 1)[1]) for t in ax.get_legend().get_texts())
    assert total == q.num_weights()


def test_snr_histogram_linear_and_bnn_and_given_axes(trained):
    bnn, _, _ = trained
    fig = plots.snr_histogram(bnn, log=False)
    assert fig.axes[0].get_xscale() == "linear"
    host = Figure()
    ax = host.subplots()
    assert plots.snr_histogram(bnn.posterior(), ax=ax) is host
    with pytest.raises(TypeError):
        plots.snr_histogram({"w": torch.ones(3)})


# ----------------------------------------------------------------------------- save
def test_save_writes_png_atomically(trained, tmp_path):
    bnn, result, test = trained
    figs = {
        "elbo.png": plots.elbo(result),
        "calibration.png": plots.calibration(bnn, test, num_samples=4),
        "snr.png": plots.snr_histogram(bnn.posterior()),
    }
    out = tmp_path / "nested" / "dir"
    for name, fig in figs.items():
        path = plots.save(fig, out / name)
        assert path == out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 5_000
    assert sorted(p.name for p in out.iterdir()) == sorted(figs)  # no temporary files left
    # overwriting keeps a valid file
    plots.save(figs["snr.png"], out / "elbo.png")
    assert (out / "elbo.png").read_bytes()[:4] == b"\x89PNG"


def test_plots_exported():
    assert bd.plots is plots
    assert "plots" in bd.__all__ and "plots" in bd.diagnostics.__all__
