"""The alignment plan (distill/align/plan.py): applying, replaying typed edits, saving and loading."""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

import bayesdistill as bd
from bayesdistill import MeanFieldPosterior, ShapeMismatchError
from bayesdistill.distill import AlignmentPlan
from bayesdistill.distill.align import Chain, Fold, LayerGeometry, PosteriorEditor, Refit, Restrict
from _align_helpers import (
    assert_posteriors_equal,
    hand_mlp_teacher,
    keep_by_first_weight,
    make_teacher,
    mlp,
    named_teacher,
    other_posterior,
    seeded,
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


# ----------------------------------------------------------------------------- typed edits
def _small_student() -> nn.Sequential:
    return nn.Sequential(OrderedDict([("a", nn.Linear(3, 4)), ("r", nn.ReLU()), ("b", nn.Linear(4, 2))]))


def test_typed_edits_round_trip_through_save_load_and_replay_to_the_same_posterior(tmp_path):
    teacher, q = make_teacher(named_teacher())
    student = _small_student()
    plan = bd.align(teacher, student, removal="permutation", step=0.5)
    assert {type(e) for e in plan.edits} == {Restrict, Fold}
    assert all(isinstance(e.layer, int) for e in plan.edits)
    assert all(isinstance(e.keep, tuple) for e in plan.edits if isinstance(e, Restrict))
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.edits[0].layer = 2
    assert plan.geometry == tuple(LayerGeometry(p, "linear", i, o, True) for p, i, o in
                                  (("fc_in", 3, 6), ("fc_mid", 6, 6), ("fc_out", 6, 2)))

    loaded = AlignmentPlan.load(plan.save(tmp_path / "plan.pt"))
    assert loaded.edits == plan.edits and loaded.geometry == plan.geometry
    assert [type(e) for e in loaded.edits] == [type(e) for e in plan.edits]
    # replaying the loaded edits one by one on the teacher's posterior gives the aligned posterior
    editor = PosteriorEditor(Chain([], [g.to_layer(i) for i, g in enumerate(loaded.geometry)]), q)
    for edit in loaded.edits:
        edit.replay(editor)
    assert_posteriors_equal(editor.export(loaded.param_map, loaded.student_shapes), plan.aligned)
    q2 = other_posterior(q)
    assert_posteriors_equal(loaded.apply(q2), plan.apply(q2))

    # compensation adds Refit edits: saved and loaded in order, but not replayable on another posterior
    comp = bd.align(teacher, student, probe=torch.randn(64, 3, generator=seeded(103)))
    refits = [e for e in comp.edits if isinstance(e, Refit)]
    assert {e.layer for e in refits} == {1, 2}  # after each pruning round of layers 0 and 1, and the fold
    loaded_c = AlignmentPlan.load(comp.save(tmp_path / "comp.pt"))
    assert loaded_c.edits == comp.edits
    assert_posteriors_equal(loaded_c.apply(q), comp.aligned)
    with pytest.raises(ValueError, match="re-fitted"):
        loaded_c.apply(q2)
    with pytest.raises(ValueError, match="cannot be replayed"):
        refits[0].replay(editor)


def _v1_state(plan: AlignmentPlan) -> dict:
    """The state a plan of format version 1 had: untyped ``ops`` and the geometry as ``chain``."""
    ops = []
    for e in plan.edits:
        if isinstance(e, Restrict):
            ops.append(["restrict", e.layer, list(e.keep)])
        elif isinstance(e, Fold):
            ops.append(["fold", e.layer, e.mix])
        else:
            ops.append(["set", e.layer])
    chain = [{"path": g.path, "in": g.in_units, "out": g.out_units, "bias": g.bias, "kind": g.kind,
              "norms": [list(n) for n in g.norms]} for g in plan.geometry]
    state = {k: v for k, v in plan.state().items() if k not in ("edits", "geometry")}
    return {**state, "version": 1, "ops": ops, "chain": chain}


def test_a_version_1_plan_is_read_and_other_versions_are_refused(tmp_path):
    teacher, q = make_teacher(named_teacher())
    x = torch.randn(64, 3, generator=seeded(104))
    for plan in (bd.align(teacher, _small_student(), removal="permutation"), bd.align(teacher, _small_student(), probe=x)):
        torch.save(_v1_state(plan), tmp_path / "v1.pt")
        old = AlignmentPlan.load(tmp_path / "v1.pt")
        assert old.edits == plan.edits and old.geometry == plan.geometry and old.layers == plan.layers
        assert_posteriors_equal(old.apply(q), plan.apply(q))
    # the replay path of a version-1 plan (restrict, fold) on another posterior
    plain = bd.align(teacher, _small_student(), removal="permutation")
    q2 = other_posterior(q)
    assert_posteriors_equal(AlignmentPlan.from_state(_v1_state(plain)).apply(q2), plain.apply(q2))
    with pytest.raises(ValueError, match=r"version 99 is not supported.*versions 1, 2"):
        AlignmentPlan.from_state({**plan.state(), "version": 99})
    with pytest.raises(ValueError, match="format tag"):
        AlignmentPlan.from_state({"layers": []})
