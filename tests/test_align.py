"""Layer alignment (``bd.align``, ``AlignmentPlan``): Grabovoy & Strijov (2021), DESIGN.md section 3.

Every case is hand-worked: teachers are tiny networks whose posterior means are chosen weights
(``init="module"``) or set by ``load_posterior``, and the expected aligned posterior (restricted
rows/columns, folded layers, least-squares re-fits) and the expected function of the pruned
teacher are computed independently with plain torch/scipy.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.distributions import Normal as TorchNormal
from torch.distributions import kl_divergence

import bayesdistill as bd
from bayesdistill import DataError, MeanFieldPosterior, ShapeMismatchError, UnsupportedLayerError
from bayesdistill.distill import CRITERIA, AlignmentPlan
from bayesdistill.distill.align import Fold
TeacherPosterior = bd.priors.TeacherPosterior

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


# ----------------------------------------------------------------------------- helpers
def _seeded(seed: int):
    g = torch.Generator().manual_seed(seed)
    return g


def _set(layer: nn.Module, weight, bias=None) -> nn.Module:
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        if bias is not None:
            layer.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return layer


def _mlp(*sizes: int, seed: int = 0) -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            mods.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                mods.append(nn.ReLU())
        return nn.Sequential(*mods)


def _with_scales(bnn: bd.BNN, seed: int = 1) -> MeanFieldPosterior:
    """Give ``bnn`` heterogeneous posterior scales (means unchanged); return its posterior."""
    q = bnn.posterior()
    g = _seeded(seed)
    scales = {k: 0.05 + 0.5 * torch.rand(v.shape, generator=g) for k, v in q.locs.items()}
    bnn.load_posterior(MeanFieldPosterior(dict(q.locs), scales, dict(q.info), q.point_estimates))
    return bnn.posterior()


def _teacher(net: nn.Module, seed: int = 1, **kw) -> tuple[bd.BNN, MeanFieldPosterior]:
    t = bd.BNN(net, init_scale=0.1, **kw)
    return t, _with_scales(t, seed)


def _other_posterior(q: MeanFieldPosterior, seed: int = 7) -> MeanFieldPosterior:
    """Another posterior with the same names and shapes (different values)."""
    g = _seeded(seed)
    locs = {k: torch.randn(v.shape, generator=g) for k, v in q.locs.items()}
    scales = {k: 0.05 + torch.rand(v.shape, generator=g) for k, v in q.locs.items()}
    return MeanFieldPosterior(locs, scales, dict(q.info), dict(q.point_estimates))


def _assert_posteriors_equal(a: MeanFieldPosterior, b: MeanFieldPosterior) -> None:
    assert list(a.locs) == list(b.locs)
    for k in a.locs:
        assert torch.equal(a.locs[k], b.locs[k]), k
        assert torch.equal(a.scales[k], b.scales[k]), k
    assert set(a.point_estimates) == set(b.point_estimates)
    for k in a.point_estimates:
        assert torch.equal(a.point_estimates[k], b.point_estimates[k]), k


def _keep_by_first_weight(ctx) -> torch.Tensor:
    """A criterion that scores a unit by its first incoming weight (a property of the unit)."""
    return ctx.w_loc.reshape(ctx.units, -1)[:, 0]


def _student_at(plan: AlignmentPlan, q: MeanFieldPosterior, student: nn.Module, **kw) -> bd.BNN:
    """The student BNN at the aligned means (and scales, and point estimates)."""
    aligned = plan.apply(q)
    s = bd.BNN(student, init=aligned, **kw)
    s.load_posterior(aligned)
    s.eval()
    return s


# ----------------------------------------------------------------------------- 1. identity
def test_identity_plan_same_architecture_maps_the_posterior_unchanged():
    teacher, q = _teacher(_mlp(3, 4, 2, seed=0))
    student = _mlp(3, 4, 2, seed=5)  # same architecture, other weights
    plan = bd.align(teacher, student)
    assert plan.is_identity and plan.edits == []
    aligned = plan.apply(q)
    _assert_posteriors_equal(aligned, q)
    assert all(L["kept"] == list(range(L["teacher_units"])) and not L["removed"] for L in plan.layers)

    s = bd.BNN(student, prior=TeacherPosterior(q, plan=plan, scale="posterior"))
    assert torch.equal(s.prior_loc, torch.cat([q.locs[n].reshape(-1) for n in s.site_names]))
    assert torch.equal(s.prior_scale, torch.cat([q.scales[n].reshape(-1) for n in s.site_names]))

    # an identity plan (no edits) maps any posterior of the teacher's shapes onto itself
    q2 = _other_posterior(q)
    _assert_posteriors_equal(plan.apply(q2), q2)


def test_identity_plan_with_batchnorm_probe_data_and_point_estimates():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 3, 3, padding=1), nn.BatchNorm1d(3), nn.ReLU(), nn.Flatten(), nn.Linear(15, 2))
    with torch.no_grad():
        net[1].running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        net[1].running_var.copy_(torch.tensor([0.5, 2.0, 1.5]))
    teacher, q = _teacher(net, likelihood=bd.likelihoods.Normal(scale=0.3))
    plan = bd.align(teacher, net, probe=torch.randn(20, 1, 5))
    assert plan.is_identity and plan.compensation
    assert plan.output_error == pytest.approx(0.0, abs=1e-12)
    # point estimates included: BatchNorm statistics (with num_batches_tracked) and the likelihood's
    _assert_posteriors_equal(plan.apply(q), q)
    s = _student_at(plan, q, net, likelihood=bd.likelihoods.Normal(scale=1.0))
    teacher.eval()
    x = torch.randn(8, 1, 5)
    assert torch.equal(s(x), teacher(x))


# ----------------------------------------------------------------------------- 2. phi on an MLP
def _hand_mlp_teacher():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    g = _seeded(3)
    w0 = torch.randn(4, 3, generator=g)
    w0[:, 0] = torch.tensor([0.1, 0.9, 0.2, 0.8])  # the criterion keeps units 1 and 3
    _set(net[0], w0, torch.randn(4, generator=g))
    _set(net[2], torch.randn(2, 4, generator=g), torch.randn(2, generator=g))
    return net


@pytest.mark.parametrize("step", [1.0, 0.25])
def test_phi_mlp_restricts_rows_and_columns_exactly(step):
    teacher, q = _teacher(_hand_mlp_teacher())
    student = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    plan = bd.align(teacher, student, criterion=_keep_by_first_weight, step=step)
    keep = [1, 3]
    assert plan.layers[0]["kept"] == keep and plan.layers[1]["kept"] == [0, 1]
    assert sorted(u for _, u, _ in plan.layers[0]["trace"]) == [0, 2]
    assert not plan.compensation and plan.criterion == "_keep_by_first_weight"
    a = plan.apply(q)
    assert list(a.locs) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for src in ("locs", "scales"):
        qs, as_ = getattr(q, src), getattr(a, src)
        assert torch.equal(as_["0.weight"], qs["0.weight"][keep])
        assert torch.equal(as_["0.bias"], qs["0.bias"][keep])
        assert torch.equal(as_["2.weight"], qs["2.weight"][:, keep])
        assert torch.equal(as_["2.bias"], qs["2.bias"])

    # the pruned teacher computes exactly the teacher with units 0 and 2 removed
    s = _student_at(plan, q, student)
    x = torch.randn(32, 3, generator=_seeded(4))
    w0, b0, w1, b1 = (q.locs[k] for k in ("0.weight", "0.bias", "2.weight", "2.bias"))
    w1z = w1.clone()
    w1z[:, [0, 2]] = 0.0
    expected = torch.relu(x @ w0.T + b0) @ w1z.T + b1
    torch.testing.assert_close(s(x), expected, rtol=1e-6, atol=1e-6)
    full = torch.relu(x @ w0.T + b0) @ w1.T + b1
    assert (s(x) - full).abs().max() > 1e-2  # the removed units did contribute

    # and the teacher-posterior prior of that student is the aligned posterior
    sp = bd.BNN(student, prior=TeacherPosterior(q, plan=plan, scale="posterior"))
    assert torch.equal(sp.prior_loc, torch.cat([a.locs[n].reshape(-1) for n in sp.site_names]))
    assert torch.equal(sp.prior_scale, torch.cat([a.scales[n].reshape(-1) for n in sp.site_names]))


# ----------------------------------------------------------------------------- 3. phi with a flatten
def test_phi_conv_flatten_linear_removes_whole_channel_blocks():
    L = 5
    net = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * L, 2))
    g = _seeded(11)
    w = torch.randn(4, 1, 3, generator=g)
    w[:, 0, 0] = torch.tensor([0.7, 0.1, 0.9, 0.2])  # keep channels 0 and 2
    _set(net[0], w, torch.randn(4, generator=g))
    _set(net[3], torch.randn(2, 4 * L, generator=g), torch.randn(2, generator=g))
    teacher, q = _teacher(net)
    student = nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * L, 2))
    plan = bd.align(teacher, student, criterion=_keep_by_first_weight)
    keep = [0, 2]
    cols = [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]  # channel j reads columns j*L .. (j+1)*L-1
    assert plan.layers[0]["kept"] == keep
    a = plan.apply(q)
    for src in ("locs", "scales"):
        qs, as_ = getattr(q, src), getattr(a, src)
        assert torch.equal(as_["0.weight"], qs["0.weight"][keep])
        assert torch.equal(as_["0.bias"], qs["0.bias"][keep])
        assert torch.equal(as_["3.weight"], qs["3.weight"][:, cols])
        assert torch.equal(as_["3.bias"], qs["3.bias"])

    s = _student_at(plan, q, student)
    x = torch.randn(16, 1, L, generator=_seeded(12))
    h = torch.relu(F.conv1d(x, q.locs["0.weight"], q.locs["0.bias"], padding=1)).flatten(1)
    wz = q.locs["3.weight"].clone()
    wz[:, L : 2 * L] = 0.0
    wz[:, 3 * L :] = 0.0
    torch.testing.assert_close(s(x), h @ wz.T + q.locs["3.bias"], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- 4. BatchNorm
def _bn(h: torch.Tensor, rm, rv, w, b, eps=1e-5) -> torch.Tensor:
    shape = (1, -1) + (1,) * (h.dim() - 2)
    return (h - rm.view(shape)) / torch.sqrt(rv.view(shape) + eps) * w.view(shape) + b.view(shape)


def _set_bn(bn: nn.BatchNorm1d, seed: int) -> None:
    g = _seeded(seed)
    n = bn.num_features
    with torch.no_grad():
        bn.weight.copy_(0.5 + torch.rand(n, generator=g))
        bn.bias.copy_(torch.randn(n, generator=g))
        bn.running_mean.copy_(torch.randn(n, generator=g))
        bn.running_var.copy_(0.3 + torch.rand(n, generator=g))


@pytest.mark.parametrize("bayesian_norm", [False, True])
def test_phi_linear_batchnorm_restricts_the_norm_and_keeps_the_function(bayesian_norm):
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    g = _seeded(21)
    w0 = torch.randn(4, 3, generator=g)
    w0[:, 0] = torch.tensor([0.9, 0.1, 0.8, 0.2])  # keep units 0 and 2
    _set(net[0], w0, torch.randn(4, generator=g))
    _set(net[3], torch.randn(2, 4, generator=g), torch.randn(2, generator=g))
    _set_bn(net[1], 22)
    teacher, q = _teacher(net, bayesian_norm=bayesian_norm)
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.ReLU(), nn.Linear(2, 2))
    plan = bd.align(teacher, student, criterion=_keep_by_first_weight)
    keep = [0, 2]
    assert plan.layers[0]["kept"] == keep
    a = plan.apply(q)
    pe = a.point_estimates
    for stat in ("running_mean", "running_var"):
        assert torch.equal(pe[f"net.1.{stat}"], q.point_estimates[f"net.1.{stat}"][keep])
    if bayesian_norm:
        assert "net.1.weight" not in pe
        for attr in ("weight", "bias"):
            assert torch.equal(a.locs[f"1.{attr}"], q.locs[f"1.{attr}"][keep])
            assert torch.equal(a.scales[f"1.{attr}"], q.scales[f"1.{attr}"][keep])
        bw, bb = q.locs["1.weight"], q.locs["1.bias"]
    else:
        assert "1.weight" not in a.locs
        for attr in ("weight", "bias"):
            assert torch.equal(pe[f"net.1.{attr}"], q.point_estimates[f"net.1.{attr}"][keep])
        bw, bb = q.point_estimates["net.1.weight"], q.point_estimates["net.1.bias"]

    s = _student_at(plan, q, student, bayesian_norm=bayesian_norm)
    x = torch.randn(32, 3, generator=_seeded(23))
    pre = x @ q.locs["0.weight"].T + q.locs["0.bias"]
    h = torch.relu(_bn(pre, q.point_estimates["net.1.running_mean"], q.point_estimates["net.1.running_var"], bw, bb))
    w1z = q.locs["3.weight"].clone()
    w1z[:, [1, 3]] = 0.0
    torch.testing.assert_close(s(x), h @ w1z.T + q.locs["3.bias"], rtol=1e-6, atol=1e-6)


def test_phi_conv_batchnorm_flatten():
    L = 4
    net = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * L, 2))
    g = _seeded(31)
    w = torch.randn(4, 1, 3, generator=g)
    w[:, 0, 0] = torch.tensor([0.1, 0.9, 0.2, 0.8])  # keep channels 1 and 3
    _set(net[0], w, torch.randn(4, generator=g))
    _set(net[4], torch.randn(2, 4 * L, generator=g), torch.randn(2, generator=g))
    _set_bn(net[1], 32)
    teacher, q = _teacher(net)
    student = nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), nn.BatchNorm1d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * L, 2))
    plan = bd.align(teacher, student, criterion=_keep_by_first_weight)
    keep = [1, 3]
    assert plan.layers[0]["kept"] == keep
    a = plan.apply(q)
    for k in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(a.point_estimates[f"net.1.{k}"], q.point_estimates[f"net.1.{k}"][keep])
    assert torch.equal(a.locs["4.weight"], q.locs["4.weight"][:, [4, 5, 6, 7, 12, 13, 14, 15]])
    s = _student_at(plan, q, student)
    x = torch.randn(16, 1, L, generator=_seeded(33))
    pe = q.point_estimates
    pre = F.conv1d(x, q.locs["0.weight"], q.locs["0.bias"], padding=1)
    h = torch.relu(_bn(pre, pe["net.1.running_mean"], pe["net.1.running_var"], pe["net.1.weight"], pe["net.1.bias"]))
    wz = q.locs["4.weight"].clone()
    wz[:, :L] = 0.0
    wz[:, 2 * L : 3 * L] = 0.0
    torch.testing.assert_close(s(x), h.flatten(1) @ wz.T + q.locs["4.bias"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("conv", [False, True])
def test_align_with_data_leaves_a_training_mode_teacher_untouched(conv):
    """A teacher left in training mode (BatchNorm, dropout) is aligned as the eval-mode network."""
    if conv:
        net = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.5),
                            nn.Flatten(), nn.Linear(20, 2))
        x = torch.randn(40, 1, 5, generator=_seeded(41))
    else:
        net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 2))
        x = torch.randn(40, 3, generator=_seeded(41))
    _set_bn(net[1], 42)
    teacher = bd.BNN(net, init_scale=0.1)
    assert teacher.training
    before = teacher.point_estimates()
    plan = bd.align(teacher, net, probe=x)  # identity plan
    assert teacher.training and teacher.net[3].training
    after = teacher.point_estimates()
    for k in before:
        assert torch.equal(before[k], after[k]), k  # no running statistic was updated
    assert plan.is_identity
    assert plan.output_error == pytest.approx(0.0, abs=1e-12)  # no dropout noise in the comparison


# ----------------------------------------------------------------------------- 5. psi
def _psi_teacher(middle: torch.Tensor, seed: int = 51) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    g = _seeded(seed)
    _set(net[0], torch.randn(3, 3, generator=g), torch.randn(3, generator=g))
    _set(net[2], middle, torch.zeros(3))
    _set(net[4], torch.randn(2, 3, generator=g), torch.randn(2, generator=g))
    return net


def _teacher_out(q: MeanFieldPosterior, x: torch.Tensor) -> torch.Tensor:
    h = torch.relu(x @ q.locs["0.weight"].T + q.locs["0.bias"])
    h = torch.relu(h @ q.locs["2.weight"].T + q.locs["2.bias"])
    return h @ q.locs["4.weight"].T + q.locs["4.bias"]


PERM = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
DIAG = torch.diag(torch.tensor([0.5, 2.0, 1.5]))


def test_psi_scaled_permutation_is_exact_and_identity_is_not():
    PD = PERM @ DIAG
    teacher, q = _teacher(_psi_teacher(PD))
    student = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    x = 3.0 * torch.randn(256, 3, generator=_seeded(52))  # any sign: the first ReLU makes them >= 0
    ref = _teacher_out(q, x)

    plan = bd.align(teacher, student, removal="permutation")
    assert [L["removed"] for L in plan.layers] == [False, True, False]
    assert plan.layers[1]["student"] is None and plan.param_map["4.weight"] == "2.weight"
    assert plan.layers[1]["residual"] < 1e-6
    a = plan.apply(q)
    assert torch.equal(a.locs["0.weight"], q.locs["0.weight"]) and torch.equal(a.scales["0.weight"], q.scales["0.weight"])
    torch.testing.assert_close(a.locs["2.weight"], q.locs["4.weight"] @ PD)
    # the folded scales: Var(sum_c W_oc M_ci) = sum_c S_oc^2 M_ci^2
    torch.testing.assert_close(a.scales["2.weight"], (q.scales["4.weight"].square() @ PD.square()).sqrt())
    torch.testing.assert_close(a.locs["2.bias"], q.locs["4.bias"])
    s = _student_at(plan, q, student)
    torch.testing.assert_close(s(x), ref, rtol=1e-5, atol=1e-5)

    # the paper's rule (condition on U = I) drops P D: a large error on this teacher
    plan_i = bd.align(teacher, student, removal="identity")
    s_i = _student_at(plan_i, q, student)
    err = (s_i(x) - ref).norm() / ref.norm()
    assert err > 0.3
    assert plan_i.layers[1]["residual"] == pytest.approx(float((PD - torch.eye(3)).norm() / PD.norm()), rel=1e-6)


def test_psi_identity_is_exact_for_an_identity_layer():
    teacher, q = _teacher(_psi_teacher(torch.eye(3)))
    student = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    plan = bd.align(teacher, student, removal="identity")
    assert plan.layers[1]["removed"] and plan.layers[1]["residual"] == 0.0
    a = plan.apply(q)
    assert torch.equal(a.locs["2.weight"], q.locs["4.weight"])  # U_4 I = U_4
    x = 3.0 * torch.randn(128, 3, generator=_seeded(53))
    torch.testing.assert_close(_student_at(plan, q, student)(x), _teacher_out(q, x), rtol=1e-5, atol=1e-5)


def test_psi_residual_of_a_non_exact_layer():
    g = _seeded(54)
    U = PERM @ DIAG + 0.15 * torch.randn(3, 3, generator=g)
    teacher, q = _teacher(_psi_teacher(U))
    student = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    plan = bd.align(teacher, student, removal="permutation")
    # independently: the permutation carrying the most positive weight, D from U's entries
    rows, cols = linear_sum_assignment(-U.clamp_min(0).double().numpy())
    PD = torch.zeros(3, 3)
    PD[torch.as_tensor(rows), torch.as_tensor(cols)] = U[torch.as_tensor(rows), torch.as_tensor(cols)]
    assert torch.equal((PD > 0).float(), PERM)  # the noise does not hide the permutation
    expected = float((U - PD).norm() / U.norm())
    assert expected > 0.05
    assert plan.layers[1]["residual"] == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(plan.apply(q).locs["2.weight"], q.locs["4.weight"] @ PD)


def test_psi_conv_center_tap_scaled_permutation_is_exact():
    L = 6
    net = nn.Sequential(nn.Conv1d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv1d(3, 3, 3, padding=1), nn.ReLU(),
                        nn.Conv1d(3, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * L, 2))
    g = _seeded(56)
    _set(net[0], torch.randn(3, 1, 3, generator=g), torch.randn(3, generator=g))
    k = torch.zeros(3, 3, 3)
    k[:, :, 1] = PERM @ DIAG  # a channel map: only the center tap
    _set(net[2], k, torch.zeros(3))
    _set(net[4], torch.randn(2, 3, 3, generator=g), torch.randn(2, generator=g))
    teacher, q = _teacher(net)
    student = nn.Sequential(nn.Conv1d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv1d(3, 2, 3, padding=1), nn.ReLU(),
                            nn.Flatten(), nn.Linear(2 * L, 2))
    plan = bd.align(teacher, student)  # no data: removal by scaled permutation
    assert plan.removal == "permutation" and [L_["removed"] for L_ in plan.layers] == [False, True, False, False]
    assert plan.layers[1]["residual"] < 1e-6
    a = plan.apply(q)
    # the next kernel absorbs the channel map: W'[o, i, k] = sum_c W[o, c, k] (P D)[c, i]
    torch.testing.assert_close(a.locs["2.weight"], torch.einsum("ock,ci->oik", q.locs["4.weight"], PERM @ DIAG))
    assert torch.equal(a.locs["5.weight"], q.locs["7.weight"])
    x = 2.0 * torch.randn(16, 1, L, generator=_seeded(57))
    teacher.eval()
    torch.testing.assert_close(_student_at(plan, q, student)(x), teacher(x), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- 6. compensation
def _random_teacher_and_data(seed: int = 61, hidden: int = 8):
    teacher, q = _teacher(_mlp(4, hidden, 3, seed=seed))
    x = torch.randn(256, 4, generator=_seeded(seed + 1))
    return teacher, q, x


def _rel_err(pred, target) -> float:
    pred, target = pred.detach(), target.detach()
    return float((pred - target).square().sum() / (target - target.mean(0)).square().sum())


@pytest.mark.parametrize("step", [1.0, 0.25])
def test_compensation_lowers_the_error(step):
    teacher, q, x = _random_teacher_and_data()
    student = _mlp(4, 3, 3, seed=1)
    kw = dict(probe=x, criterion="snr", step=step)
    plan_c = bd.align(teacher, student, compensation=True, **kw)
    plan_n = bd.align(teacher, student, compensation=False, **kw)
    assert plan_c.compensation and not plan_n.compensation
    assert plan_c.output_error < plan_n.output_error
    e_c, e_n = plan_c.layers[1]["error"], plan_n.layers[1]["error"]
    assert e_c["compensated"] < e_c["restricted"]
    assert e_n["compensated"] == e_n["restricted"]
    if step == 1.0:  # one round: the same units are removed, so the plain restrictions agree
        assert plan_c.layers[0]["kept"] == plan_n.layers[0]["kept"]
        assert e_c["restricted"] == pytest.approx(e_n["restricted"], rel=1e-6)
    # one least-squares re-fit of layer 1 per pruning round of layer 0, none without compensation
    rounds = {r for r, _, _ in plan_c.layers[0]["trace"]}
    assert len(plan_c.layers[1]["reconstruction"]) == len(rounds) == (1 if step == 1.0 else 4)
    assert plan_n.layers[1]["reconstruction"] == []
    # the reported output errors are the pruned teachers' relative errors on the probe data
    teacher.eval()
    full = teacher(x)
    for plan in (plan_c, plan_n):
        s = _student_at(plan, q, student)
        assert plan.output_error == pytest.approx(_rel_err(s(x), full), rel=1e-4)


def test_compensation_refit_is_the_least_squares_solution():
    teacher, q, x = _random_teacher_and_data()
    student = _mlp(4, 3, 3, seed=1)
    plan = bd.align(teacher, student, probe=x, compensation=True, step=1.0)
    keep = plan.layers[0]["kept"]
    assert len(plan.layers[1]["reconstruction"]) == 1
    w0, b0, w1, b1 = (q.locs[k] for k in ("0.weight", "0.bias", "2.weight", "2.bias"))
    target = (torch.relu(x @ w0.T + b0) @ w1.T + b1).double()
    design = torch.cat([torch.relu(x @ w0[keep].T + b0[keep]), torch.ones(len(x), 1)], 1).double()
    sol = torch.linalg.lstsq(design, target).solution
    a = plan.apply(q)
    torch.testing.assert_close(a.locs["2.weight"].double(), sol[:-1].T, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(a.locs["2.bias"].double(), sol[-1], rtol=2e-3, atol=2e-3)
    # the re-fit moves means only: the scales stay the restricted teacher scales
    assert torch.equal(a.scales["2.weight"], q.scales["2.weight"][:, keep])
    assert torch.equal(a.locs["0.weight"], w0[keep])
    rec = plan.layers[1]["reconstruction"][0]
    lstsq_err = _rel_err(design @ sol, target)
    assert rec["after"] == pytest.approx(lstsq_err, rel=1e-3, abs=1e-6)
    assert rec["after"] < rec["before"]


# ----------------------------------------------------------------------------- 7. iterative re-scoring
class _Recorder:
    """Wraps a built-in criterion and records every unit's score per round, keyed by its weights."""

    def __init__(self, name: str):
        self.fn = CRITERIA[name]
        self.__name__ = name
        self.calls: list[dict[tuple, float]] = []

    def __call__(self, ctx):
        scores = self.fn(ctx)
        rows = ctx.w_loc.reshape(ctx.units, -1)
        self.calls.append({tuple(r.tolist()): float(s) for r, s in zip(rows, scores)})
        return scores


