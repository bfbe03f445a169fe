"""Function-space distillation terms (KD, VID, PKT, Hint) inside the student's Pyro objective.

Every formula is recomputed here by hand (closed forms, explicit loops, the projections' own
weights) and compared with what the terms and the traced Pyro model produce: the scales of the
likelihood and of the terms' sites, gradients, feature taps, teacher modes, the composition with
the teacher-posterior prior in one ELBO, transfer sets, and bit-identical resume.
"""

from __future__ import annotations

import math

import pytest
import pyro
import torch
import torch.distributions as td
import torch.nn.functional as F
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch import nn

import bayesdistill as bd
from _helpers import randomize_posterior, states_equal, tiny_conv1d, tiny_mlp, toy_classification, without_time
from bayesdistill.distill import KD, PKT, VID, DistillObjective, FeatureTaps, Hint, TeacherFeatures
from bayesdistill.distill.function_space import gaussian_entropy
from bayesdistill.infer import MeanFieldELBO

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
LOG_2PI = math.log(2 * math.pi)


# ----------------------------------------------------------------------------- builders
def conv_teacher(seed: int = 1) -> nn.Sequential:
    """``[B, 1, 12] -> Conv1d(6) -> ReLU -> MaxPool(2) -> Linear``: path "2" is a ``[B, 6, 6]`` map."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv1d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(36, 3))


def conv_data(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 12, generator=g), torch.arange(n) % 3


def bnn_teacher(seed: int = 1, hidden: int = 8) -> bd.BNN:
    teacher = bd.BNN(tiny_mlp(hidden=hidden, seed=seed))
    randomize_posterior(teacher, seed=seed, scale_range=(0.05, 0.3))
    return teacher


def student_features(bnn: bd.BNN, x, trace, paths):
    """The student's output and tapped features under the weights drawn in ``trace``."""
    weights = {name: trace.nodes[name]["value"] for name in bnn.site_names}
    with FeatureTaps(bnn.net, paths) as taps:
        out = bnn.forward_with(x, weights)
    return out, dict(taps.features)


def teacher_features(teacher: nn.Module, x, paths):
    """Output and features of a plain network, or of a BNN at its posterior mean."""
    net = teacher.net if isinstance(teacher, bd.BNN) else teacher
    with torch.no_grad(), FeatureTaps(net, paths) as taps:
        out = teacher(x)
    return out, dict(taps.features)


def hand_gauss_logq(t, mu, var_c):
    """sum_{c, ...} log N(t; mu, sigma_c^2) per example, written out (variance per channel = dim 1)."""
    b, c = t.shape[0], t.shape[1]
    v = var_c.reshape(1, c, *([1] * (t.dim() - 2))).expand_as(t)
    d = t[0].numel()
    per = 0.5 * torch.log(v) + (t - mu) ** 2 / (2 * v)
    return -per.reshape(b, -1).sum(1) - 0.5 * d * LOG_2PI


class PlateSpy(Messenger):
    """Record the size and batch of every ``distill`` plate and whether an ``obs`` site passed by."""

    def __init__(self):
        super().__init__()
        self.sizes: list[tuple[int, int]] = []
        self.obs_seen = 0

    def _pyro_sample(self, msg):
        if msg["name"] == "distill" and msg["type"] == "sample":
            self.sizes.append((int(msg["fn"].size), len(msg["value"])))  # the batch is the given subsample
        if msg["name"] == "obs":
            self.obs_seen += 1


