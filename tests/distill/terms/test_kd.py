"""KD (Hinton knowledge distillation) in the student's Pyro objective: the closed form, the scales
of the likelihood and of the term's site, transfer batches, and a weight schedule that resumes."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.distributions as td
from pyro import poutine
from torch import nn

import bayesdistill as bd
from _distill_helpers import PlateSpy, bnn_teacher
from _helpers import tiny_mlp, toy_classification
from bayesdistill.distill import KD, PKT, DistillObjective


def test_kd_log_factor_is_the_hinton_closed_form():
    g = torch.Generator().manual_seed(0)
    zs, zt = 3 * torch.randn(5, 4, generator=g), 3 * torch.randn(5, 4, generator=g)
    temp = 2.5
    kd = KD(nn.Identity(), temperature=temp, weight=0.3, calibration="none")
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
    assert not torch.allclose(KD(nn.Identity(), temperature=1.0, calibration="none").log_factor(zs, {}, zt, {}), lf)
    with pytest.raises(ValueError, match="same shape"):
        kd.log_factor(zs, {}, zt[:, :3], {})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        KD(nn.Identity(), weight=1.5)
    with pytest.raises(ValueError, match="temperature"):
        KD(nn.Identity(), temperature=0.0)
    assert kd.name == "kd" and KD(nn.Identity(), name="soft").name == "soft"


@pytest.mark.parametrize("a", [0.25, 0.9])
def test_kd_weight_scales_likelihood_and_factor_sites(a):
    n, b, temp = 64, 8, 3.0
    x, y = toy_classification(b)
    teacher = tiny_mlp(hidden=8, seed=1)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=n)
    kd = KD(teacher, temperature=temp, weight=a, calibration="none")
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
    # KD's reported loss is the batch mean of -log_factor (before the weight), its only metric
    metrics = obj.step_metrics()
    assert set(metrics) == {"distill/kd/loss"}
    assert float(metrics["distill/kd/loss"]) == pytest.approx(-float(ref.mean()), rel=1e-5)


def test_without_kd_the_likelihood_is_not_rescaled():
    n, b = 64, 8
    x, y = toy_classification(b)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=n)
    obj = DistillObjective(student, [PKT(tiny_mlp(hidden=8, seed=1), {"1": "1"})])
    trace = poutine.trace(obj.model).get_trace(x, y)
    assert obj.likelihood_weight == 1.0 and trace.nodes["obs"]["scale"] == pytest.approx(n / b)


# ----------------------------------------------------------------------------- transfer batches
def test_transfer_batch_has_no_likelihood_and_its_own_plate_size():
    n, n_t, b = 64, 40, 8
    x, y = toy_classification(b)
    g = torch.Generator().manual_seed(9)
    xt = torch.randn(b, 4, generator=g)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=n)
    obj = DistillObjective(student, [KD(tiny_mlp(hidden=8, seed=1), weight=0.5, calibration="none")])
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
    kd = KD(teacher, temperature=4.0, weight=0.5, calibration="temperature")
    r = bd.fit(still, (x, y), epochs=1, batch_size=b, lr=1e-10, seed=1, progress=False, distill=[kd], transfer=xt32)
    with torch.no_grad():
        # the teacher's soft labels are temperature-scaled on the labelled probe batch (all 32 here)
        tau = bd.diagnostics.fit_temperature(teacher(x), y)
        assert kd.teacher_temperature == pytest.approx(tau, rel=1e-6) and tau != pytest.approx(1.0, abs=1e-3)

        def kd_loss(inp):
            zs, zt = still(inp), teacher(inp)
            return (16.0 * td.kl_divergence(td.Categorical(logits=zt / (4 * tau)), td.Categorical(logits=zs / 4))).mean()

        expected = 0.5 * (float(kd_loss(x)) + float(kd_loss(xt32)))
    assert r.history[0]["distill/kd/loss"] == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="transfer="):
        bd.fit(bd.BNN(tiny_mlp(seed=2), dataset_size=n), (x, y), epochs=1, progress=False, transfer=xt)


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


# ----------------------------------------------------------------------------- a weight schedule
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
    assert kd.state_dict()["_extra_state"] == {"weight": 0.3, "teacher_temperature": 1.0, "calibrated": True}
    obj = DistillObjective(bd.BNN(tiny_mlp(seed=2), dataset_size=32), [kd])
    kd.weight = 0.6  # the likelihood's 1 - a follows a changed weight
    assert kd.likelihood_weight == obj.likelihood_weight == pytest.approx(0.4)
    straight, kd_straight = run(4)
    run(2, checkpoint_dir=tmp_path)
    resumed, kd_resumed = run(4, checkpoint_dir=tmp_path, resume=True, extend=True)
    assert kd_resumed.weight == kd_straight.weight == pytest.approx(0.8 / 16)
    assert torch.equal(resumed.loc, straight.loc) and torch.equal(resumed.rho, straight.rho)


def test_kd_defaults_are_one_label_shared_with_the_teachers_soft_label():
    """At its defaults (T = 1, a = 0.5) KD's log-factor is the student's expected log-likelihood of
    a label drawn from the teacher's predictive distribution, plus the teacher's entropy
    (torch.distributions), and the likelihood keeps 1 - a: one label's worth per example."""
    kd = KD(nn.Identity(), calibration="none")
    assert (kd.temperature, kd.weight, kd.likelihood_weight) == (1.0, 0.5, 0.5)
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(6, 4, generator=g), 3 * torch.randn(6, 4, generator=g)
    p_t, p_s = torch.distributions.Categorical(logits=zt), torch.distributions.Categorical(logits=zs)
    expected = (p_t.probs * p_s.logits).sum(-1) + p_t.entropy()
    torch.testing.assert_close(kd.log_factor(zs, {}, zt, {}), expected)


