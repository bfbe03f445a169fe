"""The base of the distillation terms: the teacher as the reference (modes, one shared pass),
feature pairs (default pairs, weight mappings), gradients, path checks, the composition of terms
with the teacher-posterior prior in one ELBO, bit-identical resume, and plain Pyro SVI."""

from __future__ import annotations

import math

import pytest
import pyro
import torch
import torch.distributions as td
import torch.nn.functional as F
from pyro import poutine
from torch import nn

import bayesdistill as bd
from _distill_helpers import bnn_teacher, hand_gauss_logq, student_features, teacher_features
from _helpers import randomize_posterior, states_equal, tiny_mlp, toy_classification, without_time
from bayesdistill.distill import KD, PKT, VID, DistillObjective, DistillTerm, Hint, PairTerm, TeacherFeatures
from bayesdistill.distill.terms.vid import gaussian_entropy
from bayesdistill.infer import MeanFieldELBO

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


# ----------------------------------------------------------------------------- gradients
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


# ----------------------------------------------------------------------------- feature paths
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


# ----------------------------------------------------------------------------- composition and resume
def _compose(device: str):
    n, b, temp, a, lam = 48, 12, 2.0, 0.4, 0.7
    x, y = toy_classification(n)
    x, y = x.to(device), y.to(device)
    teacher = bnn_teacher(seed=1, hidden=6).to(device)
    q_t = teacher.posterior()
    student = bd.BNN(tiny_mlp(seed=2), prior=bd.priors.TeacherPosterior(q_t, scale="posterior"), dataset_size=n).to(device)
    randomize_posterior(student, seed=5, scale_range=(0.05, 0.3))
    # VID's exact density (reduction="sum"): the ELBO below adds lam * log q(t | s) by hand
    kd, vid = KD(teacher, temperature=temp, weight=a), VID(teacher, {"1": "1"}, weight=lam, reduction="sum")
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
        # every term's loss is before its weight: VID's is minus its log-density per element (the
        # default reduction; the teacher's feature "1" has D = 6 elements), log_q the exact density
        assert row["distill/vid/loss"] == pytest.approx(-row["distill/vid/pair0/log_q"] / 6, rel=1e-5)
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


def _resume_terms(teacher):
    return [KD(teacher, weight=0.5, teacher_mode="sample"), VID(teacher, {"1": "1"}, weight=0.3), Hint(teacher, {"2": "1"}, weight=0.1),
            PKT(teacher, {"0": "0", "1": "1"}, weight={"0": 0.2, "1": 0.5})]


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
    assert {"distill/kd/loss", "distill/vid/loss", "distill/hint/loss", "distill/vid/pair0/log_q", "distill/vid/pair0/mi_bound",
            "distill/pkt/loss", "distill/pkt/pair0/loss", "distill/pkt/pair1/loss"} <= set(r_straight.history[-1])
    # the run is not trivially constant
    assert r_straight.history[0]["loss"] != r_straight.history[-1]["loss"]


# ----------------------------------------------------------------------------- the teacher as the reference
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


# ----------------------------------------------------------------------------- pairs
@pytest.mark.parametrize("cls", [VID, PKT, Hint])
def test_default_pairs_are_the_last_hidden_layers(cls):
    """Without pairs= a feature term reads the teacher's last hidden layer and the student's
    (bd.bnn.last_hidden_layer), resolved when the objective is built."""
    x, y = toy_classification(16)
    teacher = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=16)
    term = cls(teacher)
    assert term.pairs == {} and term.default_pairs
    obj = DistillObjective(student, [term])
    assert term.pairs == {"3": "1"} and term.teacher_paths == ["3"] and term.student_paths == ["1"]
    assert obj.student_paths == ["1"]
    result = bd.fit(student, (x, y), epochs=1, batch_size=8, progress=False, distill=[cls(teacher)])
    assert f"distill/{term.name}/pair0/loss" in result.history[-1]


def test_default_pairs_need_a_hidden_layer():
    linear = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))  # no activation before the read-out
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=16)
    with pytest.raises(ValueError, match=r"VID: the teacher has no activation module.*pairs=\{teacher_path: student_path\}"):
        DistillObjective(student, [VID(linear)])
    with pytest.raises(ValueError, match="PKT: the student has no activation module"):
        DistillObjective(bd.BNN(nn.Sequential(nn.Linear(4, 3)), dataset_size=16), [PKT(tiny_mlp(seed=1))])
    assert bd.distill.default_pairs(tiny_mlp(seed=1), student) == {"1": "1"}


def test_pair_arguments_are_checked():
    teacher = tiny_mlp(hidden=8, seed=1)
    with pytest.raises(ValueError, match=r"no weight for \['2'\]"):
        Hint(teacher, {"1": "1", "2": "2"}, weight={"1": 1.0})
    with pytest.raises(ValueError, match=r"no pair for \['9'\]"):
        PKT(teacher, {"1": "1"}, weight={"1": 1.0, "9": 2.0})
    with pytest.raises(ValueError, match="weight of pair '1' must be a finite number >= 0"):
        VID(teacher, {"1": "1"}, weight={"1": -1.0})
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        VID(teacher, {"1": "1"}, weight=-0.5)
    with pytest.raises(ValueError, match="pairs is empty"):
        PKT(teacher, {})
    with pytest.raises(TypeError, match="module paths"):
        Hint(teacher, {1: "1"})
    assert issubclass(PKT, PairTerm) and issubclass(PairTerm, DistillTerm)


def test_a_weight_mapping_is_checked_against_the_default_pair():
    teacher = tiny_mlp(hidden=8, seed=1)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=16)
    term = PKT(teacher, weight={"1": 0.5})
    DistillObjective(student, [term])
    assert term.pairs == {"1": "1"} and term.pair_weights == [0.5]
    with pytest.raises(ValueError, match="no weight for"):
        DistillObjective(student, [PKT(teacher, weight={"0": 0.5})])


def test_every_term_reports_its_loss_before_the_weight():
    """loss = batch mean of -log_factor (nats per example), whatever the weight."""
    x, y = toy_classification(8)
    teacher = bnn_teacher()
    losses = {}
    for w in (0.1, 0.7):
        terms = [KD(teacher, weight=w), VID(teacher, {"1": "1"}, weight=w), PKT(teacher, {"1": "1"}, weight=w),
                 Hint(teacher, {"1": "1"}, weight=w)]
        student = bd.BNN(tiny_mlp(seed=2), dataset_size=8)
        obj = DistillObjective(student, terms)
        torch.manual_seed(0)
        obj.setup(x)
        pyro.set_rng_seed(0)
        poutine.trace(obj.model).get_trace(x, y)
        losses[w] = {k: float(v) for k, v in obj.step_metrics().items() if k.endswith("/loss")}
    assert set(losses[0.1]) >= {"distill/kd/loss", "distill/vid/loss", "distill/pkt/loss", "distill/hint/loss"}
    assert losses[0.1] == pytest.approx(losses[0.7], rel=1e-6)
