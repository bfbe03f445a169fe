"""Hint (FitNets): minus the squared error of a learned projection, recomputed from the
projection's own weights (a pooled map pair, a vector pair), zero error, per-pair weights, and
the weight convention (per element, in units of the teacher feature's variance)."""

from __future__ import annotations

import math

import pytest
import torch
from pyro import poutine
from torch import nn

import bayesdistill as bd
from _distill_helpers import conv_data, conv_teacher, teacher_features
from _helpers import tiny_conv1d, tiny_mlp, toy_classification
from bayesdistill.bnn import FeatureTaps
from bayesdistill.distill import DistillObjective, Hint


def _hand_hint(hint, s_feats, t_feats):
    """Per pair: -mean((W s + b - t)^2), from the projections' weights (pair 0 a pooled map, 1 a vector)."""
    conv, lin = hint.proj["0"].net, hint.proj["1"].net
    pooled = s_feats["1"].reshape(-1, 4, 6, 2).mean(-1)
    pred_map = torch.einsum("oc,bcl->bol", conv.weight[:, :, 0], pooled) + conv.bias[:, None]
    pred_vec = s_feats["3"] @ lin.weight.T + lin.bias
    return -((pred_map - t_feats["2"]) ** 2).mean((1, 2)), -((pred_vec - t_feats["4"]) ** 2).mean(1)


def _variance(t):
    """The mean over elements of each element's variance over the examples (unbiased), written out."""
    flat = t.reshape(t.shape[0], -1)
    return float(((flat - flat.mean(0)) ** 2).sum(0).div(flat.shape[0] - 1).mean())


def _conv_setup(weight=1.0, normalize="none"):
    x, y = conv_data(8)
    student = bd.BNN(tiny_conv1d(length=12, channels=4, seed=2), dataset_size=8)
    teacher = conv_teacher()
    # a map pair (pooled 12 -> 6) and a vector pair
    hint = Hint(teacher, {"2": "1", "4": "3"}, weight=weight, normalize=normalize)
    obj = DistillObjective(student, [hint])
    obj.setup(x)
    return x, y, student, teacher, hint, obj


def test_hint_is_minus_mean_squared_error_of_the_projection():
    """normalize="none": the plain FitNets mean squared error."""
    x, _, student, teacher, hint, _ = _conv_setup()
    with FeatureTaps(student.net, ["1", "3"]) as taps:
        student(x)
    s_feats = dict(taps.features)
    _, t_feats = teacher_features(teacher, x, ["2", "4"])
    conv, lin = hint.proj["0"].net, hint.proj["1"].net
    assert isinstance(conv, nn.Conv1d) and conv.kernel_size == (1,) and (conv.in_channels, conv.out_channels) == (4, 6)
    assert isinstance(lin, nn.Linear) and (lin.in_features, lin.out_features) == (3, 3)
    ref_map, ref_vec = _hand_hint(hint, s_feats, t_feats)
    lf = hint.log_factor(None, s_feats, None, t_feats)
    torch.testing.assert_close(lf, ref_map + ref_vec, rtol=1e-5, atol=1e-6)
    assert (lf < 0).all()


def test_hint_with_zero_error_is_zero():
    x, _ = toy_classification(6)
    net = tiny_mlp(seed=1)
    hint = Hint(net, {"2": "2"})
    _, feats = teacher_features(net, x, ["2"])
    hint.setup(None, feats, None, feats)
    with torch.no_grad():
        hint.proj["0"].net.weight.copy_(torch.eye(3))
        hint.proj["0"].net.bias.zero_()
    torch.testing.assert_close(hint.log_factor(None, feats, None, feats), torch.zeros(6))


def test_hint_per_pair_weights_against_the_computation_by_hand():
    w = {"2": 0.4, "4": 5.0}
    x, y, student, teacher, hint, obj = _conv_setup(weight=w)
    trace = poutine.trace(obj.model).get_trace(x, y)
    weights = {name: trace.nodes[name]["value"] for name in student.site_names}
    with torch.no_grad(), FeatureTaps(student.net, ["1", "3"]) as taps:
        student.forward_with(x, weights)
    _, t_feats = teacher_features(teacher, x, ["2", "4"])
    with torch.no_grad():
        ref_map, ref_vec = _hand_hint(hint, dict(taps.features), t_feats)
    site = trace.nodes["distill.hint"]
    torch.testing.assert_close(site["fn"].log_factor.detach(), w["2"] * ref_map + w["4"] * ref_vec,
                               rtol=1e-5, atol=1e-6)
    vals = obj.step_metrics()
    assert set(vals) == {"distill/hint/loss", "distill/hint/pair0/loss", "distill/hint/pair1/loss"}
    assert float(vals["distill/hint/pair0/loss"]) == pytest.approx(-float(ref_map.mean()), rel=1e-5)
    assert float(vals["distill/hint/pair1/loss"]) == pytest.approx(-float(ref_vec.mean()), rel=1e-5)
    assert float(vals["distill/hint/loss"]) == pytest.approx(-float(ref_map.mean() + ref_vec.mean()), rel=1e-5)
    assert hint.pair_weights == [0.4, 5.0]