@pytest.mark.parametrize("seed", [0, 3])
def test_iterative_rescoring_changes_the_order_only_when_means_are_refitted(seed):
    teacher, _, x = _random_teacher_and_data(seed=seed, hidden=12)
    student = _mlp(4, 4, 3, seed=100)

    def kept(**kw):
        return bd.align(teacher, student, probe=x, **kw).layers[0]["kept"]

    # the data criterion re-scores against the re-fitted next layer: one shot and iterative differ
    one = bd.align(teacher, student, probe=x, criterion="data", compensation=True, step=1.0)
    it = bd.align(teacher, student, probe=x, criterion="data", compensation=True, step=0.1)
    assert one.layers[0]["kept"] != it.layers[0]["kept"]
    assert one.layers[0]["trace"] != it.layers[0]["trace"]
    assert len({r for r, _, _ in it.layers[0]["trace"]}) == 8  # 8 excess units, ceil(0.1 * k) = 1 per round

    # without re-fits the remaining units' scores never change, so the order is the same
    for crit in ("snr", "data"):
        assert kept(criterion=crit, compensation=False, step=1.0) == kept(criterion=crit, compensation=False, step=0.1)

    # verify the reason: per-unit scores across rounds
    for crit, comp in (("snr", False), ("data", False), ("snr", True), ("data", True)):
        rec = _Recorder(crit)
        bd.align(teacher, student, probe=x, criterion=rec, compensation=comp, step=0.1)
        first = rec.calls[0]
        changed = [abs(c[u] - first[u]) > 1e-6 * max(1.0, abs(first[u])) for c in rec.calls[1:] for u in c]
        if comp:
            assert any(changed), crit  # the re-fit moved the outgoing means
        else:
            assert not any(changed), crit


