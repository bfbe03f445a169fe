"""The demo (``bayesdistill demo``): a teacher, its Bayesian students, function-space students, a report.

Into ``out``: ``teacher/`` (:func:`~bayesdistill.experiments.fit_teacher`), ``student/``
(:func:`~bayesdistill.experiments.distill` with the aligned teacher prior), ``function-space/``
(:func:`~bayesdistill.experiments.function_space`) and ``report.md``, written from the numbers of
this run alone (:func:`~bayesdistill.experiments.reports.demo_report`). Unless ``run.ood`` is
false, every network's OOD detection and selective prediction (``recipe.uncertainty``) is in
its stage's ``metrics.json`` and in the report's "Does the student know what it does not know?".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Union

from .distill import DISTILL_ARTEFACTS, DistillResult, distill
from .function_space import FUNCTION_SPACE_ARTEFACTS, FunctionSpaceResult, function_space
from .model_file import MODEL_FILE_NAME
from .recipes import DEMO, DemoRecipe, RunSettings
from .reports import demo_report
from .results import Result, live
from .runs import check_run_folder, is_main, run_stages, torch_threads
from .teacher import TEACHER_ARTEFACTS, TeacherResult, fit_teacher

__all__ = ["DemoResult", "demo", "REPORT_NAME"]

REPORT_NAME = "report.md"


@dataclass
class DemoResult(Result):
    """The three stages' results and the report's path."""

    recipe: DemoRecipe
    teacher: TeacherResult
    student: DistillResult
    function_space: FunctionSpaceResult
    report: Optional[Path] = live()


def _check_folders(out: Path, overwrite: bool) -> None:
    """Every folder the demo writes, checked before any work."""
    check_run_folder(out, (REPORT_NAME,), overwrite=overwrite)
    check_run_folder(out / "teacher", TEACHER_ARTEFACTS, overwrite=overwrite)
    check_run_folder(out / "student", DISTILL_ARTEFACTS, overwrite=overwrite)
    check_run_folder(out / "function-space", FUNCTION_SPACE_ARTEFACTS, overwrite=overwrite)


def demo(out: Union[str, os.PathLike] = "bayesdistill-demo", recipe: DemoRecipe = DEMO, *,
         run: RunSettings = RunSettings()) -> DemoResult:
    """Run the demo with ``recipe`` (``QUICK_DEMO``: the smoke run) and write ``out/report.md``.

    The teacher and the students are monitored on the test split every epoch; ``recipe.num_samples``
    posterior draws for every test metric. A folder holding a demo is refused unless ``run.overwrite``.
    """
    out = Path(out)
    _check_folders(out, run.overwrite)
    run = replace(run, num_samples=recipe.num_samples)
    stages = run_stages(4, "demo", run)
    with torch_threads(run.threads):
        with stages(f"the teacher: {recipe.teacher_model} on {recipe.dataset}"):
            teacher = fit_teacher(out / "teacher", recipe.teacher, dataset=recipe.dataset, model=recipe.teacher_model,
                                  train_fraction=recipe.teacher_fraction, uncertainty=recipe.uncertainty,
                                  run=replace(run, monitor=True))
        teacher_file = out / "teacher" / MODEL_FILE_NAME
        with stages(f"the Bayesian student: {recipe.student} on a fraction of the data"):
            student = distill(out / "student", teacher_file, recipe.student, recipe.distill, dataset=recipe.dataset,
                              train_fraction=recipe.student_fraction, uncertainty=recipe.uncertainty,
                              run=replace(run, monitor=True))
        with stages(f"the function-space students: {recipe.function_space.student}"):
            fs = function_space(out / "function-space", teacher_file, recipe.function_space,
                                uncertainty=recipe.uncertainty, run=run)
        result = DemoResult(recipe, teacher, student, fs, out / REPORT_NAME)
        with stages("the report"):
            if is_main():
                (out / REPORT_NAME).write_text(demo_report(result))
    return result