# ----------------------------------------------------------------------------- 1. KD
def test_kd_log_factor_is_the_hinton_closed_form():
    g = torch.Generator().manual_seed(0)
    zs, zt = 3 * torch.randn(5, 4, generator=g), 3 * torch.randn(5, 4, generator=g)
    temp = 2.5
    kd = KD(nn.Identity(), temperature=temp, weight=0.3)
    lf = kd.log_factor(zs, {}, zt, {})
    ref = -(temp**2) * td.kl_divergence(td.Categorical(logits=zt / temp), td.Categorical(logits=zs / temp))
    assert lf.shape == (5,)
    torch.testing.assert_close(lf, ref, rtol=1e-5, atol=1e-6)
    # the formula written with explicit probabilities
    p_t, p_s = torch.softmax(zt / temp, -1), torch.softmax(zs / temp, -1)
    by_hand = -(temp**2) * (p_t * (p_t.log() - p_s.log())).sum(-1)
    torch.testing.assert_close(lf, by_hand, rtol=1e-5, atol=1e-6)
    assert (lf < 0).all()
    assert torch.equal(kd.log_factor(zt, {}, zt, {}), torch.zeros(5))
    # the temperature matters: T = 1 gives a different value
    assert not torch.allclose(KD(nn.Identity(), temperature=1.0).log_factor(zs, {}, zt, {}), lf)
    with pytest.raises(ValueError, match="same shape"):
        kd.log_factor(zs, {}, zt[:, :3], {})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        KD(nn.Identity(), weight=1.5)
    with pytest.raises(ValueError, match="temperature"):
        KD(nn.Identity(), temperature=0.0)


@pytest.mark.parametrize("a", [0.25, 0.9])
def test_kd_weight_scales_likelihood_and_factor_sites(a):
    n, b, temp = 64, 8, 3.0
    x, y = toy_classification(b)
    teacher = tiny_mlp(hidden=8, seed=1)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=n)
    kd = KD(teacher, temperature=temp, weight=a)
    assert kd.likelihood_weight == pytest.approx(1 - a)
    obj = DistillObjective(student, [kd])
    assert obj.likelihood_weight == pytest.approx(1 - a)
    trace = poutine.trace(obj.model).get_trace(x, y)
    trace.compute_log_prob()
    assert trace.nodes["obs"]["scale"] == pytest.approx((1 - a) * n / b)
    site = trace.nodes["distill.kd"]
    assert site["scale"] == pytest.approx(n / b)
    s_out = trace.nodes["_RETURN"]["value"]
    t_out = teacher(x).detach()
    ref = -(temp**2) * td.kl_divergence(td.Categorical(logits=t_out / temp), td.Categorical(logits=s_out / temp))
    assert float(site["log_prob_sum"]) == pytest.approx(a * float(ref.sum()) * n / b, rel=1e-5)
    # the observed likelihood is (1 - a) N/B times the batch log-likelihood
    ll = td.Categorical(logits=s_out).log_prob(y).sum()
    assert float(trace.nodes["obs"]["log_prob_sum"]) == pytest.approx((1 - a) * n / b * float(ll), rel=1e-5)
    # KD's reported loss is the batch mean of -log_factor (before the weight)
    assert float(obj.step_metrics()["distill/kd/loss"]) == pytest.approx(-float(ref.mean()), rel=1e-5)


def test_without_kd_the_likelihood_is_not_rescaled():
    n, b = 64, 8
    x, y = toy_classification(b)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=n)
    obj = DistillObjective(student, [PKT(tiny_mlp(hidden=8, seed=1), "1", "1")])
    trace = poutine.trace(obj.model).get_trace(x, y)
    assert obj.likelihood_weight == 1.0 and trace.nodes["obs"]["scale"] == pytest.approx(n / b)