# ----------------------------------------------------------------------------- 8. criteria
def test_random_criterion_is_reproducible_by_seed():
    teacher, _ = _teacher(_mlp(4, 12, 3, seed=0))
    student = _mlp(4, 4, 3, seed=1)
    k0 = bd.align(teacher, student, criterion="random", seed=0).layers[0]["kept"]
    assert bd.align(teacher, student, criterion="random", seed=0).layers[0]["kept"] == k0
    others = [bd.align(teacher, student, criterion="random", seed=s).layers[0]["kept"] for s in (1, 2)]
    assert any(k != k0 for k in others)
    assert all(len(k) == 4 and len(set(k)) == 4 for k in [k0, *others])


def test_snr_criterion_keeps_the_units_with_the_largest_mean_in_out_snr():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    teacher = bd.BNN(net)
    q = teacher.posterior()
    # |mu| = 1 everywhere; the scales make the SNRs
    locs = {k: torch.ones_like(v) for k, v in q.locs.items()}
    s_in = torch.tensor([0.1, 1.0, 0.5, 0.4])  # incoming rows and bias: SNR 10, 1, 2, 2.5
    s_out = torch.tensor([10.0, 0.1, 0.5, 1.0])  # outgoing columns: SNR 0.1, 10, 2, 1
    scales = {
        "0.weight": s_in[:, None].expand(4, 3).clone(), "0.bias": s_in.clone(),
        "2.weight": s_out[None, :].expand(2, 4).clone(), "2.bias": torch.ones(2),
    }
    teacher.load_posterior(MeanFieldPosterior(locs, scales))
    q = teacher.posterior()
    # by hand: mean over 3 incoming + 1 bias + 2 outgoing weights
    hand = torch.stack([
        torch.cat([(q.locs["0.weight"][j] / q.scales["0.weight"][j]), (q.locs["0.bias"][j] / q.scales["0.bias"][j])[None],
                   q.locs["2.weight"][:, j] / q.scales["2.weight"][:, j]]).abs().mean()
        for j in range(4)
    ])
    expected = sorted(torch.argsort(hand, descending=True)[:2].tolist())
    assert expected == [0, 1]  # incoming alone would keep 0 and 3, outgoing alone 1 and 2
    student = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    for step in (1.0, 0.25):
        plan = bd.align(teacher, student, criterion="snr", step=step)
        assert plan.layers[0]["kept"] == expected
    trace = bd.align(teacher, student, criterion="snr", step=1.0).layers[0]["trace"]
    for _, unit, score in trace:
        assert score == pytest.approx(float(hand[unit]), rel=1e-5)


