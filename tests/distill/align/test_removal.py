"""Removing layers (distill/align/removal.py): the rules, the one assignment solver, the choice.

The expected folded posteriors are computed independently with plain torch/scipy.
"""

from __future__ import annotations

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

import bayesdistill as bd
from bayesdistill import DataError
from bayesdistill.distill import REMOVALS, register_removal
from bayesdistill.distill.align import Fold, Refit, Removal
from bayesdistill.distill.align.removal import PermutationRemoval, relative_residual, scaled_permutation
from _align_helpers import (
    DIAG,
    PERM,
    make_teacher,
    psi_teacher,
    seeded,
    set_weights,
    student_at,
    teacher_out,
)


@pytest.fixture
def removal_registry():
    """Restore the removal-rule registry after a test that registers its own rules."""
    before = dict(REMOVALS)
    yield REMOVALS
    REMOVALS.clear()
    REMOVALS.update(before)


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


# ----------------------------------------------------------------------------- the assignment solver
def test_one_assignment_solver_serves_the_choice_and_the_fold():
    U = PERM @ DIAG + 0.15 * torch.randn(3, 3, generator=seeded(54))
    a = scaled_permutation(U)
    assert a.rows.tolist() == [0, 1, 2] and torch.equal((a.mix > 0).float(), PERM)
    assert torch.equal(a.mix, U * PERM)  # D_ii = U[i, pi(i)], all positive here
    # a tall matrix (a layer still to be shrunk): the rows that fit best are matched
    tall = torch.cat([U[:1], 0.4 * torch.ones(1, 3), U[1:]])  # row 1 spreads its energy evenly
    t = scaled_permutation(tall)
    assert t.rows.tolist() == [0, 2, 3] and torch.equal(t.mix, a.mix)
    # choosing layers ranks by the residual on those rows; folding uses the same map
    rule = PermutationRemoval()
    assert rule.score(tall) == pytest.approx(relative_residual(U, a.mix), rel=1e-6)
    assert torch.equal(rule.mix(U), a.mix)


def _two_removable_layers(noisy: int) -> nn.Sequential:
    """3 -> 3 -> 3 -> 3 -> 2 with layers '2' and '4' removable; the ``noisy`` one is not a P D."""
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(),
                        nn.Linear(3, 2))
    g = seeded(55)
    set_weights(net[0], torch.randn(3, 3, generator=g), torch.randn(3, generator=g))
    for i in (2, 4):
        middle = PERM @ DIAG + (0.5 * torch.randn(3, 3, generator=g) if i == noisy else 0.0)
        set_weights(net[i], middle, torch.zeros(3))
    set_weights(net[6], torch.randn(2, 3, generator=g), torch.randn(2, generator=g))
    return net


@pytest.mark.parametrize("noisy", [2, 4])
def test_the_layer_closest_to_a_scaled_permutation_is_removed(noisy):
    teacher, _ = make_teacher(_two_removable_layers(noisy))
    student = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    plan = bd.align(teacher, student, removal="permutation")
    exact = 6 - noisy  # the other one
    assert [L["teacher"] for L in plan.layers if L["removed"]] == [str(exact)]
    assert plan.layers[[L["teacher"] for L in plan.layers].index(str(exact))]["residual"] < 1e-6


# ----------------------------------------------------------------------------- rules by name
class _HalfIdentity(Removal):
    """A test rule: fold the layer as I / 2 (the next layer reads half of its input)."""

    def mix(self, w):
        return 0.5 * torch.eye(w.shape[0], dtype=w.dtype, device=w.device)


class _IdentityThenRefit(Removal):
    """A test rule: condition on U = I, then re-fit the next layer on the probe data."""

    needs_probe = True
    refits_next = True

    def mix(self, w):
        return torch.eye(w.shape[0], dtype=w.dtype, device=w.device)


def test_a_removal_rule_registered_by_a_class_is_used_by_align(removal_registry):
    assert register_removal("half-identity")(_HalfIdentity) is _HalfIdentity
    assert removal_registry["half-identity"] is _HalfIdentity and _HalfIdentity.name == "half-identity"
    teacher, q = make_teacher(psi_teacher(torch.eye(3)))
    student = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    plan = bd.align(teacher, student, removal="half-identity")
    assert plan.removal == "half-identity" and [L["removed"] for L in plan.layers] == [False, True, False]
    assert [type(e) for e in plan.edits] == [Fold] and torch.equal(plan.edits[0].mix, 0.5 * torch.eye(3))
    a = plan.apply(q)
    torch.testing.assert_close(a.locs["2.weight"], 0.5 * q.locs["4.weight"])
    torch.testing.assert_close(a.scales["2.weight"], 0.5 * q.scales["4.weight"])  # sqrt(S^2 (I/2)^2)
    assert plan.layers[1]["residual"] == pytest.approx(0.5)  # ||I - I/2|| / ||I||
    # an instance works too; the plan records its name (an unregistered rule: its class name)
    assert bd.align(teacher, student, removal=_HalfIdentity()).removal == "half-identity"

    class Unregistered(Removal):
        refits_next = True

        def mix(self, w):
            return torch.eye(w.shape[0])

    with pytest.raises(DataError, match="removal='Unregistered' needs probe data"):  # it re-fits the next layer
        bd.align(teacher, student, removal=Unregistered())
    with pytest.raises(ValueError, match="already registered"):
        register_removal("identity")(_HalfIdentity)
    with pytest.raises(TypeError, match="Removal subclass"):
        register_removal("not-a-rule")(object)
    with pytest.raises(ValueError, match="'auto'"):
        register_removal("auto")
    with pytest.raises(ValueError, match="half-identity"):  # the error lists the registered rules
        bd.align(teacher, student, removal="drop")


def test_a_registered_rule_that_refits_needs_and_uses_probe_data(removal_registry):
    register_removal("identity-refit")(_IdentityThenRefit)
    teacher, q = make_teacher(psi_teacher(PERM @ DIAG))
    student = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(DataError, match="removal='identity-refit' needs probe data"):
        bd.align(teacher, student, removal="identity-refit")
    x = 3.0 * torch.randn(256, 3, generator=seeded(71))
    plan = bd.align(teacher, student, removal="identity-refit", probe=x, compensation=False)
    assert [type(e) for e in plan.edits] == [Fold, Refit] and plan.edits[1].layer == 2
    rec = plan.layers[2]["reconstruction"]
    assert [r["step"] for r in rec] == ["removal"]
    # the identity drops P D, the least-squares re-fit of the next layer takes it back
    assert rec[0]["before"] > 0.1 and rec[0]["after"] < 1e-3
    teacher.eval()
    torch.testing.assert_close(student_at(plan, q, student)(x), teacher_out(q, x), rtol=1e-2, atol=1e-2)
