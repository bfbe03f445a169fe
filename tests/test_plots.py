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


# ----------------------------------------------------------------------------- distillation terms in elbo()
def _distill_history(epochs: int = 3, eval_columns: bool = False) -> list[dict[str, float]]:
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "elbo": -100.0 + e, "nll": 60.0 - e, "kl": 40.0, "loss": 100.0 - e, "kl_weight": 1.0,
               "lr": 1e-3, "time_s": 0.1, "distill/kd/loss": 1.0 / e, "distill/vid/loss": -300.0 - e,
               "distill/vid/pair0/log_q": -200.0 - e, "distill/vid/pair0/mi_bound": 50.0 + e,
               "distill/vid/pair1/log_q": -100.0, "distill/vid/pair1/mi_bound": 20.0 + 2 * e,
               "distill/vid1/pair0/log_q": -10.0, "distill/vid1/pair0/mi_bound": 5.0, "distill/pkt.4/loss": 0.05,
               "distill/hint/loss": 0.5 / e}
        if eval_columns:
            row.update(eval_accuracy=0.5 + 0.1 * e, eval_nll=1.0 / e)
        rows.append(row)
    return rows


def test_elbo_panel_for_distillation_terms():
    rows = _distill_history()
    fig = plots.elbo(rows)
    assert len(fig.axes) == 3
    terms = fig.axes[2]
    assert [line.get_label() for line in terms.lines] == ["distill/kd/loss", "distill/vid/loss", "distill/pkt.4/loss", "distill/hint/loss"]  # not the pair columns
    assert list(terms.lines[0].get_ydata()) == pytest.approx([1.0, 0.5, 1 / 3])
    assert "nats" in terms.get_ylabel()
    assert terms.get_yscale() == "symlog"  # vid (hundreds) and pkt (0.05) differ by orders of magnitude
    fig = plots.elbo(_distill_history(eval_columns=True))
    assert len(fig.axes) == 4
    assert {line.get_label() for line in fig.axes[3].lines} == {"accuracy", "nll"}
    assert len(fig.axes[2].lines) == 4


def test_elbo_distillation_panel_from_csv(tmp_path):
    import csv

    rows = _distill_history()
    path = tmp_path / "history.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fig = plots.elbo(path)
    assert len(fig.axes) == 3 and len(fig.axes[2].lines) == 4


# ----------------------------------------------------------------------------- vid_bounds
def test_vid_bounds_one_line_per_pair(tmp_path):
    rows = _distill_history(epochs=4)
    fig = plots.vid_bounds(rows)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.lines) == 3  # vid.0, vid.1 and the second VID term's vid1.0
    assert [line.get_label().split(" ")[0] for line in ax.lines] == ["distill/vid/pair0", "distill/vid/pair1", "distill/vid1/pair0"]
    assert list(ax.lines[0].get_ydata()) == pytest.approx([51.0, 52.0, 53.0, 54.0])
    assert list(ax.lines[1].get_ydata()) == pytest.approx([22.0, 24.0, 26.0, 28.0])
    assert list(ax.lines[0].get_xdata()) == [1, 2, 3, 4]
    assert "nats" in ax.get_ylabel()
    fig = plots.vid_bounds(rows, labels=["t:8 -> s:4", "t:6 -> s:2"])
    assert fig.axes[0].lines[0].get_label().startswith("distill/vid/pair0: t:8 -> s:4")
    host = Figure()
    hax = host.subplots()
    assert plots.vid_bounds(rows, ax=hax) is host and len(hax.lines) == 3
    path = tmp_path / "h.csv"
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert len(plots.vid_bounds(path).axes[0].lines) == 3


def test_vid_bounds_needs_vid_columns(trained):
    _, result, _ = trained
    with pytest.raises(ValueError, match="no VID columns"):
        plots.vid_bounds(result)
    with pytest.raises(ValueError, match="no VID columns"):
        plots.vid_bounds([{"epoch": 1, "distill/kd/loss": 0.3, "distill/vid/pair0/log_q": -1.0}])


def test_vid_bounds_from_a_real_fit():
    from bayesdistill.distill import KD, VID

    torch.manual_seed(0)
    train = _classification_data(n=64, seed=0)
    teacher = bd.models.build("mlp", (8,), 3, hidden=(16,))
    student = bd.BNN(bd.models.build("mlp", (8,), 3, hidden=(8,)), dataset_size=64)
    result = bd.fit(student, train, epochs=2, batch_size=32, progress=False, seed=0,
                    distill=[VID(teacher, {"2": "2"}, weight=0.1), KD(teacher)])
    fig = plots.vid_bounds(result)
    assert len(fig.axes[0].lines) == 1
    assert list(fig.axes[0].lines[0].get_ydata()) == pytest.approx(result.column("distill/vid/pair0/mi_bound"))
    assert [line.get_label() for line in plots.elbo(result).axes[2].lines] == ["distill/vid/loss", "distill/kd/loss"]


