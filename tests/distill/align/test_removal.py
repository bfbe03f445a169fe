"""Removing layers (distill/align/removal.py): the rules, the one assignment solver, the choice.

The expected folded posteriors are computed independently with plain torch/scipy.
"""

from __future__ import annotations

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

import bayesdistill as bd
from _align_helpers import (
    seeded,
    set_weights,
    make_teacher,
    student_at,
    psi_teacher,
    teacher_out,
    PERM,
    DIAG,
)


def test_psi_scaled_permutation_is_exact_and_identity_is_not():
    PD = PERM @ DIAG
    teacher, q = make_teacher(psi_teacher(PD))
    student = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    x = 3.0 * torch.randn(256, 3, generator=seeded(52))  # any sign: the first ReLU makes them >= 0
    ref = teacher_out(q, x)

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
    s = student_at(plan, q, student)
    torch.testing.assert_close(s(x), ref, rtol=1e-5, atol=1e-5)

    # the paper's rule (condition on U = I) drops P D: a large error on this teacher
    plan_i = bd.align(teacher, student, removal="identity")
    s_i = student_at(plan_i, q, student)
    err = (s_i(x) - ref).norm() / ref.norm()
    assert err > 0.3
    assert plan_i.layers[1]["residual"] == pytest.approx(float((PD - torch.eye(3)).norm() / PD.norm()), rel=1e-6)


def test_psi_identity_is_exact_for_an_identity_layer():
    teacher, q = make_teacher(psi_teacher(torch.eye(3)))
    student = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    plan = bd.align(teacher, student, removal="identity")
    assert plan.layers[1]["removed"] and plan.layers[1]["residual"] == 0.0
    a = plan.apply(q)
    assert torch.equal(a.locs["2.weight"], q.locs["4.weight"])  # U_4 I = U_4
    x = 3.0 * torch.randn(128, 3, generator=seeded(53))
    torch.testing.assert_close(student_at(plan, q, student)(x), teacher_out(q, x), rtol=1e-5, atol=1e-5)


def test_psi_residual_of_a_non_exact_layer():
    g = seeded(54)
    U = PERM @ DIAG + 0.15 * torch.randn(3, 3, generator=g)
    teacher, q = make_teacher(psi_teacher(U))
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
    g = seeded(56)
    set_weights(net[0], torch.randn(3, 1, 3, generator=g), torch.randn(3, generator=g))
    k = torch.zeros(3, 3, 3)
    k[:, :, 1] = PERM @ DIAG  # a channel map: only the center tap
    set_weights(net[2], k, torch.zeros(3))
    set_weights(net[4], torch.randn(2, 3, 3, generator=g), torch.randn(2, generator=g))
    teacher, q = make_teacher(net)
    student = nn.Sequential(nn.Conv1d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv1d(3, 2, 3, padding=1), nn.ReLU(),
                            nn.Flatten(), nn.Linear(2 * L, 2))
    plan = bd.align(teacher, student)  # no data: removal by scaled permutation
    assert plan.removal == "permutation" and [L_["removed"] for L_ in plan.layers] == [False, True, False, False]
    assert plan.layers[1]["residual"] < 1e-6
    a = plan.apply(q)
    # the next kernel absorbs the channel map: W'[o, i, k] = sum_c W[o, c, k] (P D)[c, i]
    torch.testing.assert_close(a.locs["2.weight"], torch.einsum("ock,ci->oik", q.locs["4.weight"], PERM @ DIAG))
    assert torch.equal(a.locs["5.weight"], q.locs["7.weight"])
    x = 2.0 * torch.randn(16, 1, L, generator=seeded(57))
    teacher.eval()
    torch.testing.assert_close(student_at(plan, q, student)(x), teacher(x), rtol=1e-5, atol=1e-5)


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
