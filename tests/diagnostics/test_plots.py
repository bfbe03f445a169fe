"""bayesdistill.diagnostics.plots: figures that draw results only (Agg backend).

Histories use the training engine's naming of distillation-term columns,
``distill/<term>/<metric>``; the plots find them generically.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Optional

import pytest
import torch
from matplotlib.figure import Figure

import bayesdistill as bd
from bayesdistill.diagnostics import CalibrationResult, calibration, cosine_distances, plots
from bayesdistill.diagnostics.metrics import calibration_curve

N_BINS = 15


def _n_layers(q: bd.MeanFieldPosterior) -> int:
    return len({info.module for info in q.info.values()})


def _write_csv(rows, path):
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return path


@dataclass
class Curve:
    """A stand-in with the fields of bd.distill.pruning_curve's PruningCurve."""

    criterion: str
    compensation: bool
    metric: str
    fraction: list[float]
    values: list[float]
    nll: list[float]
    units: list[list[int]]
    output_error: list[Optional[float]]


def _curves() -> list[Curve]:
    return [
        Curve("snr", False, "accuracy", [0.0, 0.25, 0.5], [0.9, 0.8, 0.5], [0.3, 0.6, 1.4], [[16], [12], [8]],
              [None, None, None]),
        Curve("snr", True, "accuracy", [0.0, 0.25, 0.5], [0.9, 0.88, 0.7], [0.3, 0.4, 0.9], [[16], [12], [8]],
              [0.0, 0.1, 0.3]),
        Curve("random", False, "accuracy", [0.0, 0.5], [0.9, 0.3], [0.3, 2.0], [[16], [8]], [None, None]),
    ]


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


# ----------------------------------------------------------------------------- distillation terms in elbo()
def _distill_history(epochs: int = 3, eval_columns: bool = False) -> list[dict[str, float]]:
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "elbo": -100.0 + e, "nll": 60.0 - e, "kl": 40.0, "loss": 100.0 - e, "kl_weight": 1.0,
               "lr": 1e-3, "time_s": 0.1, "distill/kd/loss": 1.0 / e, "distill/vid/loss": -300.0 - e,
               "distill/vid/pair0/log_q": -200.0 - e, "distill/vid/pair0/mi_bound": 50.0 + e,
               "distill/vid/pair1/log_q": -100.0, "distill/vid/pair1/mi_bound": 20.0 + 2 * e,
               "distill/vid1/pair0/log_q": -10.0, "distill/vid1/pair0/mi_bound": 5.0,
               "distill/pkt.4/loss": 0.05, "distill/hint/loss": 0.5 / e}
        if eval_columns:
            row.update(eval_accuracy=0.5 + 0.1 * e, eval_nll=1.0 / e)
        rows.append(row)
    return rows


def test_elbo_panel_for_distillation_terms():
    rows = _distill_history()
    fig = plots.elbo(rows)
    assert len(fig.axes) == 3
    terms = fig.axes[2]
    assert [line.get_label() for line in terms.lines] == ["kd", "vid", "pkt.4", "hint"]  # not the VID pair columns
    assert list(terms.lines[0].get_ydata()) == pytest.approx([1.0, 0.5, 1 / 3])
    assert "nats" in terms.get_ylabel()
    assert terms.get_yscale() == "symlog"  # vid (hundreds) and pkt (0.05) differ by orders of magnitude
    fig = plots.elbo(_distill_history(eval_columns=True))
    assert len(fig.axes) == 4
    assert {line.get_label() for line in fig.axes[3].lines} == {"accuracy", "nll"}
    assert len(fig.axes[2].lines) == 4


def test_elbo_distillation_panel_from_csv(tmp_path):
    fig = plots.elbo(_write_csv(_distill_history(), tmp_path / "history.csv"))
    assert len(fig.axes) == 3 and len(fig.axes[2].lines) == 4


def test_elbo_shows_a_term_it_has_never_heard_of():
    """A term registered under any name gets its panel line: nothing in plots.py lists terms."""
    rows = [{"epoch": e, "elbo": -10.0, "nll": 6.0, "kl": 4.0, "distill/toyterm/loss": 0.1 * e,
             "distill/toyterm/pair0/whatever": 3.0} for e in (1, 2)]
    fig = plots.elbo(rows)
    assert len(fig.axes) == 3
    (line,) = fig.axes[2].lines
    assert line.get_label() == "toyterm" and list(line.get_ydata()) == pytest.approx([0.1, 0.2])
    # only distill/<term>/loss columns are term losses
    assert len(plots.elbo([{**r, "distill/toyterm/pair0/loss": 1.0, "toyterm": 1.0} for r in rows]).axes[2].lines) == 1