# ----------------------------------------------------------------------------- cosine_distances
def _cos_by_hand(a, b):
    return 1.0 - sum(p * q for p, q in zip(a, b)) / (math.hypot(*a) * math.hypot(*b))


def test_cosine_distances_counts_pairs_and_matches_hand_computation():
    x = [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.5]]
    y = [0, 0, 1, 1]
    data = (torch.tensor(x), torch.tensor(y))
    fig = plots.cosine_distances(torch.nn.Identity(), torch.nn.Identity(), data)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    i, j = fig.pairs
    assert list(zip(i.tolist(), j.tolist())) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    d = fig.distances["teacher"]
    assert d["similar"].numel() == 2 and d["dissimilar"].numel() == 4
    similar = [_cos_by_hand(x[0], x[1]), _cos_by_hand(x[2], x[3])]
    dissimilar = [_cos_by_hand(x[a], x[b]) for a, b in ((0, 2), (0, 3), (1, 2), (1, 3))]
    assert d["similar"].tolist() == pytest.approx(similar, abs=1e-12)
    assert d["dissimilar"].tolist() == pytest.approx(dissimilar, abs=1e-12)
    # AUC: the fraction of (similar, dissimilar) pairs with the dissimilar one farther apart
    wins = sum((b > a) + 0.5 * (b == a) for a in similar for b in dissimilar)
    assert d["auc"] == pytest.approx(wins / 8)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("n=2" in t for t in labels) and any("n=4" in t for t in labels)
    assert "teacher" in ax.get_title() and "network output" in ax.get_title()


def test_cosine_distances_layers_bnn_and_model_list(trained):
    bnn, _, test = trained
    x, y = test.tensors
    # a module's output via FeatureTaps: the hidden ReLU '2' of the posterior-mean network
    fig = plots.cosine_distances(bnn, bnn, test, layer_teacher="2", layer_student=None)
    from bayesdistill.distill import FeatureTaps

    with torch.no_grad(), FeatureTaps(bnn.net, ["2"]) as taps:
        out = bnn(x)  # the posterior-mean network
    h = taps.features["2"]
    i, j = fig.pairs
    same = y[i] == y[j]
    for name, f in (("teacher", h), ("student", out)):
        f = torch.nn.functional.normalize(f.double(), dim=1)
        expected = (1 - (f[i] * f[j]).sum(1)).clamp(0, 2)
        assert torch.allclose(fig.distances[name]["similar"], expected[same])
        assert torch.allclose(fig.distances[name]["dissimilar"], expected[~same])
    assert fig.distances["teacher"]["layer"] == "2" and "'2'" in fig.axes[0].get_title()
    # a list of (name, model[, layer]) tuples: one panel each, the same pairs for all
    net = torch.nn.Sequential(torch.nn.Linear(8, 5), torch.nn.ReLU())
    fig = plots.cosine_distances([("a", bnn), ("b", bnn, "2"), ("c", net, "1")], test, max_pairs=500, seed=1)
    assert len(fig.axes) == 3 and list(fig.distances) == ["a", "b", "c"]
    assert all(v["similar"].numel() + v["dissimilar"].numel() == 500 for v in fig.distances.values())
    assert [v["layer"] for v in fig.distances.values()] == [None, "2", "1"]


def test_cosine_distances_samples_distinct_pairs():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 3, generator=g), torch.arange(50) % 5
    fig = plots.cosine_distances(torch.nn.Identity(), torch.nn.Identity(), (x, y), max_pairs=300, seed=3)
    i, j = fig.pairs
    assert len(i) == 300 and bool((i < j).all())
    assert len(set(zip(i.tolist(), j.tolist()))) == 300
    assert int((y[i] == y[j]).sum()) == fig.distances["teacher"]["similar"].numel()
    again = plots.cosine_distances(torch.nn.Identity(), torch.nn.Identity(), (x, y), max_pairs=300, seed=3)
    assert torch.equal(again.pairs[0], i) and torch.equal(again.pairs[1], j)
    # all 1225 pairs when max_pairs allows
    full = plots.cosine_distances(torch.nn.Identity(), torch.nn.Identity(), (x, y))
    assert len(full.pairs[0]) == 50 * 49 // 2


def test_cosine_distances_argument_errors():
    x, y = torch.randn(6, 2), torch.tensor([0, 0, 1, 1, 2, 2])
    ident = torch.nn.Identity()
    with pytest.raises(TypeError, match="student"):
        plots.cosine_distances(ident, data=(x, y))
    with pytest.raises(ValueError, match="class labels"):
        plots.cosine_distances(ident, ident, (x, torch.randn(6, 3)))
    with pytest.raises(KeyError, match="no module"):
        plots.cosine_distances(ident, ident, (x, y), layer_teacher="9")
    with pytest.raises(TypeError, match="tuples"):
        plots.cosine_distances([ident, ident], (x, y))
    with pytest.raises(TypeError, match="labelled data"):
        plots.cosine_distances(ident, ident, "data")
