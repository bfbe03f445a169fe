"""The package's default distillation variant: unit-variance teacher prior, start at its means."""

import torch
from torch import nn

import bayesdistill as bd


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))


def test_teacher_prior_defaults_to_unit_variance_and_student_starts_at_its_means():
    teacher = bd.BNN(_net(0), init_scale=0.05)
    q = teacher.posterior()
    student = bd.BNN(_net(1), prior=bd.priors.TeacherPosterior(q))
    assert torch.equal(student.prior_scale, torch.ones_like(student.prior_scale))
    expected = torch.cat([q.locs[n].reshape(-1) for n in student.site_names])
    assert torch.equal(student.prior_loc, expected)
    assert torch.equal(student.loc.detach(), expected)  # init="auto" -> "prior-mean"


def test_auto_init_keeps_the_module_init_for_other_priors_and_can_be_overridden():
    net = _net(2)
    plain = bd.BNN(net)
    own = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    assert torch.equal(plain.loc.detach(), own)
    q = bd.BNN(_net(0)).posterior()
    separate = bd.BNN(net, prior=bd.priors.TeacherPosterior(q), init="module")
    assert torch.equal(separate.loc.detach(), own)