@pytest.mark.parametrize("compensation", [False, True])
def test_data_criterion_scores_are_the_units_output_energy(compensation):
    """With compensation a removed unit's mean goes into the re-fitted bias: the score is the
    centred output energy; without, the whole contribution is lost: the raw energy."""
    teacher, q, x = _random_teacher_and_data(hidden=6)
    student = _mlp(4, 2, 3, seed=1)
    plan = bd.align(teacher, student, probe=x, criterion="data", compensation=compensation, step=1.0)
    h = torch.relu(x @ q.locs["0.weight"].T + q.locs["0.bias"])
    hc = h - h.mean(0) if compensation else h
    energy = hc.square().mean(0) * q.locs["2.weight"].square().sum(0)  # E ||(a_j [- mean]) w_j||^2
    trace = plan.layers[0]["trace"]
    assert len(trace) == 4
    for _, unit, score in trace:
        assert score == pytest.approx(float(energy[unit]), rel=1e-4)
    assert plan.layers[0]["kept"] == sorted(torch.argsort(energy, descending=True)[:2].tolist())


@pytest.mark.parametrize("compensation", [False, True])
def test_data_criterion_for_a_convolution_feeding_a_convolution(compensation):
    L = 7
    net = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv1d(4, 3, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(3 * 4, 2))
    with torch.random.fork_rng():
        torch.manual_seed(58)
        teacher, q = _teacher(net)
    student = nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv1d(2, 3, 3, stride=2, padding=1), nn.ReLU(),
                            nn.Flatten(), nn.Linear(3 * 4, 2))
    x = torch.randn(50, 1, L, generator=_seeded(59))
    plan = bd.align(teacher, student, probe=x, criterion="data", compensation=compensation, step=1.0)
    a = torch.relu(F.conv1d(x, q.locs["0.weight"], q.locs["0.bias"], padding=1))
    if compensation:  # the mean goes into the re-fitted bias
        a = a - a.mean(0)
    energy = []
    for j in range(4):  # channel j alone through the next convolution
        only = torch.zeros_like(a)
        only[:, j] = a[:, j]
        energy.append(F.conv1d(only, q.locs["2.weight"], None, stride=2, padding=1).square().sum((1, 2)).mean())
    energy = torch.stack(energy)
    for _, unit, score in plan.layers[0]["trace"]:
        assert score == pytest.approx(float(energy[unit]), rel=1e-4)
    assert plan.layers[0]["kept"] == sorted(torch.argsort(energy, descending=True)[:2].tolist())


