"""Narrowed architectures and pruning curves (distill/align/curves.py), and the alignment plots
(the pruning-curve plot is tested in tests/diagnostics/test_plots.py)."""

from __future__ import annotations

import dataclasses
import json

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import bayesdistill as bd
from bayesdistill.diagnostics import plots
from bayesdistill.distill import PruningCurve, narrow, pruning_curve

from _helpers import toy_classification, toy_regression


def _widths(net: nn.Module) -> list[tuple[int, int]]:
    """(inputs, outputs) of every Linear/Conv layer, in order."""
    out = []
    for m in net.modules():
        if isinstance(m, nn.Linear):
            out.append((m.in_features, m.out_features))
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            out.append((m.in_channels, m.out_channels))
    return out


# ----------------------------------------------------------------------------- narrow
def test_narrow_mlp_shapes():
    net = bd.models.build("mlp", (40,), 10, hidden=(256, 100))
    half = narrow(net, 0.5)
    assert _widths(half) == [(40, 128), (128, 50), (50, 10)]
    assert half(torch.randn(3, 40)).shape == (3, 10)
    assert _widths(net) == [(40, 256), (256, 100), (100, 10)]  # the original is untouched
    assert _widths(narrow(net, 0.0)) == _widths(net)
    assert _widths(narrow(net, 0.99)) == [(40, 3), (3, 1), (1, 10)]  # round(), at least one unit


@pytest.mark.parametrize("model,convs", [("cnn", 3), ("cnn-deep", 4)])
def test_narrow_cnn_keeps_positions_per_channel(model, convs):
    net = bd.models.build(model, (40,), 10)
    small = narrow(net, 0.25)  # 32 -> 24 channels
    widths = _widths(small)
    assert widths[0] == (1, 24)
    assert widths[1:convs] == [(24, 24)] * (convs - 1)
    assert widths[-1] == (24 * 10, 10)  # Flatten: 10 positions per channel, kept
    assert small(torch.randn(2, 40)).shape == (2, 10)
    conv = [m for m in small.modules() if isinstance(m, nn.Conv1d)]
    ref = [m for m in net.modules() if isinstance(m, nn.Conv1d)]
    for a, b in zip(conv, ref):
        assert (a.kernel_size, a.stride, a.padding) == (b.kernel_size, b.stride, b.padding)


def test_narrow_cnn_small_is_narrowed_cnn():
    """cnn-small (16 channels) is cnn narrowed by one half."""
    half = narrow(bd.models.build("cnn", (40,), 10), 0.5)
    assert _widths(half) == _widths(bd.models.build("cnn-small", (40,), 10))


def test_narrow_batchnorm_nested_and_bias():
    net = nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8, eps=1e-3), nn.ReLU(),
        nn.Sequential(nn.Linear(8, 6, bias=False), nn.BatchNorm1d(6, affine=False), nn.ReLU()),
        nn.Linear(6, 3),
    )
    out = narrow(net, 0.5)
    assert _widths(out) == [(4, 4), (4, 3), (3, 3)]
    assert out[1].num_features == 4 and out[1].eps == 1e-3
    assert out[3][0].bias is None
    assert out[3][1].num_features == 3 and not out[3][1].affine
    out.eval()
    assert out(torch.randn(5, 4)).shape == (5, 3)


def test_narrow_conv2d_with_batchnorm():
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    out = narrow(net, 0.75)
    assert _widths(out) == [(1, 2), (2 * 16, 5)]
    assert out[1].num_features == 2
    assert out(torch.randn(2, 1, 8, 8)).shape == (2, 5)


def test_narrow_bnn_net_with_empty_weight_slots():
    """A BNN's network holds its Bayesian weights as empty buffer slots: narrow reads no weights."""
    bnn = bd.BNN(bd.models.build("cnn-deep", (40,), 10))
    assert bnn.net[1]._buffers["weight"] is None
    out = narrow(bnn.net, 0.5)
    assert _widths(out) == _widths(narrow(bd.models.build("cnn-deep", (40,), 10), 0.5))
    assert all(m.bias is not None for m in out.modules() if isinstance(m, (nn.Linear, nn.Conv1d)))
    assert out(torch.randn(2, 40)).shape == (2, 10)
    student = bd.BNN(out)  # a usable architecture
    assert student.num_weights < bnn.num_weights


