"""Every network a pipeline evaluates gets its OOD detection and selective prediction: the values
equal calling ``bd.diagnostics.ood_detection`` / ``selective_prediction`` directly on the same
network and OOD sets; ``kept`` is the share of the teacher's above-chance AUROC; ``ood=False``
removes them; regression runs say that they do not apply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bayesdistill as bd
from bayesdistill.experiments import (DistillRecipe, FunctionSpaceRecipe, RunSettings, Stages, TeacherRecipe,
                                      TeacherResult, UncertaintyRecipe, UncertaintyResult, distill, evaluate_model,
                                      fit_teacher, function_space, reports)
from bayesdistill.experiments.uncertainty import (KEPT_FORMULA, default_kinds, evaluate_uncertainty, ood_sets,
                                                  score_networks, uncertainty_step)

S = 3
RUN = RunSettings(num_samples=S, quiet=True, device="cpu", seed=1)
TEACHER = TeacherRecipe(epochs=1, batch_size=64)
SCORES = ("entropy", "mutual_information")
DIGITS_KINDS = ("inverted", "rotated", "noise")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> TeacherResult:
    out = tmp_path_factory.mktemp("uncertainty") / "teacher"
    return fit_teacher(out, TEACHER, dataset="digits", model="mlp", hidden=(16,), run=RUN)


def _direct(bnn: bd.BNN, name: str, seed: int = RUN.seed, draws: int = S) -> dict:
    """The independent computation: the two diagnostics called on the network and the OOD sets."""
    test = bd.datasets.load("digits").test
    ood = {kind: bd.diagnostics.ood_detection(bnn, test, bd.datasets.ood("digits", kind, seed=seed).ood,
                                              num_samples=draws, seed=seed, scores=SCORES, name=name)
           for kind in DIGITS_KINDS}
    sel = bd.diagnostics.selective_prediction(bnn, test, num_samples=draws, seed=seed, name=name)
    return {"ood": ood, "selective": sel}


def _check_equal(u: UncertaintyResult, direct: dict) -> None:
    assert u.applicable and u.kinds == list(DIGITS_KINDS) and u.scores == list(SCORES)
    assert u.num_samples == S and u.seed == RUN.seed and u.num_in == 360 and u.num_ood == {k: 360 for k in DIGITS_KINDS}
    for kind, res in direct["ood"].items():
        assert u.ood[kind] == res.to_dict()
        assert u.auroc[kind] == {s: res[s].auroc for s in SCORES}
    for s in SCORES:
        assert u.mean_auroc[s] == pytest.approx(sum(direct["ood"][k][s].auroc for k in DIGITS_KINDS) / 3, abs=1e-15)
    sel = direct["selective"]
    assert u.selective == sel.to_dict()
    assert u.selective_area == sel.area_accuracy and u.coverage == 0.9 and u.accuracy_at_coverage == sel.accuracy_at[0.9]


def _kept(student: UncertaintyResult, teacher: UncertaintyResult) -> None:
    assert student.kept["reference"] == "teacher" and student.kept["formula"] == KEPT_FORMULA
    for s in SCORES:
        expected = (student.mean_auroc[s] - 0.5) / (teacher.mean_auroc[s] - 0.5)
        assert student.kept["auroc"][s] == pytest.approx(expected, rel=1e-12)
    assert student.kept["selective_area"] == pytest.approx(student.selective_area / teacher.selective_area)


def test_the_default_kinds_need_no_retraining() -> None:
    assert default_kinds("mnist1d") == ("reversed", "phase-shuffled", "scaled", "noise")
    assert default_kinds("digits") == DIGITS_KINDS
    assert default_kinds("synthetic-regression") == () and default_kinds("mypkg.data:load") == ()
    with pytest.raises(ValueError, match="held-out-classes needs a network trained without"):
        ood_sets("mnist1d", UncertaintyRecipe(kinds=("held-out-classes",)), 0)
    with pytest.raises(ValueError, match="cannot be scored"):
        ood_sets("digits", UncertaintyRecipe(kinds=("reversed",)), 0)
    with pytest.raises(ValueError, match="coverage"):
        UncertaintyRecipe(coverage=0.0)


def test_the_teacher_s_values_are_those_of_the_diagnostics(teacher: TeacherResult) -> None:
    u = teacher.uncertainty
    _check_equal(u, _direct(teacher.bnn, "teacher"))
    assert u.kept is None  # no teacher to keep from
    assert "digits" in u.statement and "inverted, rotated, noise" in u.statement and "held-out-classes" in u.statement
    assert set(u.descriptions) == set(DIGITS_KINDS) and "1 - x" in u.descriptions["inverted"]
    saved = json.loads((teacher.out / "metrics.json").read_text())
    assert saved["uncertainty"] == json.loads(json.dumps(u.to_dict()))
    assert "ood_results" not in saved["uncertainty"] and saved["config"]["ood"] is True
    assert set(saved["test"]) >= {"accuracy", "nll", "ece"} and "uncertainty" not in saved["test"]


def test_evaluate_reproduces_the_run_s_uncertainty(teacher: TeacherResult) -> None:
    again = evaluate_model(teacher.out, num_samples=S)
    mine, theirs = again.uncertainty.to_dict(), teacher.uncertainty.to_dict()
    for d in (mine, theirs):  # the networks' names differ (the architecture / "teacher")
        for r in d["ood"].values():
            r.pop("name")
        d["selective"].pop("name")
    assert mine == theirs
    assert evaluate_model(teacher.out, num_samples=S, ood=False).uncertainty is None
    table = reports.evaluation_summary(again)
    assert "OOD detection: AUROC" in table and "inverted" in table and "selective area" in table


def test_distill_scores_every_network_and_the_share_kept(teacher: TeacherResult, tmp_path: Path) -> None:
    r = distill(tmp_path / "s", teacher.out, "mlp", DistillRecipe(epochs=1, batch_size=64), hidden=(8,),
                train_fraction=0.2, probe_size=50, run=RUN)
    t = r.teacher.uncertainty
    _check_equal(t, _direct(teacher.bnn, "teacher"))
    assert t.kept is None
    _check_equal(r.distilled.uncertainty, _direct(r.student_bnn, "distilled"))
    _check_equal(r.plain.uncertainty, _direct(r.plain_bnn, "plain"))
    aligned_bnn = bd.distill.aligned_network(teacher.bnn, bd.models.build("mlp", (64,), 10, hidden=(8,)), r.alignment)
    _check_equal(r.aligned["uncertainty"], _direct(aligned_bnn, "aligned"))
    for u in (r.aligned["uncertainty"], r.distilled.uncertainty, r.plain.uncertainty):
        _kept(u, t)
    saved = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(r.to_dict()))
    for key in ("teacher", "aligned", "distilled", "plain"):
        assert saved[key]["uncertainty"]["applicable"] is True
    for png in ("ood_roc.png", "selective.png"):
        assert (tmp_path / "s" / png).read_bytes()[:4] == b"\x89PNG"
    table = reports.distill_summary(r)
    assert "OOD AUROC MI (mean of 3)" in table and "kept AUROC entropy" in table and "selective area" in table


def test_function_space_students(teacher: TeacherResult, tmp_path: Path) -> None:
    recipe = FunctionSpaceRecipe(epochs=1, train_fraction=0.2, variants=(("plain", ()), ("kd", ("kd",))))
    fs = function_space(tmp_path / "fs", teacher.out, recipe, run=RUN)
    _check_equal(fs.teacher.uncertainty, _direct(teacher.bnn, "teacher mlp"))
    for name, student in fs.students.items():
        _check_equal(student.uncertainty, _direct(fs.networks[name], name))
        _kept(student.uncertainty, fs.teacher.uncertainty)
    cols = reports.function_space_columns(fs.to_dict())
    assert cols["kd"]["selective area"] == fs.students["kd"].uncertainty.selective_area
    assert "selective area" not in reports.function_space_columns(fs.to_dict(), uncertainty=False)["kd"]


def test_no_ood_removes_them_and_their_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    on = fit_teacher(tmp_path / "on", TEACHER, dataset="digits", model="mlp", hidden=(4,), checkpoint=False,
                     run=RunSettings(num_samples=2, device="cpu"))
    err = capsys.readouterr().err
    assert "fit [3/4] OOD detection against 3 OOD sets (inverted, rotated, noise) and selective prediction of " \
           "1 network (2 posterior draws) ..." in err
    assert "OOD detection: AUROC" in reports.teacher_summary(on)
    off = fit_teacher(tmp_path / "off", TEACHER, dataset="digits", model="mlp", hidden=(4,), checkpoint=False,
                      run=RunSettings(num_samples=2, device="cpu", ood=False))
    err = capsys.readouterr().err
    assert "OOD" not in err and "fit [3/3] writing" in err
    saved = json.loads((tmp_path / "off" / "metrics.json").read_text())
    assert off.uncertainty is None and saved["uncertainty"] is None and saved["config"]["ood"] is False
    assert off.test == on.test  # the rest of the run is unchanged
    assert "OOD" not in reports.teacher_summary(off)


def test_regression_states_that_it_does_not_apply(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    r = fit_teacher(tmp_path / "reg", TEACHER, dataset="synthetic-regression", model="mlp", hidden=(4,),
                    checkpoint=False, run=RunSettings(num_samples=2, device="cpu"))
    assert "OOD" not in capsys.readouterr().err  # nothing to compute: no stage
    u = json.loads((tmp_path / "reg" / "metrics.json").read_text())["uncertainty"]
    assert u["applicable"] is False and u["kinds"] == [] and u["mean_auroc"] == {}
    assert u["statement"].startswith("not applicable") and "regression" in u["statement"]
    assert "synthetic-regression" in u["statement"] and r.uncertainty.statement == u["statement"]
    assert evaluate_model(tmp_path / "reg", num_samples=2).uncertainty.applicable is False
    assert "uncertainty: not applicable" in reports.teacher_summary(r)


def test_a_classifier_without_ood_sets_gets_the_selective_prediction(teacher: TeacherResult) -> None:
    sets = ood_sets("mypkg.data:load", UncertaintyRecipe(), 0)
    assert not sets.inputs and "no OOD sets" in sets.reason
    test = bd.datasets.load("digits").test
    u = evaluate_uncertainty(teacher.bnn, test, sets, UncertaintyRecipe(), num_samples=2, seed=0, name="t")
    assert u.applicable and u.kinds == [] and u.mean_auroc == {} and "only the selective prediction" in u.statement
    assert u.selective == bd.diagnostics.selective_prediction(teacher.bnn, test, num_samples=2, seed=0,
                                                              name="t").to_dict()
    assert "selective area" in reports.uncertainty_rows(u.to_dict())


def test_score_networks_is_one_stage(teacher: TeacherResult, capsys: pytest.CaptureFixture[str]) -> None:
    stages = Stages(1, "job")
    step = uncertainty_step("digits", "classification", UncertaintyRecipe(kinds=("noise",), num_samples=2),
                            enabled=True, num_samples=8, seed=0)
    out = score_networks(step, stages, {"a": teacher.bnn, "b": teacher.bnn}, bd.datasets.load("digits").test)
    assert out["a"].num_samples == 2 and out["a"].kinds == ["noise"] and out["a"].auroc == out["b"].auroc
    assert capsys.readouterr().err.startswith("job [1/1] OOD detection against 1 OOD sets (noise) and selective "
                                              "prediction of 2 networks (2 posterior draws) ...")
    assert score_networks(None, stages, {"a": teacher.bnn}, None) == {"a": None}


def test_kept_is_none_where_the_teacher_is_at_chance() -> None:
    from bayesdistill.experiments.uncertainty import with_kept

    def result(mean: dict, area: float) -> UncertaintyResult:
        return UncertaintyResult(True, "s", kinds=["noise"], scores=list(mean), mean_auroc=mean, selective_area=area,
                                 coverage=0.9, accuracy_at_coverage=area)

    teacher = result({"entropy": 0.75, "mutual_information": 0.5}, 0.8)  # a point estimate: MI AUROC 0.5 exactly
    student = with_kept(result({"entropy": 0.625, "mutual_information": 0.6}, 0.4), teacher)
    assert student.kept["auroc"] == {"entropy": 0.5, "mutual_information": None}
    assert student.kept["selective_area"] == 0.5
    rows = reports.uncertainty_rows(student.to_dict(), placeholders=True)
    assert rows["kept AUROC entropy"] == 0.5 and rows["kept AUROC MI"] == "-"
    assert "kept AUROC MI" not in reports.uncertainty_rows(student.to_dict())
    assert with_kept(None, teacher) is None and with_kept(teacher, None).kept is None
