"""The pipelines as library functions, on tiny settings: typed results whose ``to_dict()`` is
``metrics.json``, the run-folder rule, threads restored, the stage counter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bayesdistill as bd
from bayesdistill.experiments import (DistillRecipe, DistillResult, FunctionSpaceRecipe, FunctionSpaceResult,
                                      RunSettings, Stages, TeacherRecipe, TeacherResult, distill, evaluate_model,
                                      fit_teacher, function_space)

RUN = RunSettings(num_samples=2, quiet=True, device="cpu")
TEACHER = TeacherRecipe(epochs=1, batch_size=64)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> TeacherResult:
    out = tmp_path_factory.mktemp("pipelines") / "teacher"
    return fit_teacher(out, TEACHER, dataset="digits", model="mlp", hidden=(16,), run=RUN)


def test_fit_teacher_returns_what_metrics_json_holds(teacher: TeacherResult) -> None:
    assert isinstance(teacher, TeacherResult) and isinstance(teacher.bnn, bd.BNN)
    saved = json.loads((teacher.out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(teacher.to_dict()))
    assert "bnn" not in saved and "history" not in saved and "out" not in saved
    assert teacher.epochs_trained == 1 and teacher.config["hidden"] == [16] and teacher.config["epochs"] == 1
    assert teacher.environment["torch_threads"] == torch.get_num_threads()
    again = evaluate_model(teacher.out, num_samples=2)  # the saved model reproduces the run's metrics
    assert again.test == teacher.test and again.seed == RUN.seed and again.dataset == "digits"


def test_a_folder_holding_a_run_is_refused_before_any_work(teacher: TeacherResult) -> None:
    with pytest.raises(bd.RunExistsError, match="resume it .* replace it"):
        fit_teacher(teacher.out, TEACHER, dataset="imagenet", run=RUN)  # refused before the data set is looked up
    with pytest.raises(bd.RunExistsError, match="replace it \\(overwrite=True"):
        distill(teacher.out, teacher.out, "mlp", run=RUN)


def test_threads_are_set_for_the_run_and_restored(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    result = fit_teacher(tmp_path / "t", TEACHER, dataset="digits", model="mlp", hidden=(4,), checkpoint=False,
                         run=RunSettings(num_samples=2, quiet=True, threads=2))
    assert result.config["threads"] == 2 and result.environment["torch_threads"] == 2
    assert torch.get_num_threads() == before


def test_distill_with_terms(teacher: TeacherResult, tmp_path: Path) -> None:
    recipe = DistillRecipe(epochs=1, batch_size=64)
    r = distill(tmp_path / "s", teacher.out / "model.pt", "mlp", recipe, methods=("kd",), hidden=(8,),
                train_fraction=0.2, term_settings={"kd_temperature": 2.0}, run=RUN)
    assert isinstance(r, DistillResult) and r.methods == ["kd"] and r.plan is None and r.alignment is None
    assert r.function_space["settings"] == {"kd_temperature": 2.0, "kd_weight": 0.5, "kd_calibration": "none",
                                           "kd_likelihood": "share"}
    assert r.distilled.epochs_trained == 1 and r.distilled.num_weights == r.plain.num_weights
    assert r.student == {"model": "mlp", "model_kwargs": {"hidden": [8]}, "plain_prior": "Normal(0, 1)"}
    saved = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(r.to_dict()))
    assert saved["distilled"]["test"] == r.distilled.test and saved["config"]["prior_scale"] == "unit"
    assert evaluate_model(tmp_path / "s", num_samples=2).test == r.distilled.test


def test_distill_with_the_teacher_prior(teacher: TeacherResult, tmp_path: Path) -> None:
    r = distill(tmp_path / "p", teacher.out, "mlp", DistillRecipe(epochs=1, prior_scale=0.5, init="teacher"),
                hidden=(8,), train_fraction=0.2, probe_size=50, run=RUN)
    assert r.methods == ["prior"] and r.probe_size == 50 and r.aligned is not None and len(r.pruning_curve) == 2
    student = bd.load_model(tmp_path / "p" / "model.pt")
    assert isinstance(student.prior, bd.priors.TeacherPosterior) and student.prior.scale == 0.5
    assert r.config["init"] == "teacher" and (tmp_path / "p" / "plan.json").is_file()


def test_function_space_comparison(teacher: TeacherResult, tmp_path: Path) -> None:
    recipe = FunctionSpaceRecipe(epochs=1, train_fraction=0.2, variants=(("plain", ()), ("kd", ("kd",))))
    fs = function_space(tmp_path / "fs", teacher.out, recipe, run=RUN)
    assert isinstance(fs, FunctionSpaceResult) and list(fs.students) == ["plain", "kd"]
    assert fs.student["widths"] == [64, 256, 256, 10] and fs.pairs == {"2": "4"}
    delta = fs.versus_plain["kd"]
    assert delta["accuracy_points"] == pytest.approx(100 * (fs.students["kd"].test["accuracy"]
                                                            - fs.students["plain"].test["accuracy"]))
    saved = json.loads((tmp_path / "fs" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(fs.to_dict()))
    assert sorted(p.name for p in (tmp_path / "fs").glob("history_*.csv")) == ["history_kd.csv", "history_plain.csv"]


def test_the_stage_counter(capsys: pytest.CaptureFixture[str]) -> None:
    stages = Stages(2, "job")
    with stages("first"):
        pass
    with stages("second"):
        pass
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "job [1/2] first ..." and err[1].startswith("job [1/2] first: done in ")
    assert err[2] == "job [2/2] second ..." and err[3].endswith(" s")
    quiet = Stages(1, "job", quiet=True)
    with quiet("silent"):
        pass
    quiet.warn("this one is shown")
    assert capsys.readouterr().err == "bayesdistill job: warning: this one is shown\n"
    assert set(quiet.times) == {"silent"}