def test_probe_data_formats_and_a_bnn_student_give_the_same_plan():
    teacher, q, x = _random_teacher_and_data(hidden=6)
    y = torch.zeros(len(x), dtype=torch.long)
    student = _mlp(4, 3, 3, seed=1)
    ref = bd.align(teacher, student, probe=x, criterion="data")
    ds = torch.utils.data.TensorDataset(x, y)
    for data in ((x, y), ds, torch.utils.data.DataLoader(ds, batch_size=50)):
        plan = bd.align(teacher, student, probe=data, criterion="data")
        assert plan.layers == ref.layers and plan.output_error == ref.output_error
    plan = bd.align(teacher, bd.BNN(student), probe=x, criterion="data")
    assert plan.layers == ref.layers
    _assert_posteriors_equal(plan.apply(q), ref.apply(q))
    few = bd.align(teacher, student, probe=x, criterion="data", max_probe=10)
    assert few.output_error != ref.output_error  # only the first 10 inputs were used


def test_criterion_errors():
    teacher, _ = _teacher(_mlp(3, 4, 2))
    student = _mlp(3, 2, 2)
    with pytest.raises(DataError, match="data"):
        bd.align(teacher, student, criterion="data")
    with pytest.raises(ValueError, match=r"3 scores for 4 units of layer '0'"):
        bd.align(teacher, student, criterion=lambda ctx: torch.zeros(3))
    with pytest.raises(ValueError, match="criterion must be one of"):
        bd.align(teacher, student, criterion="magnitude")
    with pytest.raises(ValueError, match="step"):
        bd.align(teacher, student, step=0.0)
    with pytest.raises(ValueError, match="removal"):
        bd.align(teacher, student, removal="drop")
    with pytest.raises(DataError, match="compensation"):
        bd.align(teacher, student, compensation=True)