# ----------------------------------------------------------------------------- term_metric and vid_bounds
def test_term_metric_one_line_per_column():
    rows = _distill_history(epochs=4)
    fig = plots.term_metric(rows, "log_q", ylabel="nats", title="log q")
    ax = fig.axes[0]
    assert [line.get_label().split(" ")[0] for line in ax.lines] == ["vid/pair0", "vid/pair1", "vid1/pair0"]
    assert list(ax.lines[0].get_ydata()) == pytest.approx([-201.0, -202.0, -203.0, -204.0])
    assert ax.get_ylabel() == "nats" and ax.get_title() == "log q"
    fig = plots.term_metric(rows, "loss", labels={"kd": "Hinton KD"})
    assert [line.get_label().split(" (")[0] for line in fig.axes[0].lines] == ["hint", "Hinton KD", "pkt.4", "vid"]
    with pytest.raises(ValueError, match="no 'distill/<term>/.../entropy'"):
        plots.term_metric(rows, "entropy")
    with pytest.raises(ValueError, match="metric"):
        plots.term_metric(rows, "pair0/log_q")


def test_term_metric_orders_pairs_naturally():
    rows = [{"epoch": 1, **{f"distill/vid/pair{i}/mi_bound": float(i) for i in (10, 2, 1)}}]
    ax = plots.term_metric(rows, "mi_bound").axes[0]
    assert [line.get_label().split(" ")[0] for line in ax.lines] == ["vid/pair1", "vid/pair2", "vid/pair10"]


def test_vid_bounds_one_line_per_pair(tmp_path):
    rows = _distill_history(epochs=4)
    fig = plots.vid_bounds(rows)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.lines) == 3  # vid pairs 0 and 1, and the second VID term's pair 0
    assert [line.get_label().split(" ")[0] for line in ax.lines] == ["vid/pair0", "vid/pair1", "vid1/pair0"]
    assert list(ax.lines[0].get_ydata()) == pytest.approx([51.0, 52.0, 53.0, 54.0])
    assert list(ax.lines[1].get_ydata()) == pytest.approx([22.0, 24.0, 26.0, 28.0])
    assert list(ax.lines[0].get_xdata()) == [1, 2, 3, 4]
    assert "nats" in ax.get_ylabel() and "VID" in ax.get_title()
    fig = plots.vid_bounds(rows, labels=["t:8 -> s:4", "t:6 -> s:2"])
    assert fig.axes[0].lines[0].get_label().startswith("vid/pair0: t:8 -> s:4")
    host = Figure()
    hax = host.subplots()
    assert plots.vid_bounds(rows, ax=hax) is host and len(hax.lines) == 3
    assert len(plots.vid_bounds(_write_csv(rows, tmp_path / "h.csv")).axes[0].lines) == 3


def test_vid_bounds_needs_vid_columns(trained):
    _, result, _ = trained
    with pytest.raises(ValueError, match="no VID columns"):
        plots.vid_bounds(result)
    with pytest.raises(ValueError, match="no VID columns"):
        plots.vid_bounds([{"epoch": 1, "distill/kd/loss": 0.3, "distill/vid/pair0/log_q": -1.0}])


def test_vid_bounds_from_a_real_fit(classification_data):
    from bayesdistill.distill import KD, VID

    torch.manual_seed(0)
    train = classification_data(n=64, seed=0)
    teacher = bd.models.build("mlp", (8,), 3, hidden=(16,))
    student = bd.BNN(bd.models.build("mlp", (8,), 3, hidden=(8,)), dataset_size=64)
    result = bd.fit(student, train, epochs=2, batch_size=32, progress=False, seed=0,
                    distill=[VID(teacher, {"2": "2"}, weight=0.1), KD(teacher)])
    assert {"distill/vid/loss", "distill/kd/loss", "distill/vid/pair0/mi_bound"} <= set(result.history[0])
    fig = plots.vid_bounds(result)
    assert len(fig.axes[0].lines) == 1
    assert list(fig.axes[0].lines[0].get_ydata()) == pytest.approx(result.column("distill/vid/pair0/mi_bound"))
    assert [line.get_label() for line in plots.elbo(result).axes[2].lines] == ["vid", "kd"]