# ----------------------------------------------------------------------------- 2. VID
def _vid_site_check(student, teacher_net, x, y, pairs, regressor="mlp"):
    obj_terms = [VID(teacher_net, pairs, regressor=regressor)]
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
    mu = torch.relu(s @ lin[0].weight.T + lin[0].bias) @ lin[1].weight.T + lin[1].bias
    var = F.softplus(vid.alpha["0"].detach()) + 1e-5
    assert var.shape == (8,)
    # written with plain arithmetic over the D = 8 teacher features
    ref = (-(0.5 * var.log() + (t - mu) ** 2 / (2 * var)).sum(1) - 8 / 2 * LOG_2PI).detach()
    lp = trace.nodes["vid.0"]["fn"].log_prob(t)
    torch.testing.assert_close(lp, ref, rtol=1e-5, atol=1e-4)
    # VID.log_factor is the same density (pair weight 1) and `last` reports its batch mean
    torch.testing.assert_close(vid.log_factor(None, s_feats, None, t_feats).detach(), ref, rtol=1e-5, atol=1e-4)
    vals = obj.step_metrics()
    assert float(vals["distill/vid/pair0/log_q"]) == pytest.approx(float(ref.mean()), rel=1e-5)
    assert float(vals["distill/vid/loss"]) == pytest.approx(-float(ref.mean()), rel=1e-5)


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
    mu = (torch.relu(s @ lin[0].weight.T + lin[0].bias) @ lin[1].weight.T + lin[1].bias).reshape(8, 6, 12)
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


# ----------------------------------------------------------------------------- 3. PKT
def _pkt_cond_by_hand(rows):
    n = len(rows)
    out = []
    for i in range(n):
        k = []
        for j in range(n):
            if i == j:
                k.append(0.0)
                continue
            a, b = rows[i], rows[j]
            cos = sum(u * v for u, v in zip(a, b)) / (math.sqrt(sum(u * u for u in a)) * math.sqrt(sum(v * v for v in b)))
            k.append((cos + 1) / 2)
        total = sum(k)
        out.append([v / total for v in k])
    return out


def test_pkt_hand_worked_three_examples():
    t_rows = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    s_rows = [[1.0, 0.0, 0.0], [1.0, 2.0, 0.0], [0.0, 1.0, 3.0]]
    p = _pkt_cond_by_hand(t_rows)
    q = _pkt_cond_by_hand(s_rows)
    # worked values of the teacher's first row: K = (0, 1/2, (1 + 1/sqrt 2)/2), normalized
    k13 = (1 + 1 / math.sqrt(2)) / 2
    assert p[0] == pytest.approx([0.0, 0.5 / (0.5 + k13), k13 / (0.5 + k13)])
    ref = [-sum(p[i][j] * math.log(p[i][j] / q[i][j]) for j in range(3) if j != i) for i in range(3)]
    pkt = PKT(nn.Identity(), "s", "t")
    lf = pkt.log_factor(None, {"s": torch.tensor(s_rows)}, None, {"t": torch.tensor(t_rows)})
    assert lf.shape == (3,)
    assert lf.tolist() == pytest.approx(ref, rel=1e-4, abs=1e-6)
    assert all(v < 0 for v in ref)
    # identical geometry (the same directions, other lengths) gives 0: the kernel is a cosine
    same = pkt.log_factor(None, {"s": 3 * torch.tensor(t_rows)}, None, {"t": torch.tensor(t_rows)})
    torch.testing.assert_close(same, torch.zeros(3), rtol=0, atol=1e-5)
    # maps are flattened per example
    maps = pkt.log_factor(None, {"s": torch.tensor(s_rows).reshape(3, 1, 3)}, None, {"t": torch.tensor(t_rows).reshape(3, 2, 1)})
    torch.testing.assert_close(maps, lf)
    assert pkt.name == "pkt.s"


