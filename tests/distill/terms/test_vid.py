"""VID (variational information distillation) as amortized q(t | s): the observed sites' log-densities
recomputed by hand (maps with pooling, vectors, a vector meeting a map), the variances, VID-LP, the
per-pair weights, its metrics, and two VID terms in one objective."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

import bayesdistill as bd
from _distill_helpers import LOG_2PI, bnn_teacher, conv_data, conv_teacher, hand_gauss_logq, student_features, teacher_features
from _helpers import tiny_conv1d, tiny_mlp, toy_classification
from bayesdistill.distill import VID, DistillObjective
from bayesdistill.distill.terms.vid import gaussian_entropy


def _vid_site_check(student, teacher_net, x, y, pairs, regressor="mlp", weight=1.0):
    obj_terms = [VID(teacher_net, pairs, weight=weight, regressor=regressor)]
    obj = DistillObjective(student, obj_terms)
    obj.setup(x)
    vid = obj_terms[0]
    # non-uniform variances, so that a wrong channel broadcast would show
    with torch.no_grad():
        for i in range(len(pairs)):
            vid.alpha[str(i)].copy_(torch.linspace(-1.0, 2.0, vid.alpha[str(i)].numel()))
    trace = poutine.trace(obj.model).get_trace(x, y)
    _, s_feats = student_features(student, x, trace, list(pairs.values()))
    _, t_feats = teacher_features(teacher_net, x, list(pairs))
    return obj, vid, trace, s_feats, t_feats


def _mlp_mu(vid, i, s):
    """The MLP regressor of pair i written out from its own weights."""
    lin = [m for m in vid.mu[str(i)].net if isinstance(m, nn.Linear)]
    return torch.relu(s @ lin[0].weight.T + lin[0].bias) @ lin[1].weight.T + lin[1].bias


def test_vid_site_log_prob_conv_maps_with_adaptive_pooling():
    x, y = conv_data(8)
    student = bd.BNN(tiny_conv1d(length=12, channels=4, seed=2), dataset_size=8)
    teacher = conv_teacher()
    obj, vid, trace, s_feats, t_feats = _vid_site_check(student, teacher, x, y, {"2": "1"})
    s, t = s_feats["1"], t_feats["2"]
    assert s.shape == (8, 4, 12) and t.shape == (8, 6, 6)  # student map longer than the teacher's
    # three 1x1 convolutions with ReLUs, hidden width = the teacher's channels
    convs = [m for m in vid.mu["0"].net if isinstance(m, nn.Conv1d)]
    assert len(convs) == 3 and all(c.kernel_size == (1,) for c in convs)
    assert [c.out_channels for c in convs] == [6, 6, 6] and convs[0].in_channels == 4
    pooled = s.reshape(8, 4, 6, 2).mean(-1)  # adaptive average pooling 12 -> 6, by hand
    h = torch.relu(torch.einsum("oc,bcl->bol", convs[0].weight[:, :, 0], pooled) + convs[0].bias[:, None])
    h = torch.relu(torch.einsum("oc,bcl->bol", convs[1].weight[:, :, 0], h) + convs[1].bias[:, None])
    mu = torch.einsum("oc,bcl->bol", convs[2].weight[:, :, 0], h) + convs[2].bias[:, None]
    var = F.softplus(vid.alpha["0"].detach()) + 1e-5
    ref = hand_gauss_logq(t, mu, var)
    site = trace.nodes["vid.0"]
    assert site["is_observed"] and torch.equal(site["value"], t)
    lp = site["fn"].log_prob(site["value"])
    assert lp.shape == (8,)
    torch.testing.assert_close(lp, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(vid.variance(0), var)


def test_vid_site_log_prob_vector_pair():
    x, y = toy_classification(8)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=8)
    teacher = tiny_mlp(hidden=8, seed=1)
    obj, vid, trace, s_feats, t_feats = _vid_site_check(student, teacher, x, y, {"1": "1"})
    s, t = s_feats["1"], t_feats["1"]
    lin = [m for m in vid.mu["0"].net if isinstance(m, nn.Linear)]
    assert len(lin) == 2 and lin[0].in_features == 6 and lin[0].out_features == 8 and lin[1].out_features == 8
    mu = _mlp_mu(vid, 0, s)
    var = F.softplus(vid.alpha["0"].detach()) + 1e-5
    assert var.shape == (8,)
    # written with plain arithmetic over the D = 8 teacher features
    ref = (-(0.5 * var.log() + (t - mu) ** 2 / (2 * var)).sum(1) - 8 / 2 * LOG_2PI).detach()
    lp = trace.nodes["vid.0"]["fn"].log_prob(t)
    torch.testing.assert_close(lp, ref, rtol=1e-5, atol=1e-4)
    # VID.log_factor is the same density (before the weight) and the metrics report its batch mean
    torch.testing.assert_close(vid.log_factor(None, s_feats, None, t_feats).detach(), ref, rtol=1e-5, atol=1e-4)
    vals = obj.step_metrics()
    assert set(vals) == {"distill/vid/loss", "distill/vid/pair0/loss", "distill/vid/pair0/log_q",
                         "distill/vid/pair0/mi_bound"}
    assert float(vals["distill/vid/pair0/log_q"]) == pytest.approx(float(ref.mean()), rel=1e-5)
    assert float(vals["distill/vid/loss"]) == pytest.approx(-float(ref.mean()), rel=1e-5)
    assert float(vals["distill/vid/pair0/loss"]) == pytest.approx(-float(ref.mean()), rel=1e-5)


def test_vid_vector_student_meets_map_teacher_is_flattened():
    x, _ = conv_data(8)
    y = torch.arange(8) % 3
    # student: an MLP on the flattened input, its hidden layer "2" a vector [B, 6]
    with torch.random.fork_rng():
        torch.manual_seed(3)
        snet = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))
    student = bd.BNN(snet, dataset_size=8)
    teacher = conv_teacher()
    obj, vid, trace, s_feats, t_feats = _vid_site_check(student, teacher, x, y, {"1": "2"})
    s, t = s_feats["2"], t_feats["1"]
    assert s.shape == (8, 6) and t.shape == (8, 6, 12)
    lin = [m for m in vid.mu["0"].net if isinstance(m, nn.Linear)]
    assert lin[0].in_features == 6 and lin[-1].out_features == 72
    mu = _mlp_mu(vid, 0, s).reshape(8, 6, 12)
    var = F.softplus(vid.alpha["0"].detach()) + 1e-5
    assert var.shape == (6,)  # one variance per teacher channel, shared along the map
    ref = torch.zeros(8)
    for c in range(6):  # explicit loop over channels
        ref -= (0.5 * var[c].log() + (t[:, c] - mu[:, c]) ** 2 / (2 * var[c])).sum(1)
    ref -= 72 / 2 * LOG_2PI
    lp = trace.nodes["vid.0"]["fn"].log_prob(t)
    torch.testing.assert_close(lp, ref, rtol=1e-5, atol=1e-4)


def test_vid_variance_initialisation_and_linear_regressor():
    x, _ = conv_data(8)
    student = bd.BNN(tiny_conv1d(length=12, channels=4, seed=2), dataset_size=8)
    teacher = conv_teacher()
    # a map pair and a vector pair
    vid = VID(teacher, {"2": "1", "4": "3"})
    obj = DistillObjective(student, [vid])
    obj.setup(x)
    for i, channels in ((0, 6), (1, 3)):
        v = vid.variance(i)
        assert v.shape == (channels,)
        torch.testing.assert_close(v, torch.full((channels,), 5.0), rtol=0, atol=1e-5)
    assert VID(teacher, {"2": "1"}, init_variance=2.0).init_variance == 2.0
    with pytest.raises(ValueError, match="init_variance"):
        VID(teacher, {"2": "1"}, init_variance=0.0)
    with pytest.raises(ValueError, match="regressor"):
        VID(teacher, {"2": "1"}, regressor="deep")
    # VID-LP: one linear map (a 1x1 convolution for maps)
    lp = VID(teacher, {"4": "3", "2": "1"}, regressor="linear")
    DistillObjective(student, [lp]).setup(x)
    assert isinstance(lp.mu["0"].net, nn.Linear) and lp.mu["0"].net.in_features == 3 and lp.mu["0"].net.out_features == 3
    assert isinstance(lp.mu["1"].net, nn.Conv1d) and lp.mu["1"].net.kernel_size == (1,)
    assert sum(p.numel() for p in lp.mu.parameters()) == (3 * 3 + 3) + (4 * 6 + 6)


def test_vid_pair_weights_scale_the_sites():
    n, b = 40, 8
    x, y = toy_classification(b)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=n)
    teacher = tiny_mlp(hidden=8, seed=1)
    vid = VID(teacher, {"1": "1", "2": "2"}, weight={"1": 0.3, "2": 2.0})
    obj = DistillObjective(student, [vid])
    obj.setup(x)
    trace = poutine.trace(obj.model).get_trace(x, y)
    trace.compute_log_prob()
    for i, w in ((0, 0.3), (1, 2.0)):
        site = trace.nodes[f"vid.{i}"]
        assert site["scale"] == pytest.approx(w * n / b)
        raw = site["fn"].log_prob(site["value"]).sum().detach()
        assert float(site["log_prob_sum"].detach()) == pytest.approx(w * n / b * float(raw), rel=1e-5)
    vid2 = VID(teacher, {"1": "1", "2": "2"}, weight=0.5)
    assert vid2.pair_weights == [0.5, 0.5]
    assert vid.pair_weights == [0.3, 2.0] and vid.weight == 1.0


def test_vid_per_pair_weights_against_the_densities_by_hand():
    """A weight mapping teacher path -> lambda: the model's VID sites add sum_i lambda_i N/B
    sum_b log q_i(t_b | s_b), each log q written out; the loss is before the weights."""
    n, b = 40, 8
    x, y = toy_classification(b)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=n)
    teacher = tiny_mlp(hidden=8, seed=1)
    weights = {"1": 0.3, "2": 2.0}
    obj, vid, trace, s_feats, t_feats = _vid_site_check(student, teacher, x, y, {"1": "1", "2": "2"}, weight=weights)
    trace.compute_log_prob()
    total, by_hand = 0.0, []
    for i, (tp, sp) in enumerate((("1", "1"), ("2", "2"))):
        var = F.softplus(vid.alpha[str(i)].detach()) + 1e-5
        logq = hand_gauss_logq(t_feats[tp], _mlp_mu(vid, i, s_feats[sp]), var).detach()
        by_hand.append(logq)
        total += weights[tp] * n / b * float(logq.sum())
    sites = sum(float(trace.nodes[f"vid.{i}"]["log_prob_sum"].detach()) for i in range(2))
    assert sites == pytest.approx(total, rel=1e-5)
    vals = obj.step_metrics()
    for i, logq in enumerate(by_hand):
        assert float(vals[f"distill/vid/pair{i}/log_q"]) == pytest.approx(float(logq.mean()), rel=1e-5)
    assert float(vals["distill/vid/loss"]) == pytest.approx(-float(by_hand[0].mean() + by_hand[1].mean()), rel=1e-5)


def test_vid_mi_bound_is_the_entropy_plus_log_q():
    x, y = toy_classification(16)
    teacher = tiny_mlp(hidden=8, seed=1)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=16)
    vid = VID(teacher, {"1": "1"})
    obj = DistillObjective(student, [vid])
    obj.setup(x)
    poutine.trace(obj.model).get_trace(x, y)
    _, tf = teacher_features(teacher, x, ["1"])
    vals = obj.step_metrics()
    assert float(vals["distill/vid/pair0/mi_bound"]) == pytest.approx(
        gaussian_entropy(tf["1"]) + float(vals["distill/vid/pair0/log_q"]), rel=1e-6)


def test_two_vid_terms_get_distinct_sites_and_columns():
    x, y = toy_classification(32)
    teacher = bnn_teacher(seed=1, hidden=6)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=32)
    a, b = VID(teacher, {"1": "1"}), VID(teacher, {"0": "0"})
    result = bd.fit(student, (x, y), epochs=1, batch_size=16, progress=False, distill=[a, b])
    assert {a.name, b.name} == {"vid", "vid1"}
    row = result.history[-1]
    assert "distill/vid/pair0/mi_bound" in row and "distill/vid1/pair0/mi_bound" in row
