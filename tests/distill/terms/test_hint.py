"""Hint (FitNets): minus the mean squared error of a learned projection, recomputed from the
projection's own weights (a pooled map pair, a vector pair), zero error, and per-pair weights."""

from __future__ import annotations

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


def _conv_setup(weight=1.0):
    x, y = conv_data(8)
    student = bd.BNN(tiny_conv1d(length=12, channels=4, seed=2), dataset_size=8)
    teacher = conv_teacher()
    hint = Hint(teacher, {"2": "1", "4": "3"}, weight=weight)  # a map pair (pooled 12 -> 6) and a vector pair
    obj = DistillObjective(student, [hint])
    obj.setup(x)
    return x, y, student, teacher, hint, obj


def test_hint_is_minus_mean_squared_error_of_the_projection():
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