# ----------------------------------------------------------------------------- calibration
def test_calibration_plot_of_given_probabilities():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 4, generator=g), dim=-1)
    targets = torch.randint(0, 4, (500,), generator=g)
    probs[:5] = torch.nn.functional.one_hot(targets[:5], 4).float()  # confidence exactly 1.0
    res = CalibrationResult.from_probs(probs, targets, n_bins=N_BINS)
    fig = plots.calibration(res)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2  # reliability + counts
    assert f"ECE = {res.ece:.4f}" in fig.axes[0].get_title()
    # the count histogram holds every point (the exactly-1.0 bucket merged into the top bin)
    heights = [p.get_height() for p in fig.axes[1].patches]
    assert len(heights) == N_BINS and sum(heights) == 500
    curve = calibration_curve(probs, targets, n_bins=N_BINS)
    assert heights[-1] == int(curve["count"][-2] + curve["count"][-1])
    # the accuracy bars are the result's (non-empty bins)
    acc = [p.get_height() for p in fig.axes[0].patches[: sum(1 for c in res.count[:N_BINS] if c)]]
    assert acc[0] == pytest.approx(next(a for a, c in zip(res.accuracy, res.count) if c))


def test_calibration_plot_of_a_bnn_result(trained):
    bnn, _, test = trained
    res = calibration(bnn, test, num_samples=16, n_bins=N_BINS, seed=3)
    fig = plots.calibration(res, title="toy")
    assert len(fig.axes) == 2
    assert fig.axes[0].get_title().startswith("toy") and f"ECE = {res.ece:.4f}" in fig.axes[0].get_title()
    host = Figure()
    ax = host.subplots()
    assert plots.calibration(res, ax=ax) is host and len(host.axes) == 1


def test_calibration_regression_is_a_coverage_plot(regression):
    bnn, data = regression
    res = calibration(bnn, data, num_samples=8)
    fig = plots.calibration(res)
    assert len(fig.axes) == 1
    assert len(fig.axes[0].lines) == 2  # diagonal + observed coverage
    assert list(fig.axes[0].lines[0].get_ydata()) == res.observed
    assert 0.0 <= res.coverage_error <= 1.0 and f"{res.coverage_error:.4f}" in fig.axes[0].get_title()


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


# ----------------------------------------------------------------------------- pruning curves
def test_pruning_curve_overlays_curves():
    curves = _curves()
    fig = plots.pruning_curve(curves, title="toy")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    left, right = fig.axes
    assert len(left.lines) == 3 and len(right.lines) == 3
    assert list(left.lines[1].get_ydata()) == curves[1].values
    assert list(right.lines[0].get_ydata()) == curves[0].nll
    assert list(left.lines[2].get_xdata()) == curves[2].fraction
    assert left.lines[0].get_linestyle() == "--" and left.lines[1].get_linestyle() == "-"
    assert left.lines[0].get_color() == left.lines[1].get_color() != left.lines[2].get_color()  # colour = criterion
    assert [line.get_label() for line in left.lines] == ["snr, no compensation", "snr, compensated",
                                                          "random, no compensation"]
    assert "accuracy" in left.get_ylabel() and "NLL" in right.get_ylabel()
    assert fig._suptitle.get_text() == "toy"
    # a single curve; a regression curve (RMSE)
    assert len(plots.pruning_curve(curves[0]).axes[0].lines) == 1
    rmse = Curve("data", False, "rmse", [0.0, 0.5], [0.2, 0.4], [0.1, 0.5], [[8], [4]], [None, None])
    assert "RMSE" in plots.pruning_curve(rmse).axes[0].get_ylabel()
    with pytest.raises(ValueError, match="metrics"):
        plots.pruning_curve([curves[0], rmse])
    with pytest.raises(ValueError, match="no curves"):
        plots.pruning_curve([])


def test_pruning_curve_takes_the_dict_forms():
    """A curve's to_dict() (``values``), and the dict that keeps them under the metric's name."""
    c = _curves()[0]
    as_dict = {k: getattr(c, k) for k in ("criterion", "compensation", "metric", "fraction", "values", "nll")}
    older = {**{k: v for k, v in as_dict.items() if k != "values"}, "accuracy": c.values}
    for form in (as_dict, older):
        assert list(plots.pruning_curve(form).axes[0].lines[0].get_ydata()) == c.values


# ----------------------------------------------------------------------------- cosine distances
def test_cosine_distances_plot():
    x = [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.5]]
    res = cosine_distances([("teacher", torch.nn.Identity()), ("student", torch.nn.Identity(), "")],
                           (torch.tensor(x), torch.tensor([0, 0, 1, 1])))
    fig = plots.cosine_distances(res)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("n=2" in t for t in labels) and any("n=4" in t for t in labels)
    assert "teacher" in ax.get_title() and "network output" in ax.get_title()
    assert f"separation AUC {res['teacher'].separation_auc:.3f}" in ax.get_title()
    assert [line.get_xdata()[0] for line in ax.lines] == pytest.approx([res["teacher"].mean_similar,
                                                                        res["teacher"].mean_dissimilar])
    assert "6 pairs of 4 examples" in fig._suptitle.get_text()
    assert plots.cosine_distances(res, title="mine")._suptitle.get_text() == "mine"