def test_narrow_rejects_what_it_cannot_rebuild():
    with pytest.raises(bd.UnsupportedLayerError, match="'1'.*LayerNorm"):
        narrow(nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2)), 0.5)
    with pytest.raises(bd.UnsupportedLayerError, match="nn.Sequential"):
        narrow(nn.Linear(4, 2), 0.5)
    with pytest.raises(bd.UnsupportedLayerError, match="'0'"):
        narrow(nn.Sequential(nn.Conv1d(4, 4, 3, groups=2), nn.ReLU(), nn.Conv1d(4, 2, 1)), 0.5)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            narrow(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), bad)


# ----------------------------------------------------------------------------- pruning curve
@pytest.fixture(scope="module")
def toy_teacher():
    """An MLP teacher trained well on separable blobs (test accuracy ~1)."""
    x, y = toy_classification(n=600, in_dim=8, num_classes=4, seed=0)
    test = toy_classification(n=400, in_dim=8, num_classes=4, seed=0)  # same blobs (centers follow the seed)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = bd.models.build("mlp", (8,), 4, hidden=(32, 32))
    teacher = bd.BNN(net, likelihood=bd.likelihoods.Categorical(), dataset_size=len(x))
    bd.fit(teacher, (x, y), epochs=30, lr=1e-2, batch_size=64, progress=False, seed=0)
    return teacher, (x, y), test


def test_pruning_curve_starts_at_the_teacher_and_degrades(toy_teacher):
    teacher, (x, _), test = toy_teacher
    own = bd.evaluate(teacher, test, num_samples=16, seed=3)
    assert own["accuracy"] > 0.95
    curve = pruning_curve(teacher, test, criterion="snr", fractions=(0.0, 0.5, 0.9), num_samples=16, seed=3)
    assert curve.fraction == [0.0, 0.5, 0.9]
    assert curve.metric == "accuracy" and curve.criterion == "snr" and curve.compensation is False
    assert curve.units == [[32, 32], [16, 16], [3, 3]]
    assert curve.values[0] == pytest.approx(own["accuracy"], abs=1e-6)
    assert curve.nll[0] == pytest.approx(own["nll"], rel=1e-5)
    assert curve.values[2] < own["accuracy"] - 0.2
    assert curve.nll[2] > own["nll"] + 0.3
    assert curve.output_error == [None, None, None]


def test_pruning_curve_compensation_needs_and_uses_probe(toy_teacher):
    teacher, (x, _), test = toy_teacher
    with pytest.raises(bd.DataError, match="probe"):
        pruning_curve(teacher, test, compensation=True, fractions=(0.5,))
    with pytest.raises(bd.DataError, match="probe"):
        pruning_curve(teacher, test, criterion="data", fractions=(0.5,))
    plain = pruning_curve(teacher, test, fractions=(0.0, 0.7), num_samples=8)
    comp = pruning_curve(teacher, test, fractions=(0.0, 0.7), compensation=True, probe=x, num_samples=8)
    assert comp.compensation is True
    assert comp.values[0] == plain.values[0]
    assert comp.output_error[0] == pytest.approx(0.0, abs=1e-9) and comp.output_error[1] < 0.1
    assert comp.nll[1] < plain.nll[1]  # re-fitting the next layer keeps the function
    random = pruning_curve(teacher, test, criterion="random", fractions=(0.7,), num_samples=8, seed=1)
    assert random.criterion == "random" and len(random.values) == 1
    with pytest.raises(ValueError, match="fraction"):
        pruning_curve(teacher, test, fractions=(1.0,))
    with pytest.raises(TypeError):
        pruning_curve(teacher.net, test)