# ----------------------------------------------------------------------------- 4. Hint
def test_hint_is_minus_mean_squared_error_of_the_projection():
    x, _ = conv_data(8)
    student = bd.BNN(tiny_conv1d(length=12, channels=4, seed=2), dataset_size=8)
    teacher = conv_teacher()
    hint = Hint(teacher, {"2": "1", "4": "3"})  # a map pair (pooled 12 -> 6) and a vector pair
    obj = DistillObjective(student, [hint])
    obj.setup(x)
    with FeatureTaps(student.net, ["1", "3"]) as taps:
        student(x)
    s_feats = dict(taps.features)
    _, t_feats = teacher_features(teacher, x, ["2", "4"])
    conv, lin = hint.proj["0"].net, hint.proj["1"].net
    assert isinstance(conv, nn.Conv1d) and conv.kernel_size == (1,) and (conv.in_channels, conv.out_channels) == (4, 6)
    assert isinstance(lin, nn.Linear) and (lin.in_features, lin.out_features) == (3, 3)
    pooled = s_feats["1"].reshape(8, 4, 6, 2).mean(-1)
    pred_map = torch.einsum("oc,bcl->bol", conv.weight[:, :, 0], pooled) + conv.bias[:, None]
    pred_vec = s_feats["3"] @ lin.weight.T + lin.bias
    ref = -((pred_map - t_feats["2"]) ** 2).mean((1, 2)) - ((pred_vec - t_feats["4"]) ** 2).mean(1)
    lf = hint.log_factor(None, s_feats, None, t_feats)
    torch.testing.assert_close(lf, ref, rtol=1e-5, atol=1e-6)
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


# ----------------------------------------------------------------------------- 5. gradients
def test_gradients_reach_regressors_projections_and_student():
    x, y = toy_classification(8)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=32)
    teacher = bnn_teacher()
    vid = VID(teacher, {"1": "1"})
    hint = Hint(teacher, {"2": "1"})
    kd = KD(teacher, weight=0.5)
    obj = DistillObjective(student, [kd, vid, hint])
    obj.setup(x)
    elbo = MeanFieldELBO()
    loss = elbo.differentiable_loss(obj.model, obj.guide, x, y)
    loss.backward()
    named = dict(obj.terms.named_parameters())
    assert any(k.startswith("1.mu.0") for k in named) and "1.alpha.0" in named and any(k.startswith("2.proj.0") for k in named)
    for name, p in named.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    for p in (student.loc, student.rho):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert teacher.loc.grad is None and teacher.rho.grad is None  # the teacher stays fixed

    # on an unlabelled batch only the terms (and the KL) act: their gradient reaches the student
    student.zero_grad()
    kl_grad = torch.autograd.grad(student.kl(), student.loc)[0]
    pyro.set_rng_seed(0)
    loss_t = elbo.differentiable_loss(obj.model, obj.guide, x, None)
    (g,) = torch.autograd.grad(loss_t, student.loc)
    assert (g - kl_grad).abs().max() > 1e-4


# ----------------------------------------------------------------------------- 6. feature taps
# (FeatureTaps itself: tests/bnn/test_taps.py)
@pytest.mark.parametrize("side", ["student", "teacher"])
def test_distill_objective_rejects_wrong_paths_before_training(side):
    x, y = toy_classification(16)
    teacher = tiny_mlp(hidden=8, seed=1)
    pairs = {"1": "features.9"} if side == "student" else {"features.9": "1"}
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=16)
    with pytest.raises(KeyError, match=rf"{side} has no module 'features.9'.*0, 1, 2"):
        DistillObjective(student, [VID(teacher, pairs)])
    with pytest.raises(KeyError, match="features.9"):
        DistillObjective(student, [Hint(teacher, pairs)])
    before = student.loc.detach().clone()
    with pytest.raises(KeyError, match=rf"{side} has no module 'features.9'"):
        bd.fit(student, (x, y), epochs=1, batch_size=8, progress=False, distill=[VID(teacher, pairs)])
    assert torch.equal(student.loc, before)
    with pytest.raises(TypeError, match="distill= expects"):
        DistillObjective(student, [nn.Linear(2, 2)])


