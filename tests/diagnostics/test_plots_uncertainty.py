"""plots.ood / plots.roc / plots.selective draw OODResult and SelectiveResult objects only (Agg)."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure

import bayesdistill as bd
from bayesdistill.diagnostics import OODResult, SelectiveResult, ood_detection, plots, selective_prediction


@pytest.fixture(scope="module")
def results(trained):
    bnn, _, test = trained
    torch.manual_seed(0)
    net = bd.models.build("mlp", (8,), 3, hidden=(16,))
    x_ood = 4 * torch.randn(40, 8, generator=torch.Generator().manual_seed(1))
    return {
        "ood_bnn": ood_detection(bnn, test, x_ood, num_samples=8, name="bnn"),
        "ood_net": ood_detection(net, test, x_ood, name="net"),
        "sel_bnn": selective_prediction(bnn, test, num_samples=8, name="bnn"),
        "sel_net": selective_prediction(net, test, name="net"),
        "models": (bnn, net),
    }


def test_ood_draws_histograms_and_roc_from_the_result(results):
    res = results["ood_bnn"]
    fig = plots.ood(res)
    assert isinstance(fig, Figure)
    axes = fig.axes
    assert len(axes) == len(res.scores) + 1
    for ax, (name, sc) in zip(axes, res.scores.items()):
        assert name in ax.get_title() and f"{sc.auroc:.3f}" in ax.get_title()
        assert len(ax.patches) > 0  # two histograms
    roc_ax = axes[-1]
    lines = roc_ax.get_lines()[:-1]  # the last is the chance diagonal
    assert len(lines) == len(res.scores)
    fpr, tpr = res["entropy"].roc_curve()
    assert list(lines[0].get_xdata()) == pytest.approx(fpr.tolist())
    assert list(lines[0].get_ydata()) == pytest.approx(tpr.tolist())
    assert "bnn" in fig._suptitle.get_text()


def test_ood_of_a_point_estimate_draws_its_zero_mutual_information(results):
    fig = plots.ood(results["ood_net"])
    mi_ax = fig.axes[list(results["ood_net"].scores).index("mutual_information")]
    assert "AUROC 0.500" in mi_ax.get_title()


def test_roc_overlays_models_by_name(results):
    fig = plots.roc({"teacher": results["ood_bnn"], "student": results["ood_net"]}, score="entropy")
    lines = fig.axes[0].get_lines()[:-1]
    labels = [ln.get_label() for ln in lines]
    assert labels[0].startswith("teacher (AUROC") and labels[1].startswith("student (AUROC")
    fig = plots.roc([results["ood_bnn"], results["ood_net"]])  # names from the results
    assert [ln.get_label().split(" ")[0] for ln in fig.axes[0].get_lines()[:-1]] == ["bnn", "net"]
    with pytest.raises(KeyError, match="no score"):
        plots.roc(OODResult.from_probs(torch.tensor([[0.9, 0.1]]), torch.tensor([[0.5, 0.5]]),
                                       scores=["entropy"]), score="max_probability")


def test_selective_overlays_models(results):
    fig = plots.selective({"teacher": results["sel_bnn"], "point": results["sel_net"]})
    left, right = fig.axes
    acc_lines = [ln for ln in left.get_lines() if ln.get_label().startswith(("teacher", "point"))]
    assert len(acc_lines) == 2
    r = results["sel_bnn"]
    assert list(acc_lines[0].get_xdata()) == pytest.approx(r.coverage)
    assert list(acc_lines[0].get_ydata()) == pytest.approx(r.selective_accuracy)
    assert f"{r.area_accuracy:.3f}" in acc_lines[0].get_label()
    risk_lines = [ln for ln in right.get_lines() if "AURC" in ln.get_label()]
    assert list(risk_lines[0].get_ydata()) == pytest.approx(r.risk) and f"{r.aurc:.3f}" in risk_lines[0].get_label()
    one = plots.selective(r)  # a single result
    assert isinstance(one, Figure)


@pytest.mark.parametrize("fn", [plots.ood, plots.roc, plots.selective])
def test_a_model_is_refused_with_a_clear_type_error(fn, results):
    bnn, net = results["models"]
    for model in (bnn, net):
        with pytest.raises(TypeError, match=r"draws .* not a (BNN|Sequential).*compute it first"):
            fn(model)


def test_the_wrong_result_is_refused(results):
    with pytest.raises(TypeError, match="SelectiveResult"):
        plots.selective([results["ood_bnn"]])
    with pytest.raises(TypeError, match="OODResult"):
        plots.ood(results["sel_bnn"])
    with pytest.raises(ValueError, match="no results"):
        plots.selective({})
    assert isinstance(results["sel_bnn"], SelectiveResult)


def test_many_models_get_distinct_colours(results):
    r = results["sel_net"]
    fig = plots.selective({f"m{i}": r for i in range(12)})
    colours = [tuple(ln.get_color()) if not isinstance(ln.get_color(), str) else ln.get_color()
               for ln in fig.axes[1].get_lines()]
    assert len(colours) == 12 and len(set(colours)) == 12