def test_pruning_curve_regression_reports_rmse():
    x, y = toy_regression(n=200, in_dim=4, out_dim=1, seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = bd.models.build("mlp", (4,), 1, hidden=(16,))
    teacher = bd.BNN(net, likelihood=bd.likelihoods.Normal(scale=0.1, learn_scale=True), dataset_size=200)
    bd.fit(teacher, (x, y), epochs=5, lr=1e-2, progress=False, seed=0)
    curve = pruning_curve(teacher, (x, y), fractions=(0.0, 0.5), num_samples=8)
    assert curve.metric == "rmse"
    assert curve.values[0] == pytest.approx(bd.evaluate(teacher, (x, y), num_samples=8)["rmse"], rel=1e-5)


def test_pruning_curve_result_fields_and_plain_data():
    curve = PruningCurve(criterion="snr", compensation=True, metric="accuracy", fraction=[0.0, 0.5],
                         values=[0.9, 0.6], nll=[0.3, 1.2], units=[[32, 32], [16, 16]], output_error=[0.0, 0.2])
    assert [f.name for f in dataclasses.fields(PruningCurve)] == [
        "criterion", "compensation", "metric", "fraction", "values", "nll", "units", "output_error"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        curve.metric = "rmse"
    d = curve.to_dict()
    assert json.loads(json.dumps(d)) == d and d["values"] == [0.9, 0.6] and d["units"] == [[32, 32], [16, 16]]
    assert PruningCurve.from_dict(d) == curve
    d["units"][0].append(1)
    assert curve.units == [[32, 32], [16, 16]]  # to_dict is a copy
    # the former dicts (values under the metric's name) are read too
    old = {"fraction": [0.0], "rmse": [0.4], "nll": [0.3], "metric": "rmse", "criterion": "random",
           "compensation": False, "units": [[4]], "output_error": [None]}
    assert PruningCurve.from_dict(old).values == [0.4] and PruningCurve.from_dict(old).metric == "rmse"
    with pytest.raises(ValueError, match="missing"):
        PruningCurve.from_dict({"fraction": [0.0]})


# ----------------------------------------------------------------------------- plots
@pytest.fixture(scope="module")
def cnn_plan():
    """A (briefly trained) cnn-deep teacher aligned to cnn-small with compensation: one removed layer."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 40, generator=g)
    y = torch.randint(0, 10, (96,), generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        teacher = bd.BNN(bd.models.build("cnn-deep", (40,), 10), dataset_size=96)
        student = bd.models.build("cnn-small", (40,), 10)
    bd.fit(teacher, (x, y), epochs=1, batch_size=32, progress=False)
    return bd.align(teacher, student, probe=x), teacher, (x, y)


def test_alignment_plot(cnn_plan, tmp_path):
    plan = cnn_plan[0]
    fig = plots.alignment(plan)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    trace, bars = fig.axes
    pruned = [L for L in plan.layers if L["trace"]]
    assert len(pruned) == 4  # three narrowed layers and the removed one; the output layer keeps its units
    assert len(trace.lines) == len(pruned)
    for line, L in zip(trace.lines, pruned):
        assert list(line.get_ydata()) == pytest.approx([r[2] for r in L["trace"]])
        assert list(line.get_xdata()) == list(range(1, len(L["trace"]) + 1))
        assert f"kept {len(L['kept'])}/{L['teacher_units']}" in line.get_label()
    assert any("removed" in line.get_label() for line in trace.lines)
    # kept + removed stacked bars, one pair per teacher layer
    assert len(bars.patches) == 2 * len(plan.layers)
    heights = [p.get_height() for p in bars.patches]
    assert heights[: len(plan.layers)] == [len(L["kept"]) for L in plan.layers]
    assert "output error" in bars.get_title()
    # the same figure from plan.json and plan.pt
    plan.to_json(tmp_path / "plan.json")
    plan.save(tmp_path / "plan.pt")
    for source in (tmp_path / "plan.json", tmp_path / "plan.pt", json.loads(plan.to_json())):
        assert len(plots.alignment(source).axes[0].lines) == len(pruned)
    host = Figure()
    ax = host.subplots()
    assert plots.alignment(plan, ax=ax) is host and len(ax.lines) == len(pruned)
    with pytest.raises(TypeError):
        plots.alignment({"nothing": 1})
    path = plots.save(fig, tmp_path / "alignment.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_alignment_plot_identity_plan(cnn_plan):
    teacher = cnn_plan[1]
    plan = bd.align(teacher, bd.models.build("cnn-deep", (40,), 10))
    fig = plots.alignment(plan)
    assert len(fig.axes[0].lines) == 0 and "no unit was removed" in fig.axes[0].texts[0].get_text()


# (the pruning-curve plot: tests/diagnostics/test_plots.py)