# ----------------------------------------------------------------------------- 7. composition
def _compose(device: str):
    n, b, temp, a, lam = 48, 12, 2.0, 0.4, 0.7
    x, y = toy_classification(n)
    x, y = x.to(device), y.to(device)
    teacher = bnn_teacher(seed=1, hidden=6).to(device)
    q_t = teacher.posterior()
    student = bd.BNN(tiny_mlp(seed=2), prior=bd.priors.TeacherPosterior(q_t, scale="posterior"), dataset_size=n).to(device)
    randomize_posterior(student, seed=5, scale_range=(0.05, 0.3))
    kd, vid = KD(teacher, temperature=temp, weight=a), VID(teacher, {"1": "1"}, weight=lam)
    obj = DistillObjective(student, [kd, vid])
    xb, yb = x[:b], y[:b]
    obj.setup(xb)
    obj.terms.to(device)
    with torch.no_grad():
        vid.alpha["0"].copy_(torch.linspace(-0.5, 1.5, 6, device=device))

    pyro.set_rng_seed(11)
    loss = MeanFieldELBO().differentiable_loss(obj.model, obj.guide, xb, yb)
    pyro.set_rng_seed(11)
    guide_trace = poutine.trace(obj.guide).get_trace(xb, yb)
    out, s_feats = student_features(student, xb, guide_trace, ["1"])
    t_out, t_feats = teacher_features(teacher, xb, ["1"])
    scale = n / b
    with torch.no_grad():
        ll = (1 - a) * scale * td.Categorical(logits=out).log_prob(yb).sum()
        kd_lp = a * scale * (-(temp**2) * td.kl_divergence(td.Categorical(logits=t_out / temp), td.Categorical(logits=out / temp))).sum()
        lin = [m for m in vid.mu["0"].net if isinstance(m, nn.Linear)]
        mu = torch.relu(s_feats["1"] @ lin[0].weight.T + lin[0].bias) @ lin[1].weight.T + lin[1].bias
        var = F.softplus(vid.alpha["0"]) + 1e-5
        vid_lp = lam * scale * hand_gauss_logq(t_feats["1"], mu, var).sum()
        q_s = student.posterior()
        kl = sum(
            td.kl_divergence(td.Normal(q_s.locs[k].double(), q_s.scales[k].double()), td.Normal(q_t.locs[k].double(), q_t.scales[k].double())).sum()
            for k in student.site_names
        )
    expected = -(float(ll) + float(kd_lp) + float(vid_lp)) + float(kl)
    assert loss.device.type == device
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(kl) > 1.0  # the student is not the teacher: the KL term is really there

    terms = [KD(teacher, temperature=temp, weight=a), VID(teacher, {"1": "1"}, weight=lam)]
    result = bd.fit(student, (x, y), epochs=2, batch_size=b, lr=0.01, seed=3, progress=False, distill=terms)
    for row in result.history:
        for k in ("elbo", "nll", "kl", "distill/kd/loss", "distill/vid/loss", "distill/vid/pair0/log_q", "distill/vid/pair0/mi_bound"):
            assert math.isfinite(row[k]), k
        assert row["distill/vid/loss"] == pytest.approx(-lam * row["distill/vid/pair0/log_q"], rel=1e-5)
    probe = x[:1024]  # fit fits H(t) on up to 1024 training inputs
    _, tf = teacher_features(teacher, probe, ["1"])
    h_t = gaussian_entropy(tf["1"])
    last = result.history[-1]
    assert last["distill/vid/pair0/mi_bound"] == pytest.approx(h_t + last["distill/vid/pair0/log_q"], rel=1e-6, abs=1e-6)
    assert all(p.device.type == device for p in terms[1].parameters())
    # the terms' own parameters are trained with q: the variances left their initial 5.0
    assert (terms[1].variance(0) - 5.0).abs().max() > 1e-3


def test_teacher_prior_and_terms_in_one_elbo():
    _compose("cpu")


@needs_cuda
def test_teacher_prior_and_terms_in_one_elbo_cuda():
    _compose("cuda")