# ----------------------------------------------------------------------------- 9. bad input
def test_student_wider_deeper_or_other_sizes_raise_shape_mismatch():
    teacher, _ = _teacher(_mlp(3, 4, 2))
    with pytest.raises(ShapeMismatchError, match=r"student layer '0' has 5 units but its teacher layer '0' has 4"):
        bd.align(teacher, _mlp(3, 5, 2))
    with pytest.raises(ShapeMismatchError, match=r"input sizes differ.*'0' takes 3.*takes 5"):
        bd.align(teacher, _mlp(5, 4, 2))
    with pytest.raises(ShapeMismatchError, match=r"output sizes differ.*'2' gives 2.*gives 3"):
        bd.align(teacher, _mlp(3, 4, 3))
    with pytest.raises(ShapeMismatchError, match="3 layers but the teacher only 2"):
        bd.align(teacher, _mlp(3, 4, 4, 2))
    with pytest.raises(ShapeMismatchError, match="Conv1d"):
        bd.align(teacher, nn.Sequential(nn.Conv1d(3, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)))


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return torch.relu(self.fc(x))


def test_unsupported_structures_raise_naming_the_module():
    teacher = bd.BNN(nn.Sequential(_Block(), nn.Linear(4, 2)))
    with pytest.raises(UnsupportedLayerError, match=r"'0' \(_Block\)"):
        bd.align(teacher, _mlp(3, 2, 2))
    grouped = bd.BNN(nn.Sequential(nn.Conv1d(2, 4, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(UnsupportedLayerError, match=r"layer '0'.*groups=2"):
        bd.align(grouped, nn.Sequential(nn.Conv1d(2, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2)))
    plain = bd.BNN(_mlp(3, 4, 2))
    with pytest.raises(UnsupportedLayerError, match=r"'0' \(_Block\)"):
        bd.align(plain, nn.Sequential(_Block(), nn.Linear(4, 2)))
    with pytest.raises(TypeError, match="bd.BNN"):
        bd.align(_mlp(3, 4, 2), _mlp(3, 2, 2))


def test_bad_probe_data_raises_data_error():
    teacher, _ = _teacher(_mlp(3, 4, 2))
    with pytest.raises(DataError, match="probe data do not fit the teacher"):
        bd.align(teacher, _mlp(3, 2, 2), probe=torch.randn(10, 5))
    with pytest.raises(DataError, match="NaN"):
        bd.align(teacher, _mlp(3, 2, 2), probe=torch.full((4, 3), float("nan")))
    with pytest.raises(DataError, match="probe data must be"):
        bd.align(teacher, _mlp(3, 2, 2), probe="inputs.csv")


def test_a_layer_that_is_not_removable_raises_with_the_reason():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    teacher = bd.BNN(net)
    student = _mlp(3, 3, 2)
    with pytest.raises(ShapeMismatchError, match=r"'2' cannot be removed: it must be followed by a ReLU"):
        bd.align(teacher, student)
    with pytest.raises(ShapeMismatchError, match=r"'2' cannot be removed: it must be followed by a ReLU"):
        bd.align(teacher, student, remove=["2"])
    with pytest.raises(ShapeMismatchError, match="first and the last layer cannot be removed"):
        bd.align(teacher, student, remove=["4"])
    with pytest.raises(KeyError, match="no such teacher layer"):
        bd.align(teacher, student, remove=["3"])


def test_apply_to_another_posterior():
    teacher, q = _teacher(_hand_mlp_teacher())
    student = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    x = torch.randn(64, 3, generator=_seeded(91))
    plain = bd.align(teacher, student, criterion=_keep_by_first_weight)
    comp = bd.align(teacher, student, criterion=_keep_by_first_weight, probe=x)
    assert comp.compensation and plain.layers[0]["kept"] == comp.layers[0]["kept"] == [1, 3]

    # a posterior of another network
    _, q_other = _teacher(_mlp(3, 5, 2))
    with pytest.raises(ShapeMismatchError, match=r"'0.weight' has shape \(5, 3\).*\(4, 3\)"):
        plain.apply(q_other)
    with pytest.raises(ShapeMismatchError, match="lacks"):
        plain.apply(MeanFieldPosterior({"0.weight": q.locs["0.weight"]}, {"0.weight": q.scales["0.weight"]}))

    # the same shapes but other values: the compensated means belong to the original teacher
    q2 = _other_posterior(q)
    with pytest.raises(ValueError, match="compensation"):
        comp.apply(q2)
    # without compensation the recorded selection (units 1 and 3) is replayed
    a2 = plain.apply(q2)
    for src in ("locs", "scales"):
        qs, as_ = getattr(q2, src), getattr(a2, src)
        assert torch.equal(as_["0.weight"], qs["0.weight"][[1, 3]])
        assert torch.equal(as_["0.bias"], qs["0.bias"][[1, 3]])
        assert torch.equal(as_["2.weight"], qs["2.weight"][:, [1, 3]])
        assert torch.equal(as_["2.bias"], qs["2.bias"])
    # the plan's own posterior still gives the plan's result
    _assert_posteriors_equal(comp.apply(q), comp.aligned)


def test_apply_tells_apart_posteriors_that_differ_only_by_a_unit_permutation():
    """Swapping two hidden units keeps every sum of the posterior; apply must still see the change."""
    teacher, q = _teacher(_mlp(5, 6, 2, seed=3))
    student = _mlp(5, 3, 2)
    crit = lambda ctx: torch.arange(ctx.units, dtype=torch.float32)  # noqa: E731  keeps the last 3
    plain = bd.align(teacher, student, criterion=crit, step=1.0)
    comp = bd.align(teacher, student, criterion=crit, step=1.0, probe=torch.randn(64, 5, generator=_seeded(92)))
    assert plain.layers[0]["kept"] == [3, 4, 5]
    perm = [0, 1, 5, 3, 4, 2]  # rows 2 and 5 of the first weight lie past its first 8 entries
    locs, scales = dict(q.locs), dict(q.scales)
    for k in ("0.weight", "0.bias"):
        locs[k], scales[k] = q.locs[k][perm], q.scales[k][perm]
    locs["2.weight"], scales["2.weight"] = q.locs["2.weight"][:, perm], q.scales["2.weight"][:, perm]
    q2 = MeanFieldPosterior(locs, scales, dict(q.info), dict(q.point_estimates))
    a2 = plain.apply(q2)
    assert torch.equal(a2.locs["0.weight"], q2.locs["0.weight"][[3, 4, 5]])
    assert not torch.equal(a2.locs["0.weight"], plain.aligned.locs["0.weight"])
    with pytest.raises(ValueError, match="compensation"):
        comp.apply(q2)


# ----------------------------------------------------------------------------- 10. serialization
def _named_teacher():
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


def test_plan_save_load_round_trip(tmp_path):
    teacher, q = _teacher(_named_teacher())
    student = nn.Sequential(OrderedDict([("a", nn.Linear(3, 4)), ("r", nn.ReLU()), ("b", nn.Linear(4, 2))]))
    x = torch.randn(64, 3, generator=_seeded(102))
    plan = bd.align(teacher, student, probe=x, compensation=False, removal="permutation")
    assert [L["removed"] for L in plan.layers] == [False, True, False]
    assert plan.param_map["fc_in.weight"] == "a.weight" and plan.param_map["fc_out.weight"] == "b.weight"
    assert [type(e) for e in plan.edits].count(Fold) == 1
    a = plan.apply(q)
    assert {k: tuple(v.shape) for k, v in a.locs.items()} == {
        "a.weight": (4, 3), "a.bias": (4,), "b.weight": (2, 4), "b.bias": (2,)}

    path = plan.save(tmp_path / "plan.pt")
    loaded = AlignmentPlan.load(path)
    _assert_posteriors_equal(loaded.apply(q), a)
    q2 = _other_posterior(q)  # the replay path (restrict, fold) after loading
    _assert_posteriors_equal(loaded.apply(q2), plan.apply(q2))
    assert loaded.layers == plan.layers and loaded.param_map == plan.param_map
    assert loaded.output_error == plan.output_error and loaded.removal == "permutation"

    data = json.loads(plan.to_json(tmp_path / "plan.json"))
    assert json.loads((tmp_path / "plan.json").read_text()) == data
    assert [L["teacher"] for L in data["layers"]] == ["fc_in", "fc_mid", "fc_out"]
    assert data["param_map"]["fc_out.bias"] == "b.bias"
    text = plan.summary()
    for name in ("fc_in", "fc_mid", "fc_out"):
        assert name in text
    assert "relative output error" in text and repr(plan) == text


# ----------------------------------------------------------------------------- 11. cnn-deep -> cnn-small
def test_cnn_deep_to_cnn_small():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        teacher_net = bd.models.build("cnn-deep", (40,), 10)
        student_net = bd.models.build("cnn-small", (40,), 10)
    teacher = bd.BNN(teacher_net, init_scale=0.05)
    q = teacher.posterior()
    x = torch.randn(64, 40, generator=_seeded(111))
    plan_c = bd.align(teacher, student_net, probe=x)
    plan_n = bd.align(teacher, student_net, probe=x, compensation=False)
    assert plan_c.compensation and plan_c.removal == "refit"
    for plan in (plan_c, plan_n):
        removed = [L["teacher"] for L in plan.layers if L["removed"]]
        assert removed == ["3"]  # the length-preserving Conv1d(32, 32, 3, padding=1)
        assert [len(L["kept"]) for L in plan.layers] == [16, 16, 16, 16, 10]  # '3' shrinks to square first
    assert plan_c.output_error < plan_n.output_error
    student = bd.BNN(student_net)
    aligned = plan_c.apply(q)
    assert {k: tuple(v.shape) for k, v in aligned.locs.items()} == {k: tuple(v) for k, v in student.shapes.items()}
    s = bd.BNN(student_net, prior=TeacherPosterior(q, plan=plan_c), init="prior-mean")
    s.eval()
    teacher.eval()
    assert _rel_err(s(x), teacher(x)) == pytest.approx(plan_c.output_error, rel=1e-3)


# ----------------------------------------------------------------------------- 12. KL
def _kl_check(plan, q, student_net, device="cpu", **prior_kw):
    s = bd.BNN(student_net, prior=TeacherPosterior(q, plan=plan, **prior_kw), init_scale=0.05).to(device)
    with torch.no_grad():  # init="auto" starts at the prior mean: move away so the loc term counts
        s.loc.add_(0.3 * torch.randn(s.loc.shape, generator=_seeded(5)).to(s.loc.device))
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
    teacher, q = _teacher(_named_teacher())
    student = nn.Sequential(OrderedDict([("a", nn.Linear(3, 4)), ("r", nn.ReLU()), ("b", nn.Linear(4, 2))]))
    plan = bd.align(teacher, student)
    assert not plan.is_identity
    _kl_check(plan, q, student, scale=scale)


@needs_cuda
def test_cuda_identity_plan_and_kl():
    teacher, q = _teacher(_mlp(3, 4, 2, seed=0))
    teacher = teacher.to("cuda")
    qc = teacher.posterior()
    plan = bd.align(teacher, _mlp(3, 4, 2, seed=5), probe=torch.randn(32, 3, device="cuda"))
    assert plan.is_identity
    a = plan.apply(qc)
    assert a.device.type == "cuda"
    _assert_posteriors_equal(a, qc)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda, id="cuda")])
