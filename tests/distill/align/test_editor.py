"""The posterior editor (distill/align/editor.py): phi restrictions, folds and least-squares re-fits.

Every case is hand-worked: the expected aligned posterior (restricted rows/columns, re-fitted
means) and the function of the pruned teacher are computed independently with plain torch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayesdistill as bd
from bayesdistill import MeanFieldPosterior, ShapeMismatchError, UnsupportedLayerError
from bayesdistill.distill import parse_chain
from bayesdistill.distill.align import PosteriorEditor
from _align_helpers import (
    TeacherPosterior,
    bn_reference,
    hand_mlp_teacher,
    keep_by_first_weight,
    make_teacher,
    mlp,
    random_teacher_and_data,
    rel_err,
    seeded,
    set_bn,
    set_weights,
    student_at,
)


@pytest.mark.parametrize("step", [1.0, 0.25])
def test_phi_mlp_restricts_rows_and_columns_exactly(step):
    teacher, q = make_teacher(hand_mlp_teacher())
    student = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    plan = bd.align(teacher, student, criterion=keep_by_first_weight, step=step)
    keep = [1, 3]
    assert plan.layers[0]["kept"] == keep and plan.layers[1]["kept"] == [0, 1]
    assert sorted(u for _, u, _ in plan.layers[0]["trace"]) == [0, 2]
    assert not plan.compensation and plan.criterion == "keep_by_first_weight"
    a = plan.apply(q)
    assert list(a.locs) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for src in ("locs", "scales"):
        qs, as_ = getattr(q, src), getattr(a, src)
        assert torch.equal(as_["0.weight"], qs["0.weight"][keep])
        assert torch.equal(as_["0.bias"], qs["0.bias"][keep])
        assert torch.equal(as_["2.weight"], qs["2.weight"][:, keep])
        assert torch.equal(as_["2.bias"], qs["2.bias"])

    # the pruned teacher computes exactly the teacher with units 0 and 2 removed
    s = student_at(plan, q, student)
    x = torch.randn(32, 3, generator=seeded(4))
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


def test_phi_conv_flatten_linear_removes_whole_channel_blocks():
    L = 5
    net = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * L, 2))
    g = seeded(11)
    w = torch.randn(4, 1, 3, generator=g)
    w[:, 0, 0] = torch.tensor([0.7, 0.1, 0.9, 0.2])  # keep channels 0 and 2
    set_weights(net[0], w, torch.randn(4, generator=g))
    set_weights(net[3], torch.randn(2, 4 * L, generator=g), torch.randn(2, generator=g))
    teacher, q = make_teacher(net)
    student = nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * L, 2))
    plan = bd.align(teacher, student, criterion=keep_by_first_weight)
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

    s = student_at(plan, q, student)
    x = torch.randn(16, 1, L, generator=seeded(12))
    h = torch.relu(F.conv1d(x, q.locs["0.weight"], q.locs["0.bias"], padding=1)).flatten(1)
    wz = q.locs["3.weight"].clone()
    wz[:, L : 2 * L] = 0.0
    wz[:, 3 * L :] = 0.0
    torch.testing.assert_close(s(x), h @ wz.T + q.locs["3.bias"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bayesian_norm", [False, True])
def test_phi_linear_batchnorm_restricts_the_norm_and_keeps_the_function(bayesian_norm):
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    g = seeded(21)
    w0 = torch.randn(4, 3, generator=g)
    w0[:, 0] = torch.tensor([0.9, 0.1, 0.8, 0.2])  # keep units 0 and 2
    set_weights(net[0], w0, torch.randn(4, generator=g))
    set_weights(net[3], torch.randn(2, 4, generator=g), torch.randn(2, generator=g))
    set_bn(net[1], 22)
    teacher, q = make_teacher(net, bayesian_norm=bayesian_norm)
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.ReLU(), nn.Linear(2, 2))
    plan = bd.align(teacher, student, criterion=keep_by_first_weight)
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

    s = student_at(plan, q, student, bayesian_norm=bayesian_norm)
    x = torch.randn(32, 3, generator=seeded(23))
    pre = x @ q.locs["0.weight"].T + q.locs["0.bias"]
    h = torch.relu(bn_reference(pre, q.point_estimates["net.1.running_mean"], q.point_estimates["net.1.running_var"], bw, bb))
    w1z = q.locs["3.weight"].clone()
    w1z[:, [1, 3]] = 0.0
    torch.testing.assert_close(s(x), h @ w1z.T + q.locs["3.bias"], rtol=1e-6, atol=1e-6)


def test_phi_conv_batchnorm_flatten():
    L = 4
    net = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * L, 2))
    g = seeded(31)
    w = torch.randn(4, 1, 3, generator=g)
    w[:, 0, 0] = torch.tensor([0.1, 0.9, 0.2, 0.8])  # keep channels 1 and 3
    set_weights(net[0], w, torch.randn(4, generator=g))
    set_weights(net[4], torch.randn(2, 4 * L, generator=g), torch.randn(2, generator=g))
    set_bn(net[1], 32)
    teacher, q = make_teacher(net)
    student = nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), nn.BatchNorm1d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * L, 2))
    plan = bd.align(teacher, student, criterion=keep_by_first_weight)
    keep = [1, 3]
    assert plan.layers[0]["kept"] == keep
    a = plan.apply(q)
    for k in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(a.point_estimates[f"net.1.{k}"], q.point_estimates[f"net.1.{k}"][keep])
    assert torch.equal(a.locs["4.weight"], q.locs["4.weight"][:, [4, 5, 6, 7, 12, 13, 14, 15]])
    s = student_at(plan, q, student)
    x = torch.randn(16, 1, L, generator=seeded(33))
    pe = q.point_estimates
    pre = F.conv1d(x, q.locs["0.weight"], q.locs["0.bias"], padding=1)
    h = torch.relu(bn_reference(pre, pe["net.1.running_mean"], pe["net.1.running_var"], pe["net.1.weight"], pe["net.1.bias"]))
    wz = q.locs["4.weight"].clone()
    wz[:, :L] = 0.0
    wz[:, 2 * L : 3 * L] = 0.0
    torch.testing.assert_close(s(x), h.flatten(1) @ wz.T + q.locs["4.bias"], rtol=1e-6, atol=1e-6)


def test_compensation_refit_is_the_least_squares_solution():
    teacher, q, x = random_teacher_and_data()
    student = mlp(4, 3, 3, seed=1)
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
    lstsq_err = rel_err(design @ sol, target)
    assert rec["after"] == pytest.approx(lstsq_err, rel=1e-3, abs=1e-6)
    assert rec["after"] < rec["before"]


# ----------------------------------------------------------------------------- the editor directly
def test_the_editor_restricts_folds_runs_refits_and_exports():
    teacher, q = make_teacher(mlp(3, 3, 3, 2, seed=4))  # layers '0', '2', '4'
    ed = PosteriorEditor(parse_chain(teacher.net), q)
    assert ed.kept == [[0, 1, 2], [0, 1, 2], [0, 1]] and ed.group == [1, 1, 1] and ed.removed == [False] * 3
    # phi: rows of layer 0, columns of layer 1, means and scales alike
    ed.restrict(0, [2, 0])
    for mine, src in ((ed.Wm, q.locs), (ed.Ws, q.scales)):
        assert torch.equal(mine[0], src["0.weight"][[2, 0]]) and torch.equal(mine[1], src["2.weight"][:, [2, 0]])
    assert torch.equal(ed.bm[0], q.locs["0.bias"][[2, 0]]) and ed.kept[0] == [2, 0]
    # psi: layer 1 replaced by a map M [3, 2]; the next layer absorbs it, the bias is carried through
    mix = torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, 0.5]])
    ed.fold(1, mix)
    w4, s4 = q.locs["4.weight"], q.scales["4.weight"]
    torch.testing.assert_close(ed.Wm[2], w4 @ mix)
    torch.testing.assert_close(ed.Ws[2], (s4.square() @ mix.square()).sqrt())
    torch.testing.assert_close(ed.bm[2], q.locs["4.bias"] + w4 @ q.locs["2.bias"])
    assert ed.removed == [False, True, False]
    # the edited network at its means: the removed layer is skipped
    x = torch.randn(64, 3, generator=seeded(6))
    ins, pres, _, out = ed.run(x)
    h = torch.relu(x @ q.locs["0.weight"][[2, 0]].T + q.locs["0.bias"][[2, 0]])
    assert set(pres) == {0, 2} and torch.equal(ins[2], h)
    torch.testing.assert_close(out, h @ ed.Wm[2].T + ed.bm[2])
    # a re-fit: layer 2's means by least squares onto a target it can reach exactly
    a, c = torch.randn(2, 2, generator=seeded(7)), torch.randn(2, generator=seeded(8))
    scales_before = ed.Ws[2].clone()
    before, after = ed.refit(2, ins[2], h @ a.T + c)
    assert before > 0.1 and after < 1e-4
    torch.testing.assert_close(ed.Wm[2], a, rtol=1e-2, atol=1e-2)
    assert torch.equal(ed.Ws[2], scales_before)  # means only
    # export under the student's names, checked against its shapes
    names = {"0.weight": "a.weight", "0.bias": "a.bias", "4.weight": "b.weight", "4.bias": "b.bias"}
    post = ed.export(names, {"a.weight": [2, 3], "b.weight": [2, 2]})
    assert list(post.locs) == ["a.weight", "a.bias", "b.weight", "b.bias"]
    assert torch.equal(post.locs["b.weight"], ed.Wm[2]) and post.info["a.weight"].module_type == "Linear"
    with pytest.raises(ShapeMismatchError, match=r"'a\.weight' has shape \(2, 3\) but the student expects \(5, 3\)"):
        ed.export(names, {"a.weight": [5, 3]})


def test_the_editor_refuses_what_it_cannot_relate():
    teacher, q = make_teacher(mlp(3, 4, 2))
    partial = MeanFieldPosterior({"2.weight": q.locs["2.weight"]}, {"2.weight": q.scales["2.weight"]})
    with pytest.raises(ShapeMismatchError, match=r"no entry '0\.weight' for layer '0'"):
        PosteriorEditor(parse_chain(teacher.net), partial)
    net = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(10, 2))
    bnn = bd.BNN(net)
    with pytest.raises(UnsupportedLayerError, match=r"'3' reads 10 features after the 4 channels of '0'"):
        PosteriorEditor(parse_chain(bnn.net), bnn.posterior())
