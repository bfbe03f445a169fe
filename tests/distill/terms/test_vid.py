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


def _vid_site_check(student, teacher_net, x, y, pairs, regressor="mlp", weight=1.0, reduction="mean"):
    obj_terms = [VID(teacher_net, pairs, weight=weight, regressor=regressor, reduction=reduction)]
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
    # VID.log_factor (before the weight) is the density per element under the default reduction
    # ("mean", D = 8 teacher features); log_q reports the exact density, loss the log-factor
    assert vid.reduction == "mean" and vid.sizes == {0: 8}
    torch.testing.assert_close(vid.log_factor(None, s_feats, None, t_feats).detach(), ref / 8, rtol=1e-5, atol=1e-4)
    vals = obj.step_metrics()
    assert set(vals) == {"distill/vid/loss", "distill/vid/pair0/loss", "distill/vid/pair0/log_q",
                         "distill/vid/pair0/mi_bound"}
    assert float(vals["distill/vid/pair0/log_q"]) == pytest.approx(float(ref.mean()), rel=1e-5)
    assert float(vals["distill/vid/loss"]) == pytest.approx(-float(ref.mean()) / 8, rel=1e-5)
    assert float(vals["distill/vid/pair0/loss"]) == pytest.approx(-float(ref.mean()) / 8, rel=1e-5)


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
    for reduction in ("sum", "mean"):
        vid = VID(teacher, {"1": "1", "2": "2"}, weight={"1": 0.3, "2": 2.0}, reduction=reduction)
        obj = DistillObjective(student, [vid])
        obj.setup(x)
        trace = poutine.trace(obj.model).get_trace(x, y)
        trace.compute_log_prob()
        for i, w, d in ((0, 0.3, 8), (1, 2.0, 3)):  # D: the teacher's hidden layer (8), its output (3)
            per = 1 / d if reduction == "mean" else 1.0
            site = trace.nodes[f"vid.{i}"]
            assert site["scale"] == pytest.approx(w * per * n / b)
            raw = site["fn"].log_prob(site["value"]).sum().detach()
            assert float(site["log_prob_sum"].detach()) == pytest.approx(w * per * n / b * float(raw), rel=1e-5)
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
    obj, vid, trace, s_feats, t_feats = _vid_site_check(student, teacher, x, y, {"1": "1", "2": "2"}, weight=weights,
                                                        reduction="sum")
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


# ---------------------------------------------------------------------------------- the weight convention
def test_vid_mean_reduction_is_the_normal_log_density_divided_by_the_elements():
    """The default reduction: pair i's log-factor is log q(t|s) / D_i, with log q computed here by
    torch.distributions.Normal; the observed site is the exact q(t|s) scaled by weight / D_i."""
    n, b = 40, 8
    x, y = conv_data(b)
    student = bd.BNN(tiny_conv1d(length=12, channels=4, seed=2), dataset_size=n)
    teacher = conv_teacher()
    vid = VID(teacher, {"2": "1"}, weight=0.7)
    assert vid.reduction == "mean"
    obj = DistillObjective(student, [vid])
    obj.setup(x)
    with torch.no_grad():
        vid.alpha["0"].copy_(torch.linspace(-1.0, 2.0, 6))
    trace = poutine.trace(obj.model).get_trace(x, y)
    trace.compute_log_prob()
    _, s_feats = student_features(student, x, trace, ["1"])
    _, t_feats = teacher_features(teacher, x, ["2"])
    t = t_feats["2"]
    d = t[0].numel()
    assert d == 36 and vid.sizes == {0: 36}
    with torch.no_grad():
        mu = vid.mu["0"](s_feats["1"])
        sd = vid.variance(0).sqrt().reshape(1, 6, 1).expand_as(mu)
        exact = torch.distributions.Normal(mu, sd).log_prob(t).reshape(b, -1).sum(1)
        lf = vid.pair_log_factors(None, s_feats, None, t_feats)[0]
    torch.testing.assert_close(lf, exact / d, rtol=1e-5, atol=1e-5)
    site = trace.nodes["vid.0"]
    assert site["scale"] == pytest.approx(0.7 * n / b / d)
    assert float(site["log_prob_sum"].detach()) == pytest.approx(0.7 * n / b * float(exact.sum()) / d, rel=1e-5)
    vals = obj.step_metrics()
    assert float(vals["distill/vid/pair0/log_q"]) == pytest.approx(float(exact.mean()), rel=1e-5)  # exact
    assert float(vals["distill/vid/pair0/loss"]) == pytest.approx(-float(exact.mean()) / d, rel=1e-5)
    # reduction="sum" is the exact density, D times the per-element one
    vid.reduction = "sum"
    with torch.no_grad():
        torch.testing.assert_close(vid.pair_log_factors(None, s_feats, None, t_feats)[0], exact, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="reduction"):
        VID(teacher, {"2": "1"}, reduction="max")


