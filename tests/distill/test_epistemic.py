"""bayesdistill.distill.epistemic.PredictiveKD: KD against the teacher's posterior predictive."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

import bayesdistill as bd
from _helpers import randomize_posterior, tiny_mlp, toy_classification
from bayesdistill.distill import KD, DistillObjective, DistillTerm, TeacherFeatures
from bayesdistill.distill.epistemic import PredictiveKD
from bayesdistill.infer import Batch


def bnn_teacher(seed: int = 1) -> bd.BNN:
    teacher = bd.BNN(tiny_mlp(hidden=8, seed=seed))
    randomize_posterior(teacher, seed=seed, scale_range=(0.2, 0.8))
    return teacher


def test_reference_is_the_tempered_predictive_of_s_draws():
    teacher = bnn_teacher()
    x, _ = toy_classification(10)
    term = PredictiveKD(teacher, temperature=2.0, num_samples=5)
    assert isinstance(term, DistillTerm)
    torch.manual_seed(3)
    log_p, feats = term.reference(Batch(x), [])
    torch.manual_seed(3)
    with torch.no_grad():
        w = teacher.sample_weights(5)
        out = torch.stack([teacher.forward_with(x, {k: v[i] for k, v in w.items()}) for i in range(5)])
    ref = torch.softmax(out / 2.0, -1).mean(0)
    torch.testing.assert_close(log_p.exp(), ref, rtol=1e-5, atol=1e-6)
    assert feats == {} and log_p.shape == (10, 3)
    # the predictive is flatter than the posterior-mean network's answer on average (more entropy)
    h = lambda p: -(p * p.log()).sum(-1)  # noqa: E731
    with torch.no_grad():
        mean_net = torch.softmax(teacher(x) / 2.0, -1)
    assert float(h(ref).mean()) > float(h(mean_net).mean())


def test_one_draw_is_kd_with_a_sampled_teacher():
    teacher = bnn_teacher()
    x, _ = toy_classification(6)
    torch.manual_seed(0)
    log_p, _ = PredictiveKD(teacher, temperature=1.0, num_samples=1).reference(Batch(x), [])
    torch.manual_seed(0)
    out, _ = TeacherFeatures(teacher, "sample")(x, [])
    torch.testing.assert_close(log_p, F.log_softmax(out, -1), rtol=1e-5, atol=1e-6)


def test_log_factor_and_a_deterministic_teacher_equal_kd():
    net = tiny_mlp(hidden=8, seed=1)
    x, _ = toy_classification(7)
    zs = 2 * torch.randn(7, 3, generator=torch.Generator().manual_seed(1))
    term, kd = PredictiveKD(net, temperature=3.0, weight=0.4), KD(net, temperature=3.0, weight=0.4)
    log_p, _ = term.reference(Batch(x), [])
    with torch.no_grad():
        zt = net(x)
    torch.testing.assert_close(term.log_factor(zs, {}, log_p, {}), kd.log_factor(zs, {}, zt, {}), rtol=1e-5, atol=1e-6)
    # zero where the student's tempered softmax is the target
    assert torch.allclose(term.log_factor(3.0 * log_p, {}, log_p, {}), torch.zeros(7), atol=1e-5)
    assert (term.log_factor(zs, {}, log_p, {}) <= 0).all()
    assert term.likelihood_weight == pytest.approx(0.6)
    with pytest.raises(ValueError, match="same shape"):
        term.log_factor(zs[:, :2], {}, log_p, {})


def test_in_the_objective_and_fit():
    n, b, a = 64, 8, 0.7
    x, y = toy_classification(b)
    teacher = bnn_teacher()
    student = bd.BNN(tiny_mlp(seed=2), dataset_size=n)
    term = PredictiveKD(teacher, weight=a, num_samples=4)
    obj = DistillObjective(student, [term, KD(teacher, weight=0.0)])
    trace = poutine.trace(obj.model).get_trace(x, y)
    assert trace.nodes["obs"]["scale"] == pytest.approx((1 - a) * n / b)
    assert "distill.predictive_kd" in trace.nodes
    assert term.reference_key() != obj.terms[1].reference_key()  # no shared pass with KD's mean teacher
    assert set(obj.step_metrics()) == {"distill/predictive_kd/loss", "distill/kd/loss"}
    xs, ys = toy_classification(64)
    res = bd.fit(bd.BNN(tiny_mlp(seed=2), dataset_size=64), (xs, ys), epochs=2, progress=False,
                 distill=[PredictiveKD(teacher, num_samples=3)], transfer=torch.randn(40, 4))
    assert all(math.isfinite(r["distill/predictive_kd/loss"]) for r in res.history)


@pytest.mark.parametrize("kwargs, err", [({"weight": 1.5}, ValueError), ({"temperature": 0.0}, ValueError),
                                         ({"num_samples": 0}, ValueError), ({"weight": "x"}, TypeError)])
def test_bad_arguments(kwargs, err):
    with pytest.raises(err):
        PredictiveKD(nn.Identity(), **kwargs)
