"""The alignment plan (distill/align/plan.py): applying, replaying typed edits, saving and loading."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

import bayesdistill as bd
from bayesdistill import MeanFieldPosterior, ShapeMismatchError
from bayesdistill.distill import AlignmentPlan
from bayesdistill.distill.align import Fold
from _align_helpers import (
    seeded,
    mlp,
    make_teacher,
    other_posterior,
    assert_posteriors_equal,
    keep_by_first_weight,
    hand_mlp_teacher,
    named_teacher,
)


def test_apply_to_another_posterior():
    teacher, q = make_teacher(hand_mlp_teacher())
    student = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    x = torch.randn(64, 3, generator=seeded(91))
    plain = bd.align(teacher, student, criterion=keep_by_first_weight)
    comp = bd.align(teacher, student, criterion=keep_by_first_weight, probe=x)
    assert comp.compensation and plain.layers[0]["kept"] == comp.layers[0]["kept"] == [1, 3]

    # a posterior of another network
    _, q_other = make_teacher(mlp(3, 5, 2))
    with pytest.raises(ShapeMismatchError, match=r"'0.weight' has shape \(5, 3\).*\(4, 3\)"):
        plain.apply(q_other)
    with pytest.raises(ShapeMismatchError, match="lacks"):
        plain.apply(MeanFieldPosterior({"0.weight": q.locs["0.weight"]}, {"0.weight": q.scales["0.weight"]}))

    # the same shapes but other values: the compensated means belong to the original teacher
    q2 = other_posterior(q)
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
    assert_posteriors_equal(comp.apply(q), comp.aligned)


def test_apply_tells_apart_posteriors_that_differ_only_by_a_unit_permutation():
    """Swapping two hidden units keeps every sum of the posterior; apply must still see the change."""
    teacher, q = make_teacher(mlp(5, 6, 2, seed=3))
    student = mlp(5, 3, 2)
    crit = lambda ctx: torch.arange(ctx.units, dtype=torch.float32)  # noqa: E731  keeps the last 3
    plain = bd.align(teacher, student, criterion=crit, step=1.0)
    comp = bd.align(teacher, student, criterion=crit, step=1.0, probe=torch.randn(64, 5, generator=seeded(92)))
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


def test_plan_save_load_round_trip(tmp_path):
    teacher, q = make_teacher(named_teacher())
    student = nn.Sequential(OrderedDict([("a", nn.Linear(3, 4)), ("r", nn.ReLU()), ("b", nn.Linear(4, 2))]))
    x = torch.randn(64, 3, generator=seeded(102))
    plan = bd.align(teacher, student, probe=x, compensation=False, removal="permutation")
    assert [L["removed"] for L in plan.layers] == [False, True, False]
    assert plan.param_map["fc_in.weight"] == "a.weight" and plan.param_map["fc_out.weight"] == "b.weight"
    assert [type(e) for e in plan.edits].count(Fold) == 1
    a = plan.apply(q)
    assert {k: tuple(v.shape) for k, v in a.locs.items()} == {
        "a.weight": (4, 3), "a.bias": (4,), "b.weight": (2, 4), "b.bias": (2,)}

    path = plan.save(tmp_path / "plan.pt")
    loaded = AlignmentPlan.load(path)
    assert_posteriors_equal(loaded.apply(q), a)
    q2 = other_posterior(q)  # the replay path (restrict, fold) after loading
    assert_posteriors_equal(loaded.apply(q2), plan.apply(q2))
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
