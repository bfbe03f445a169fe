"""The student from a teacher (distill/student.py) and its aligned teacher prior.

KL values are checked against ``torch.distributions``; the student built in one call against
the same BNN built by hand.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.distributions import Normal as TorchNormal
from torch.distributions import kl_divergence

import bayesdistill as bd
from _align_helpers import (
    seeded,
    mlp,
    make_teacher,
    assert_posteriors_equal,
    named_teacher,
    needs_cuda,
    TeacherPosterior,
)


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
