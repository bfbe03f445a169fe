"""The student from a teacher (distill/student.py) and its aligned teacher prior.

KL values are checked against ``torch.distributions``; the student built in one call against
the same BNN built by hand.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.distributions import Normal as TorchNormal
from torch.distributions import kl_divergence

import bayesdistill as bd
from _align_helpers import (
    TeacherPosterior,
    assert_posteriors_equal,
    make_teacher,
    mlp,
    named_teacher,
    needs_cuda,
    seeded,
    set_bn,
)
from _helpers import states_equal


def _kl_check(plan, q, student_net, device="cpu", **prior_kw):
    s = bd.BNN(student_net, prior=TeacherPosterior(q, plan=plan, **prior_kw), init_scale=0.05).to(device)
    with torch.no_grad():  # init="auto" starts at the prior mean: move away so the loc term counts
        s.loc.add_(0.3 * torch.randn(s.loc.shape, generator=seeded(5)).to(s.loc.device))
    aligned = plan.apply(q)
    expected = torch.zeros((), dtype=torch.float64)
    mine = {n: (l.cpu(), sc.cpu()) for n, (l, sc) in s.posterior().items()}
    scale = prior_kw.get("scale", TeacherPosterior(q).scale)  # the library's default
    for n in s.site_names:
        p_scale = aligned.scales[n].cpu() if scale == "posterior" else torch.ones(())
        kl = kl_divergence(TorchNormal(mine[n][0].double(), mine[n][1].double()),
                           TorchNormal(aligned.locs[n].cpu().double(), p_scale.double()))
        expected = expected + kl.sum()
    got = s.kl()
    assert got.device.type == torch.device(device).type
    torch.testing.assert_close(got.double().cpu(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale", ["posterior", "unit"])
def test_kl_of_a_student_with_the_aligned_teacher_prior(scale):
    teacher, q = make_teacher(named_teacher())
    student = nn.Sequential(OrderedDict([("a", nn.Linear(3, 4)), ("r", nn.ReLU()), ("b", nn.Linear(4, 2))]))
    plan = bd.align(teacher, student)
    assert not plan.is_identity
    _kl_check(plan, q, student, scale=scale)


@needs_cuda
def test_cuda_identity_plan_and_kl():
    teacher, q = make_teacher(mlp(3, 4, 2, seed=0))
    teacher = teacher.to("cuda")
    qc = teacher.posterior()
    plan = bd.align(teacher, mlp(3, 4, 2, seed=5), probe=torch.randn(32, 3, device="cuda"))
    assert plan.is_identity
    a = plan.apply(qc)
    assert a.device.type == "cuda"
    assert_posteriors_equal(a, qc)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda, id="cuda")])
@pytest.mark.parametrize("scale", [None, "posterior", "unit"])
def test_aligned_prior_kl_on_device(device, scale):
    """The plan and the prior on the teacher's device, with data-scored pruning and the
    library's default scale (None) as well as both explicit ones."""
    teacher, q = make_teacher(named_teacher())
    teacher = teacher.to(device)
    qd = teacher.posterior()
    student = nn.Sequential(OrderedDict([("a", nn.Linear(3, 4)), ("r", nn.ReLU()), ("b", nn.Linear(4, 2))]))
    probe = torch.randn(64, 3, generator=seeded(9)).to(device)
    plan = bd.align(teacher, student, probe=probe)
    assert plan.apply(qd).device.type == device
    _kl_check(plan, qd, student, device=device, **({} if scale is None else {"scale": scale}))


def test_init_from_an_aligned_posterior_carries_batchnorm_statistics():
    torch.manual_seed(0)
    t_net = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    teacher = bd.BNN(t_net)
    teacher.net[1].running_mean.copy_(torch.arange(6.0))
    s_net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    plan = bd.align(teacher, s_net, criterion=lambda ctx: torch.arange(ctx.units, dtype=torch.float))
    student = bd.BNN(s_net, init=plan.apply(teacher.posterior()))
    assert torch.equal(student.net[1].running_mean, torch.tensor([2.0, 3.0, 4.0, 5.0]))


# ----------------------------------------------------------------------------- student_from_teacher
def _bn_teacher_and_plan():
    """A Linear-BatchNorm-ReLU-Linear teacher (regression, learned noise) aligned to a narrower student."""
    t_net = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    set_bn(t_net[1], 7)
    teacher, q = make_teacher(t_net, likelihood=bd.likelihoods.Normal(scale=0.3, learn_scale=True), dataset_size=50)
    s_net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    plan = bd.align(teacher, s_net, criterion=lambda ctx: torch.arange(ctx.units, dtype=torch.float))
    assert plan.layers[0]["kept"] == [2, 3, 4, 5]
    return teacher, q, s_net, plan