def _duplicated_vid_pair(reduction: str):
    """Two VID terms, one on a teacher map t [16, 4, 5], one on [t, t] (its channels twice), with
    the same regressor (the last 1x1 convolution duplicated) and the same variances per channel."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 3, 5, generator=g), torch.randn(16, 4, 5, generator=g)
    t2 = torch.cat([t, t], 1)
    a = VID(nn.Identity(), {"t": "s"}, hidden=6, reduction=reduction)
    b = VID(nn.Identity(), {"t": "s"}, hidden=6, reduction=reduction)
    a.setup(None, {"s": s}, None, {"t": t})
    b.setup(None, {"s": s}, None, {"t": t2})
    with torch.no_grad():
        na, nb = a.mu["0"].net, b.mu["0"].net
        for k in (0, 2):
            nb[k].load_state_dict(na[k].state_dict())
        nb[4].weight.copy_(torch.cat([na[4].weight] * 2, 0))
        nb[4].bias.copy_(torch.cat([na[4].bias] * 2))
        a.alpha["0"].copy_(torch.linspace(-1.0, 1.0, 4))
        b.alpha["0"].copy_(torch.cat([a.alpha["0"]] * 2))
        return (a.pair_log_factors(None, {"s": s}, None, {"t": t})[0],
                b.pair_log_factors(None, {"s": s}, None, {"t": t2})[0])


def test_vid_weight_means_the_same_for_a_map_duplicated_along_channels():
    """Under the default reduction a feature map duplicated k times along its channels gives the
    original's log-factor (so a weight means the same for any feature size); its exact
    log-density (reduction="sum") is k times larger."""
    one, two = _duplicated_vid_pair("mean")
    torch.testing.assert_close(two, one)
    one, two = _duplicated_vid_pair("sum")
    torch.testing.assert_close(two, 2 * one)


def test_vid_default_weight_on_a_large_map_is_on_the_scale_of_a_label():
    """The issue's case: a 32 x 8 x 8 = 2,048-element teacher map meeting a hidden layer. At
    initialization (variances 5) the exact log q(t|s) is thousands of nats per example; the
    default log-factor, per element, is a few nats, like one label's log-likelihood."""
    g = torch.Generator().manual_seed(0)
    t, s = torch.relu(torch.randn(64, 32, 8, 8, generator=g)), torch.randn(64, 64, generator=g)
    vid = VID(nn.Identity(), {"t": "s"})
    vid.setup(None, {"s": s}, None, {"t": t})
    with torch.no_grad():
        per_element = vid.pair_log_factors(None, {"s": s}, None, {"t": t})[0]
        exact = vid.q(0, s, t).log_prob(t)
    assert vid.weight == 1.0 and vid.sizes == {0: 2048}
    assert float(exact.mean()) < -3000
    assert -3.0 < float(per_element.mean()) < -1.0
    torch.testing.assert_close(per_element, exact / 2048)