def _tempered_labels(n: int, true_temperature: float, seed: int = 0):
    """Inputs, the logits of an nn.Linear teacher and labels drawn from softmax(logits / T*)."""
    g = torch.Generator().manual_seed(seed)
    teacher = nn.Linear(4, 3)
    with torch.no_grad():
        teacher.weight.copy_(3 * torch.randn(3, 4, generator=g))
        teacher.bias.zero_()
    x = torch.randn(n, 4, generator=g)
    with torch.no_grad():
        z = teacher(x)
    y = torch.distributions.Categorical(logits=z / true_temperature).sample()
    return teacher, x, y, z


def test_kd_calibrates_the_teachers_soft_labels_on_the_labelled_probe_batch():
    """calibration="temperature": tau = fit_temperature(teacher logits, labels) on the probe batch, and the soft
    label is softmax(z_t / (tau T)) (closed form against torch.distributions)."""
    torch.manual_seed(0)
    teacher, x, y, z = _tempered_labels(2000, true_temperature=2.5)
    student = bd.BNN(nn.Linear(4, 3), dataset_size=len(x))
    assert KD(teacher).calibration == "none"  # the default: Hinton's soft labels
    kd = KD(teacher, temperature=2.0, calibration="temperature")
    assert kd.teacher_temperature == 1.0
    DistillObjective(student, [kd]).setup(bd.infer.Batch(x, y))
    tau = bd.diagnostics.fit_temperature(z, y)
    assert kd.teacher_temperature == pytest.approx(tau, rel=1e-9)
    assert kd.teacher_temperature == pytest.approx(2.5, rel=0.15)  # the labels' own temperature, recovered
    zs = torch.randn(6, 3)
    p_t, p_s = td.Categorical(logits=z[:6] / (2.0 * tau)), td.Categorical(logits=zs / 2.0)
    torch.testing.assert_close(kd.log_factor(zs, {}, z[:6], {}), -4.0 * td.kl_divergence(p_t, p_s))
    # the fitted temperature is state: it survives a state dict round trip (a resumed run)
    again = KD(teacher, temperature=2.0, calibration="temperature")
    again.load_state_dict(kd.state_dict())
    assert again.teacher_temperature == kd.teacher_temperature