@pytest.mark.parametrize("scale, temperature", [("unit", 1.0), ("posterior", 2.0), (0.3, 1.0), ("learned", 1.0)])
def test_student_from_teacher_equals_the_hand_built_student(scale, temperature):
    teacher, q, s_net, plan = _bn_teacher_and_plan()
    student = bd.student_from_teacher(teacher, s_net, plan=plan, prior_scale=scale, temperature=temperature)

    hand = bd.BNN(s_net, prior=TeacherPosterior(q, plan=plan, scale=scale, temperature=temperature),
                  likelihood=copy.deepcopy(teacher.likelihood), dataset_size=50, init="prior-mean")
    hand.load_point_estimates(plan.apply(q).point_estimates)
    for name in ("prior_loc", "prior_scale", "loc", "rho"):
        assert torch.equal(getattr(student, name), getattr(hand, name)), name
    assert states_equal(student.state_dict(), hand.state_dict())  # BatchNorm statistics and the noise scale too
    assert student.dataset_size == 50 and student.learn_prior_scale is (scale == "learned")

    # and the parts that matter, against the teacher directly
    keep = [2, 3, 4, 5]
    mine = student.posterior()
    assert torch.equal(mine.locs["0.weight"], q.locs["0.weight"][keep])  # starts at the aligned teacher means
    assert torch.equal(mine.locs["3.weight"], q.locs["3.weight"][:, keep])
    torch.testing.assert_close(mine.scales["0.weight"], torch.full((4, 3), 1e-2))
    assert torch.equal(student.prior_loc, torch.cat([mine.locs[n].reshape(-1) for n in student.site_names]))
    for stat in ("running_mean", "running_var"):
        assert torch.equal(getattr(student.net[1], stat), q.point_estimates[f"net.1.{stat}"][keep])
    assert torch.equal(student.net[1].weight.detach(), q.point_estimates["net.1.weight"][keep])
    assert student.likelihood is not teacher.likelihood
    assert states_equal(student.likelihood.state_dict(), teacher.likelihood.state_dict())


def test_student_from_teacher_other_starts_and_settings():
    teacher, q, s_net, plan = _bn_teacher_and_plan()
    aligned = plan.apply(q)
    # "module": the network's own initialization and statistics; the prior still the aligned teacher
    likelihood = bd.likelihoods.Normal(scale=1.0)
    mod = bd.student_from_teacher(teacher, s_net, plan=plan, init="module", likelihood=likelihood, dataset_size=7,
                                  init_scale=0.05)
    own = torch.cat([s_net[i].get_parameter(a).detach().reshape(-1) for i in (0, 3) for a in ("weight", "bias")])
    assert torch.equal(mod.loc.detach(), own)
    torch.testing.assert_close(mod.scale().detach(), torch.full_like(own, 0.05))
    assert torch.equal(mod.net[1].running_mean, torch.zeros(4))
    assert torch.equal(mod.prior_loc, torch.cat([aligned.locs[n].reshape(-1) for n in mod.site_names]))
    assert mod.likelihood is likelihood and mod.dataset_size == 7
    # "teacher": q(w) is the aligned teacher itself (means and scales), which aligned_network evaluates
    tea = bd.student_from_teacher(teacher, s_net, plan=plan, init="teacher")
    got = tea.posterior()
    for name in aligned.locs:
        assert torch.equal(got.locs[name], aligned.locs[name])
        torch.testing.assert_close(got.scales[name], aligned.scales[name])
    assert torch.equal(tea.net[1].running_var, aligned.point_estimates["net.1.running_var"])
    assert states_equal(bd.distill.aligned_network(teacher, s_net, plan).state_dict(), tea.state_dict())
    # no plan: the student has the teacher's architecture
    same = bd.student_from_teacher(teacher, nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)))
    assert torch.equal(same.loc.detach(), teacher.loc.detach())
    assert torch.equal(same.net[1].running_mean, teacher.net[1].running_mean)
    with pytest.raises(bd.ShapeMismatchError, match=r"'0\.weight'.*align the architectures first"):
        bd.student_from_teacher(teacher, s_net)
    with pytest.raises(ValueError, match="init must be one of"):
        bd.student_from_teacher(teacher, s_net, plan=plan, init="zeros")
    with pytest.raises(ValueError, match="scale"):
        bd.student_from_teacher(teacher, s_net, plan=plan, prior_scale="wide")
    with pytest.raises(TypeError, match="bd.BNN"):
        bd.student_from_teacher(teacher.net, s_net)
    assert bd.student_from_teacher is bd.distill.student_from_teacher