@pytest.mark.parametrize("scale", [None, "posterior", "unit"])
def test_aligned_prior_kl_on_device(device, scale):
    """The plan and the prior on the teacher's device, with data-scored pruning and the
    library's default scale (None) as well as both explicit ones."""
    teacher, q = _teacher(_named_teacher())
    teacher = teacher.to(device)
    qd = teacher.posterior()
    student = nn.Sequential(OrderedDict([("a", nn.Linear(3, 4)), ("r", nn.ReLU()), ("b", nn.Linear(4, 2))]))
    probe = torch.randn(64, 3, generator=_seeded(9)).to(device)
    plan = bd.align(teacher, student, probe=probe)
    assert plan.apply(qd).device.type == device
    _kl_check(plan, qd, student, device=device, **({} if scale is None else {"scale": scale}))


def test_reloaded_teacher_posterior_is_still_the_plans_source(tmp_path):
    torch.manual_seed(0)
    teacher = bd.BNN(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), init_scale=0.05)
    x = torch.randn(64, 4)
    plan = bd.align(teacher, nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), probe=x)
    assert plan.compensation
    reloaded = bd.BNN(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    reloaded.load_posterior(bd.MeanFieldPosterior.load(teacher.posterior().save(tmp_path / "t.pt")))
    q2 = reloaded.posterior()  # scales moved by the softplus round trip (~1e-8), not by an edit
    a, b = plan.apply(q2), plan.apply(teacher.posterior())
    assert all(torch.equal(a.locs[k], b.locs[k]) for k in a.locs)
    swapped = teacher.posterior()
    swapped.locs["0.weight"] = swapped.locs["0.weight"][[1, 0, *range(2, 8)]]
    with pytest.raises(ValueError, match="re-fitted"):
        plan.apply(swapped)


def test_folding_never_leaves_a_collapsed_scale():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    teacher = bd.BNN(net, init_scale=0.05)
    q = teacher.posterior()
    # a middle layer with a negative row: no positive entry maps input 2
    q.locs["2.weight"] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, -1.0]])
    teacher.load_posterior(q)
    plan = bd.align(teacher, nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)), removal="permutation")
    scales = plan.apply(teacher.posterior()).scales["2.weight"]
    assert float(scales.min()) >= float(q.scales["4.weight"].min()) * (1 - 1e-6)


def test_init_from_an_aligned_posterior_carries_batchnorm_statistics():
    torch.manual_seed(0)
    t_net = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    teacher = bd.BNN(t_net)
    teacher.net[1].running_mean.copy_(torch.arange(6.0))
    s_net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    plan = bd.align(teacher, s_net, criterion=lambda ctx: torch.arange(ctx.units, dtype=torch.float))
    student = bd.BNN(s_net, init=plan.apply(teacher.posterior()))
    assert torch.equal(student.net[1].running_mean, torch.tensor([2.0, 3.0, 4.0, 5.0]))