def test_kd_without_calibration_or_labels_keeps_the_teacher_as_it_is():
    teacher, x, y, z = _tempered_labels(200, true_temperature=2.5)
    student = bd.BNN(nn.Linear(4, 3), dataset_size=len(x))
    plain = KD(teacher, calibration="none")
    DistillObjective(student, [plain]).setup(bd.infer.Batch(x, y))
    assert plain.teacher_temperature == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: nothing was asked to be calibrated
        plain.log_factor(z[:3], {}, z[:3], {})
    # inputs only: no labels to calibrate on; the first use says so, once
    unlabelled = KD(teacher, calibration="temperature")
    DistillObjective(student, [unlabelled]).setup(x)
    assert unlabelled.teacher_temperature == 1.0
    with pytest.warns(UserWarning, match="not calibrated"):
        unlabelled.log_factor(z[:3], {}, z[:3], {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unlabelled.log_factor(z[:3], {}, z[:3], {})
    # labels that are not class indices: a warning naming them, the teacher as it is
    odd = KD(teacher, calibration="temperature")
    with pytest.warns(UserWarning, match=r"labels of shape \(200,\) and dtype torch.float32"):
        DistillObjective(student, [odd]).setup(bd.infer.Batch(x, y.float()))
    assert odd.teacher_temperature == 1.0
    with pytest.raises(ValueError, match="calibration must be one of 'temperature', 'none', got 'platt'"):
        KD(teacher, calibration="platt")
    # a state saved before the option existed (the weight only) loads, the teacher uncalibrated
    old = KD(teacher)
    old.set_extra_state({"weight": 0.25})
    assert (old.weight, old.teacher_temperature) == (0.25, 1.0)


def test_fit_calibrates_kd_on_the_first_training_examples():  # calibration="temperature"
    """bd.fit sets up the objective on the first (up to 1024) training examples, labels included."""
    teacher, x, y, z = _tempered_labels(96, true_temperature=0.5, seed=3)
    kd = KD(teacher, calibration="temperature")
    bd.fit(bd.BNN(nn.Linear(4, 3), dataset_size=len(x)), (x, y), epochs=1, batch_size=32, progress=False,
           seed=0, distill=[kd])
    assert kd.teacher_temperature == pytest.approx(bd.diagnostics.fit_temperature(z, y), rel=1e-9)
    assert kd.teacher_temperature < 1.0  # labels sharper than the teacher: its soft labels are sharpened


@pytest.mark.parametrize("a", [0.25, 0.9])
def test_kd_likelihood_keep_leaves_the_label_whole_and_adds_the_factor(a):
    """``likelihood="keep"``: the label's site keeps its full plate scale n / b while the KD site
    carries a times its log-factor (CE + a KD); "share" (the default) scales the label by 1 - a.
    The two objectives differ by exactly a times the label's log-likelihood."""
    n, b = 64, 8
    x, y = toy_classification(b)
    teacher = tiny_mlp(hidden=8, seed=1)
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=n)
    keep = KD(teacher, weight=a, calibration="none", likelihood="keep")
    share = KD(teacher, weight=a, calibration="none")
    assert (keep.likelihood_weight, share.likelihood_weight, share.likelihood) == (1.0, pytest.approx(1 - a), "share")
    traces = {}
    for name, term in (("keep", keep), ("share", share)):
        obj = DistillObjective(student, [term])
        assert obj.likelihood_weight == pytest.approx(term.likelihood_weight)
        torch.manual_seed(0)
        trace = poutine.trace(obj.model).get_trace(x, y)
        trace.compute_log_prob()
        traces[name] = trace
    assert traces["keep"].nodes["obs"]["scale"] == pytest.approx(n / b)
    assert traces["share"].nodes["obs"]["scale"] == pytest.approx((1 - a) * n / b)
    # the same prior draw in both (torch.manual_seed above): the same network output
    s_out = traces["keep"].nodes["_RETURN"]["value"]
    torch.testing.assert_close(traces["share"].nodes["_RETURN"]["value"], s_out)
    ll = float(td.Categorical(logits=s_out).log_prob(y).sum())  # the label's log-likelihood, by hand
    assert float(traces["keep"].nodes["obs"]["log_prob_sum"]) == pytest.approx(n / b * ll, rel=1e-5)
    assert float(traces["share"].nodes["obs"]["log_prob_sum"]) == pytest.approx((1 - a) * n / b * ll, rel=1e-5)
    # the KD site: a times the Hinton log-factor in both
    ref = -td.kl_divergence(td.Categorical(logits=teacher(x).detach()), td.Categorical(logits=s_out)).sum()
    for name in ("keep", "share"):
        assert float(traces[name].nodes["distill.kd"]["log_prob_sum"]) == pytest.approx(a * float(ref) * n / b, rel=1e-5)
    with pytest.raises(ValueError, match="likelihood must be one of 'share', 'keep', got 'drop'"):
        KD(teacher, likelihood="drop")
    assert bd.distill.get_term("kd").make(teacher, None, likelihood="keep")[0].likelihood == "keep"