# ----------------------------------------------------------------------------- 8. transfer and resume
def test_transfer_batch_has_no_likelihood_and_its_own_plate_size():
    n, n_t, b = 64, 40, 8
    x, y = toy_classification(b)
    g = torch.Generator().manual_seed(9)
    xt = torch.randn(b, 4, generator=g)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=n)
    obj = DistillObjective(student, [KD(tiny_mlp(hidden=8, seed=1), weight=0.5)])
    trace = poutine.trace(obj.model).get_trace(xt, None, n_t)
    assert "obs" not in trace.nodes
    assert trace.nodes["distill"]["fn"].size == n_t
    assert trace.nodes["distill.kd"]["scale"] == pytest.approx(n_t / b)
    # a labelled batch sees the labelled set's size
    trace_l = poutine.trace(obj.model).get_trace(x, y)
    assert "obs" in trace_l.nodes and trace_l.nodes["distill"]["fn"].size == n


def test_fit_with_transfer_uses_the_transfer_set_size():
    n, n_t, b = 32, 40, 8
    x, y = toy_classification(n)
    xt = torch.randn(n_t, 4, generator=torch.Generator().manual_seed(9))
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=n)
    spy = PlateSpy()
    with spy:
        result = bd.fit(student, (x, y), epochs=2, batch_size=b, lr=0.01, seed=1, progress=False,
                        distill=[KD(tiny_mlp(hidden=8, seed=1), weight=0.5)], transfer=xt)
    steps = 2 * (n // b)
    assert sorted(set(spy.sizes)) == [(n, b), (n_t, b)]
    assert spy.sizes.count((n_t, b)) == spy.sizes.count((n, b)) == steps
    assert spy.obs_seen == steps  # the likelihood only on labelled batches
    assert all(math.isfinite(r["distill/kd/loss"]) and math.isfinite(r["elbo"]) for r in result.history)
    # term columns average over every call (labelled and transfer batches): with a student that
    # practically does not move (tiny lr, tiny posterior scale) the KD column is the mean of the
    # KD losses over the labelled set and over the transfer set (one full pass of each per epoch)
    teacher = tiny_mlp(hidden=8, seed=1)
    still = bd.BNN(tiny_mlp(seed=2), dataset_size=n, init_scale=1e-7)
    xt32 = xt[:32]
    r = bd.fit(still, (x, y), epochs=1, batch_size=b, lr=1e-10, seed=1, progress=False,
               distill=[KD(teacher, temperature=4.0, weight=0.5)], transfer=xt32)
    with torch.no_grad():
        def kd_loss(inp):
            zs, zt = still(inp), teacher(inp)
            return (16.0 * td.kl_divergence(td.Categorical(logits=zt / 4), td.Categorical(logits=zs / 4))).mean()

        expected = 0.5 * (float(kd_loss(x)) + float(kd_loss(xt32)))
    assert r.history[0]["distill/kd/loss"] == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="transfer="):
        bd.fit(bd.BNN(tiny_mlp(seed=2), dataset_size=n), (x, y), epochs=1, progress=False, transfer=xt)


def _resume_terms(teacher):
    return [KD(teacher, weight=0.5, teacher_mode="sample"), VID(teacher, {"1": "1"}, weight=0.3), Hint(teacher, {"2": "1"}, weight=0.1)]


