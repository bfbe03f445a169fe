"""Shared builders of the alignment tests (tests/distill/align/, tests/distill/test_student.py).

Teachers are tiny networks whose posterior means are chosen weights (``init="module"``) or set
by ``load_posterior``; the expected aligned posteriors and functions are computed independently
with plain torch/scipy in the tests.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import bayesdistill as bd
from bayesdistill import MeanFieldPosterior
from bayesdistill.distill import AlignmentPlan

TeacherPosterior = bd.priors.TeacherPosterior

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def seeded(seed: int):
    g = torch.Generator().manual_seed(seed)
    return g


def set_weights(layer: nn.Module, weight, bias=None) -> nn.Module:
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        if bias is not None:
            layer.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return layer


def mlp(*sizes: int, seed: int = 0) -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            mods.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                mods.append(nn.ReLU())
        return nn.Sequential(*mods)


def with_scales(bnn: bd.BNN, seed: int = 1) -> MeanFieldPosterior:
    """Give ``bnn`` heterogeneous posterior scales (means unchanged); return its posterior."""
    q = bnn.posterior()
    g = seeded(seed)
    scales = {k: 0.05 + 0.5 * torch.rand(v.shape, generator=g) for k, v in q.locs.items()}
    bnn.load_posterior(MeanFieldPosterior(dict(q.locs), scales, dict(q.info), q.point_estimates))
    return bnn.posterior()


def make_teacher(net: nn.Module, seed: int = 1, **kw) -> tuple[bd.BNN, MeanFieldPosterior]:
    t = bd.BNN(net, init_scale=0.1, **kw)
    return t, with_scales(t, seed)


def other_posterior(q: MeanFieldPosterior, seed: int = 7) -> MeanFieldPosterior:
    """Another posterior with the same names and shapes (different values)."""
    g = seeded(seed)
    locs = {k: torch.randn(v.shape, generator=g) for k, v in q.locs.items()}
    scales = {k: 0.05 + torch.rand(v.shape, generator=g) for k, v in q.locs.items()}
    return MeanFieldPosterior(locs, scales, dict(q.info), dict(q.point_estimates))


def assert_posteriors_equal(a: MeanFieldPosterior, b: MeanFieldPosterior) -> None:
    assert list(a.locs) == list(b.locs)
    for k in a.locs:
        assert torch.equal(a.locs[k], b.locs[k]), k
        assert torch.equal(a.scales[k], b.scales[k]), k
    assert set(a.point_estimates) == set(b.point_estimates)
    for k in a.point_estimates:
        assert torch.equal(a.point_estimates[k], b.point_estimates[k]), k


def keep_by_first_weight(ctx) -> torch.Tensor:
    """A criterion that scores a unit by its first incoming weight (a property of the unit)."""
    return ctx.w_loc.reshape(ctx.units, -1)[:, 0]


def student_at(plan: AlignmentPlan, q: MeanFieldPosterior, student: nn.Module, **kw) -> bd.BNN:
    """The student BNN at the aligned means (and scales, and point estimates)."""
    aligned = plan.apply(q)
    s = bd.BNN(student, init=aligned, **kw)
    s.load_posterior(aligned)
    s.eval()
    return s


def hand_mlp_teacher():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    g = seeded(3)
    w0 = torch.randn(4, 3, generator=g)
    w0[:, 0] = torch.tensor([0.1, 0.9, 0.2, 0.8])  # the criterion keeps units 1 and 3
    set_weights(net[0], w0, torch.randn(4, generator=g))
    set_weights(net[2], torch.randn(2, 4, generator=g), torch.randn(2, generator=g))
    return net


def bn_reference(h: torch.Tensor, rm, rv, w, b, eps=1e-5) -> torch.Tensor:
    shape = (1, -1) + (1,) * (h.dim() - 2)
    return (h - rm.view(shape)) / torch.sqrt(rv.view(shape) + eps) * w.view(shape) + b.view(shape)


def set_bn(bn: nn.BatchNorm1d, seed: int) -> None:
    g = seeded(seed)
    n = bn.num_features
    with torch.no_grad():
        bn.weight.copy_(0.5 + torch.rand(n, generator=g))
        bn.bias.copy_(torch.randn(n, generator=g))
        bn.running_mean.copy_(torch.randn(n, generator=g))
        bn.running_var.copy_(0.3 + torch.rand(n, generator=g))


def psi_teacher(middle: torch.Tensor, seed: int = 51) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    g = seeded(seed)
    set_weights(net[0], torch.randn(3, 3, generator=g), torch.randn(3, generator=g))
    set_weights(net[2], middle, torch.zeros(3))
    set_weights(net[4], torch.randn(2, 3, generator=g), torch.randn(2, generator=g))
    return net


def teacher_out(q: MeanFieldPosterior, x: torch.Tensor) -> torch.Tensor:
    h = torch.relu(x @ q.locs["0.weight"].T + q.locs["0.bias"])
    h = torch.relu(h @ q.locs["2.weight"].T + q.locs["2.bias"])
    return h @ q.locs["4.weight"].T + q.locs["4.bias"]


PERM = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
DIAG = torch.diag(torch.tensor([0.5, 2.0, 1.5]))


def random_teacher_and_data(seed: int = 61, hidden: int = 8):
    teacher, q = make_teacher(mlp(4, hidden, 3, seed=seed))
    x = torch.randn(256, 4, generator=seeded(seed + 1))
    return teacher, q, x


def rel_err(pred, target) -> float:
    pred, target = pred.detach(), target.detach()
    return float((pred - target).square().sum() / (target - target.mean(0)).square().sum())


def named_teacher():
    net = nn.Sequential(OrderedDict([
        ("fc_in", nn.Linear(3, 6)), ("act_in", nn.ReLU()),
        ("fc_mid", nn.Linear(6, 6)), ("act_mid", nn.ReLU()),
        ("fc_out", nn.Linear(6, 2)),
    ]))
    with torch.random.fork_rng():
        torch.manual_seed(101)
        for m in net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight)
    return net