# ---------------------------------------------------------------------------------- the weight convention
def test_hint_defaults_divide_by_the_teacher_feature_variance():
    """The defaults (reduction="mean", normalize="variance"): each pair's mean squared error divided
    by the teacher feature's variance on the setup batch, computed here independently."""
    x, _, student, teacher, hint, _ = _conv_setup(normalize="variance")
    assert hint.reduction == "mean" and Hint(teacher).normalize == "variance"
    _, t_feats = teacher_features(teacher, x, ["2", "4"])
    v_map, v_vec = _variance(t_feats["2"]), _variance(t_feats["4"])
    assert hint.variances == pytest.approx({0: v_map, 1: v_vec}, rel=1e-5)
    with FeatureTaps(student.net, ["1", "3"]) as taps:
        student(x)
    s_feats = dict(taps.features)
    ref_map, ref_vec = _hand_hint(hint, s_feats, t_feats)
    parts = hint.pair_log_factors(None, s_feats, None, t_feats)
    torch.testing.assert_close(parts[0], ref_map / v_map, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts[1], ref_vec / v_vec, rtol=1e-5, atol=1e-6)


def test_hint_sum_is_a_gaussian_log_density_and_mean_is_it_per_element():
    """reduction="sum": -sum_d r_d^2 / v = log N(t; W s + b, v/2) + D/2 log(pi v) (torch.distributions);
    reduction="mean": the same divided by D."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(12, 5, generator=g), 3.0 * torch.randn(12, 7, generator=g) + 1.0
    out = {}
    for reduction in ("sum", "mean"):
        hint = Hint(nn.Identity(), {"t": "s"}, reduction=reduction)
        torch.manual_seed(0)
        hint.setup(None, {"s": s}, None, {"t": t})
        with torch.no_grad():
            out[reduction] = hint.pair_log_factors(None, {"s": s}, None, {"t": t})[0]
            mu = hint.proj["0"](s)
    v = _variance(t)
    exact = torch.distributions.Normal(mu, (v / 2) ** 0.5).log_prob(t).sum(1) + 7 / 2 * math.log(math.pi * v)
    torch.testing.assert_close(out["sum"], exact, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out["mean"], exact / 7, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        Hint(nn.Identity(), {"t": "s"}, reduction="max")
    with pytest.raises(ValueError, match="normalize"):
        Hint(nn.Identity(), {"t": "s"}, normalize="std")


def _two_hints(t_a, t_b, widen):
    """Hints on teacher features t_a and t_b whose projections agree after ``widen`` (weights, bias)."""
    g = torch.Generator().manual_seed(1)
    s = torch.randn(t_a.shape[0], 3, t_a.shape[2], generator=g)
    a, b = Hint(nn.Identity(), {"t": "s"}), Hint(nn.Identity(), {"t": "s"})
    a.setup(None, {"s": s}, None, {"t": t_a})
    b.setup(None, {"s": s}, None, {"t": t_b})
    with torch.no_grad():
        w, bias = widen(a.proj["0"].net.weight, a.proj["0"].net.bias)
        b.proj["0"].net.weight.copy_(w)
        b.proj["0"].net.bias.copy_(bias)
        return a.pair_log_factors(None, {"s": s}, None, {"t": t_a})[0], b.pair_log_factors(None, {"s": s}, None, {"t": t_b})[0]


def test_hint_weight_means_the_same_for_any_feature_size_and_scale():
    """With the defaults a teacher map duplicated along its channels, or multiplied by 10 (with the
    projection following it), gives the same log-factor."""
    t = torch.relu(torch.randn(10, 4, 6, generator=torch.Generator().manual_seed(2)))
    one, two = _two_hints(t, torch.cat([t, t], 1), lambda w, b: (torch.cat([w, w], 0), torch.cat([b, b])))
    torch.testing.assert_close(two, one)
    one, ten = _two_hints(t, 10 * t, lambda w, b: (10 * w, 10 * b))
    torch.testing.assert_close(ten, one, rtol=1e-5, atol=1e-6)