def test_resume_with_distill_terms_is_bit_identical(tmp_path):
    x, y = toy_classification(32)
    xt = torch.randn(24, 4, generator=torch.Generator().manual_seed(9))
    teacher = bnn_teacher()
    kw = dict(batch_size=8, lr=0.01, seed=7, progress=False, transfer=xt)

    def run(epochs, **extra):
        student = bd.BNN(tiny_mlp(seed=2), dataset_size=32)
        terms = _resume_terms(teacher)
        return student, terms, bd.fit(student, (x, y), epochs=epochs, distill=terms, **kw, **extra)

    straight, t_straight, r_straight = run(4)
    _, _, r_first = run(2, checkpoint_dir=tmp_path)
    resumed, t_resumed, r_resumed = run(4, checkpoint_dir=tmp_path, resume=True, extend=True)
    assert torch.equal(resumed.loc, straight.loc) and torch.equal(resumed.rho, straight.rho)
    for a, b in zip(t_straight, t_resumed):
        assert states_equal(a.state_dict(), b.state_dict())
    assert without_time(r_resumed.history) == without_time(r_straight.history)
    assert r_resumed.history[:2] == r_first.history
    assert (t_straight[1].variance(0) - 5.0).abs().max() > 1e-3  # VID's variances were trained
    assert {"distill/kd/loss", "distill/vid/loss", "distill/hint/loss", "distill/vid/pair0/log_q", "distill/vid/pair0/mi_bound"} <= set(r_straight.history[-1])
    # the run is not trivially constant
    assert r_straight.history[0]["loss"] != r_straight.history[-1]["loss"]


def test_term_weights_changed_by_a_callback_resume_exactly(tmp_path):
    """A term's weight is extra state: a schedule applied by a callback is checkpointed, and a
    resumed run continues from the scheduled weight, not the constructor's."""
    x, y = toy_classification(32)
    teacher = bnn_teacher()

    def run(epochs, **extra):
        student = bd.BNN(tiny_mlp(seed=2), dataset_size=32)
        kd = KD(teacher, weight=0.8)
        halve = lambda record, bnn: setattr(kd, "weight", kd.weight / 2)  # noqa: E731
        bd.fit(student, (x, y), epochs=epochs, distill=[kd], callbacks=[halve], batch_size=8, lr=0.01,
               seed=7, progress=False, **extra)
        return student, kd

    kd = KD(teacher, weight=0.3)
    assert kd.state_dict()["_extra_state"] == {"weight": 0.3}
    obj = DistillObjective(bd.BNN(tiny_mlp(seed=2), dataset_size=32), [kd])
    kd.weight = 0.6  # the likelihood's 1 - a follows a changed weight
    assert kd.likelihood_weight == obj.likelihood_weight == pytest.approx(0.4)
    straight, kd_straight = run(4)
    run(2, checkpoint_dir=tmp_path)
    resumed, kd_resumed = run(4, checkpoint_dir=tmp_path, resume=True, extend=True)
    assert kd_resumed.weight == kd_straight.weight == pytest.approx(0.8 / 16)
    assert torch.equal(resumed.loc, straight.loc) and torch.equal(resumed.rho, straight.rho)


# ----------------------------------------------------------------------------- 9. teacher modes
def test_teacher_features_modes_and_plain_modules():
    x, _ = toy_classification(6)
    teacher = bnn_teacher()
    teacher.train()
    mean = TeacherFeatures(teacher, "mean")
    o1, f1 = mean(x, ["1"])
    o2, f2 = mean(x, ["1"])
    assert torch.equal(o1, o2) and torch.equal(f1["1"], f2["1"])
    torch.testing.assert_close(o1, teacher(x).detach())
    assert not o1.requires_grad and not f1["1"].requires_grad
    assert teacher.training  # the mode is restored
    sample = TeacherFeatures(teacher, "sample")
    s1, g1 = sample(x, ["1"])
    s2, g2 = sample(x, ["1"])
    assert not torch.allclose(s1, s2) and not torch.allclose(g1["1"], g2["1"])
    assert not torch.allclose(s1, o1)
    net = tiny_mlp(hidden=8, seed=1)
    plain = TeacherFeatures(net, "sample")  # a plain module has no posterior: always its forward
    p1, h1 = plain(x, ["0", "1"])
    torch.testing.assert_close(p1, net(x))
    torch.testing.assert_close(h1["1"], torch.relu(net[0](x)))
    assert torch.equal(plain(x, ["1"])[0], p1)
    with pytest.raises(ValueError, match="'mean' or 'sample'"):
        TeacherFeatures(teacher, "median")