# ----------------------------------------------------------------------------- learning curves
def test_learning_curves_one_line_per_run_and_reference():
    def run(offset):
        return [{"epoch": e, "eval_accuracy": 0.5 + offset + 0.1 * e, "eval_nll": 1.0 / e + offset} for e in (1, 2, 3)]

    fig = plots.learning_curves({"distilled": run(0.1), "plain": run(0.0)}, reference={"accuracy": 0.95, "nll": 0.2},
                                title="students")
    left, right = fig.axes
    assert [line.get_label() for line in left.lines] == ["distilled", "plain", "teacher"]
    assert list(left.lines[0].get_ydata()) == pytest.approx([0.7, 0.8, 0.9])
    assert list(right.lines[1].get_ydata()) == pytest.approx([1.0, 0.5, 1 / 3])
    assert left.lines[2].get_linestyle() == "--" and list(left.lines[2].get_ydata()) == [0.95, 0.95]
    assert "accuracy" in left.get_ylabel() and "NLL" in right.get_ylabel()
    reg = plots.learning_curves({"a": [{"epoch": 1, "eval_rmse": 0.3, "eval_nll": 0.1}]}, reference={"rmse": 0.2})
    assert "RMSE" in reg.axes[0].get_ylabel() and len(reg.axes[0].lines) == 2 and len(reg.axes[1].lines) == 1
    with pytest.raises(ValueError):
        plots.learning_curves({})


def test_learning_curves_of_fit_results(trained, tmp_path):
    _, result, _ = trained
    fig = plots.learning_curves({"fit": result, "csv": result.to_csv(tmp_path / "h.csv")})
    assert [list(line.get_ydata()) for line in fig.axes[0].lines] == [pytest.approx(result.column("eval_accuracy"))] * 2


# ----------------------------------------------------------------------------- results only, nothing attached
def test_plots_accept_results_only(trained):
    bnn, result, test = trained
    with pytest.raises(TypeError, match=r"bd\.diagnostics\.calibration"):
        plots.calibration(bnn)
    with pytest.raises(TypeError, match=r"bd\.diagnostics\.calibration"):
        plots.calibration(bnn, test)
    with pytest.raises(TypeError, match=r"bd\.diagnostics\.cosine_distances"):
        plots.cosine_distances(bnn)
    with pytest.raises(TypeError, match=r"bd\.distill\.pruning_curve"):
        plots.pruning_curve(bnn)
    with pytest.raises(TypeError):
        plots.pruning_curve(42)


def test_no_plot_attaches_attributes_to_its_figure(trained, regression):
    bnn, result, test = trained
    curves = _curves()
    figures = {
        "elbo": plots.elbo(_distill_history(eval_columns=True)),
        "term_metric": plots.term_metric(_distill_history(), "log_q"),
        "vid_bounds": plots.vid_bounds(_distill_history()),
        "calibration": plots.calibration(calibration(bnn, test, num_samples=4)),
        "coverage": plots.calibration(calibration(*regression, num_samples=4)),
        "snr_histogram": plots.snr_histogram(bnn.posterior()),
        "pruning_curve": plots.pruning_curve(curves),
        "cosine_distances": plots.cosine_distances(cosine_distances([("m", bnn, "2")], test, max_pairs=100)),
        "learning_curves": plots.learning_curves({"fit": result}),
    }
    bare = set(vars(Figure(layout="constrained")))
    for name, fig in figures.items():
        fig.savefig(io.BytesIO(), format="png")
        assert set(vars(fig)) - bare == set(), name
    host = Figure()
    before = set(vars(host))
    plots.calibration(calibration(bnn, test, num_samples=4), ax=host.subplots())
    assert set(vars(host)) == before


# ----------------------------------------------------------------------------- save
def test_save_writes_png_atomically(trained, tmp_path):
    bnn, result, test = trained
    figs = {
        "elbo.png": plots.elbo(result),
        "calibration.png": plots.calibration(calibration(bnn, test, num_samples=4)),
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
    assert set(plots.__all__) == {"elbo", "term_metric", "vid_bounds", "calibration", "snr_histogram", "alignment",
                                  "pruning_curve", "cosine_distances", "learning_curves", "ood", "roc", "selective", "save"}