def test_terms_sharing_a_teacher_keep_their_own_modes():
    """KD with the posterior-mean teacher and VID with sampled teachers, on the same teacher object:
    each term must see its own mode (a shared teacher pass would hand VID the mean features)."""
    x, y = toy_classification(8)
    teacher = bnn_teacher()
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=8)
    kd, vid = KD(teacher, teacher_mode="mean"), VID(teacher, {"1": "1"}, teacher_mode="sample")
    obj = DistillObjective(student, [kd, vid])
    obj.setup(x)
    t1 = poutine.trace(obj.model).get_trace(x, y)
    t2 = poutine.trace(obj.model).get_trace(x, y)
    assert not torch.equal(t1.nodes["vid.0"]["value"], t2.nodes["vid.0"]["value"])
    _, mean_feats = teacher_features(teacher, x, ["1"])
    assert not torch.allclose(t1.nodes["vid.0"]["value"], mean_feats["1"])
    # KD's factor uses the mean teacher in both calls
    for tr in (t1, t2):
        s_out = tr.nodes["_RETURN"]["value"]
        ref = kd.weight * kd.log_factor(s_out, {}, teacher(x).detach(), {})
        torch.testing.assert_close(tr.nodes["distill.kd"]["fn"].log_factor, ref)


def test_two_vid_terms_get_distinct_sites_and_columns():
    x, y = toy_classification(32)
    teacher = bnn_teacher(seed=1, hidden=6)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=32)
    a, b = VID(teacher, {"1": "1"}), VID(teacher, {"0": "0"})
    result = bd.fit(student, (x, y), epochs=1, batch_size=16, progress=False, distill=[a, b])
    assert {a.name, b.name} == {"vid", "vid1"}
    row = result.history[-1]
    assert "distill/vid/pair0/mi_bound" in row and "distill/vid1/pair0/mi_bound" in row


def test_transfer_batches_do_not_count_the_kl_again():
    x, y = toy_classification(32)
    teacher = bnn_teacher(seed=1, hidden=6)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=32)
    xt = torch.randn(64, x.shape[1])
    # a vanishing learning rate keeps q fixed, so the epoch-end KL is the KL of every step
    result = bd.fit(student, (x, y), epochs=1, batch_size=16, lr=1e-12, kl_weight=0.5,
                    progress=False, distill=[KD(teacher)], transfer=xt)
    row = result.history[-1]
    torch.testing.assert_close(row["loss"] - row["nll"], 0.5 * row["kl"], rtol=1e-4, atol=1e-3)


def test_plain_pyro_svi_trains_the_terms_parameters():
    """With pyro.infer.SVI (no bd.fit) the model registers the terms' parameters in the param
    store, so SVI's optimizer updates the VID regressor and variances and the Hint projection."""
    pyro.clear_param_store()
    x, y = toy_classification(16)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=16)
    teacher = bnn_teacher()
    obj = DistillObjective(student, [VID(teacher, {"1": "1"}), Hint(teacher, {"2": "1"})])
    obj.setup(x)
    before = {k: v.detach().clone() for k, v in obj.terms.named_parameters()}
    teacher_before = (teacher.loc.detach().clone(), teacher.rho.detach().clone())
    svi = pyro.infer.SVI(obj.model, obj.guide, pyro.optim.Adam({"lr": 0.01}), loss=MeanFieldELBO())
    for _ in range(3):
        svi.step(x, y)
    store = pyro.get_param_store()
    prefix = f"{student.pyro_name}.distill$$$"
    registered = {k[len(prefix):] for k in store.keys() if k.startswith(prefix)}
    assert registered == set(before)
    for k, p in obj.terms.named_parameters():
        assert store[prefix + k] is p  # the store holds the module's own tensors
        assert not torch.equal(p.detach(), before[k]), k  # and SVI moved them
    assert torch.equal(teacher.loc, teacher_before[0]) and torch.equal(teacher.rho, teacher_before[1])
    pyro.clear_param_store()
