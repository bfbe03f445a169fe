"""``bayesdistill demo --quick``: a cnn-deep teacher in OUT/teacher, cnn-small students in
OUT/student, MLP students in OUT/function-space, OUT/report.md (the run: the ``quick_demo`` fixture)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from _helpers import one_line_error
from bayesdistill.cli import main
from bayesdistill.experiments import DEMO, QUICK_DEMO, TeacherRecipe


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _png(path: Path) -> bool:
    return path.read_bytes()[:4] == b"\x89PNG"


def test_demo_quick(quick_demo: tuple[Path, str]) -> None:
    out, printed = quick_demo
    for name in ("metrics.json", "posterior.pt", "model.pt", "history.csv"):
        assert (out / "teacher" / name).is_file(), name
    for name in ("elbo.png", "calibration.png", "snr.png"):
        assert _png(out / "teacher" / name), name
    metrics = json.loads((out / "teacher" / "metrics.json").read_text())
    assert metrics["dataset"] == "mnist1d" and metrics["model"] == QUICK_DEMO.teacher_model == "cnn-deep"
    assert metrics["config"]["channels"] == TeacherRecipe().channels
    assert metrics["epochs_trained"] == QUICK_DEMO.teacher.epochs == 3
    assert "eval_accuracy" in _rows(out / "teacher" / "history.csv")[0]  # the demo monitors the test split
    student = json.loads((out / "student" / "metrics.json").read_text())
    assert student["student"]["model"] == QUICK_DEMO.student == "cnn-small"
    assert student["train_size"] == 400 and student["distilled"]["epochs_trained"] == QUICK_DEMO.distill.epochs
    for png in ("elbo.png", "alignment.png", "pruning_curve.png", "students.png", "cosine_distances.png"):
        assert _png(out / "student" / png), png
    report = (out / "report.md").read_text()
    for png in ("student/students.png", "student/alignment.png", "student/pruning_curve.png", "teacher/elbo.png"):
        assert f"({png})" in report
    assert "| accuracy |" in report and "| distilled | plain |" in report and "--quick" in report
    # the function-space comparison: the same teacher into Bayesian MLPs, plain vs KD vs VID+KD
    fs = json.loads((out / "function-space" / "metrics.json").read_text())
    assert fs["teacher"]["model"] == "cnn-deep" and fs["student"]["model"] == QUICK_DEMO.function_space.student == "mlp"
    assert list(fs["students"]) == [n for n, _ in QUICK_DEMO.function_space.variants] == ["plain", "kd", "vid+kd"]
    assert fs["students"]["vid+kd"]["methods"] == ["vid", "kd"] and fs["pairs"] == {"8": "4"}
    assert fs["train_size"] == 400 and fs["config"]["epochs"] == QUICK_DEMO.function_space.epochs
    for r in fs["students"].values():
        assert r["epochs_trained"] == QUICK_DEMO.function_space.epochs and 0.0 <= r["test"]["accuracy"] <= 1.0
    assert "distill/vid/pair0/mi_bound" in fs["students"]["vid+kd"]["final_terms"]
    assert "distill/kd/loss" in fs["students"]["kd"]["final_terms"]
    assert list(fs["cosine"]) == ["teacher cnn-deep", "plain", "kd", "vid+kd"]
    assert set(fs["versus_plain"]) == {"kd", "vid+kd"}
    for png in ("students.png", "elbo.png", "vid_bounds.png", "cosine_distances.png"):
        assert _png(out / "function-space" / png), png
    rows = _rows(out / "function-space" / "history_vid+kd.csv")
    assert {"distill/kd/loss", "distill/vid/loss", "distill/vid/pair0/mi_bound", "eval_accuracy"} <= set(rows[0])
    assert "## Function space" in report and "| metric | teacher cnn-deep | plain | kd | vid+kd |" in report
    for png in ("function-space/vid_bounds.png", "function-space/cosine_distances.png", "function-space/students.png"):
        assert f"({png})" in report
    assert "report:" in printed and "distilled" in printed and "function space" in printed
    # every network's OOD detection and selective prediction, with fewer draws in the quick run
    draws = QUICK_DEMO.uncertainty.num_samples
    assert draws == 4 < QUICK_DEMO.num_samples
    nets = [metrics, student["teacher"], student["aligned"], student["distilled"], student["plain"], fs["teacher"],
            *fs["students"].values()]
    for r in nets:
        u = r["uncertainty"]
        assert u["num_samples"] == draws and u["kinds"] == ["reversed", "phase-shuffled", "scaled", "noise"]
        assert str(draws) + " posterior draws" in u["statement"]
    assert student["teacher"]["uncertainty"]["auroc"] == metrics["uncertainty"]["auroc"]  # the same teacher, draws
    for png in ("ood_roc.png", "selective.png"):
        assert _png(out / "student" / png), png
    assert "## Does the student know what it does not know?" in report
    for png in ("student/ood_roc.png", "student/selective.png"):
        assert f"({png})" in report
    assert "| kept AUROC MI |" in report and "| MI: scaled |" in report and "| selective area |" in report
    assert "OOD AUROC MI (mean of 4)" in printed


def test_quick_demo_is_the_demo_recipe_shortened() -> None:
    assert QUICK_DEMO.is_quick and not DEMO.is_quick
    assert (QUICK_DEMO.teacher.epochs, QUICK_DEMO.distill.epochs, QUICK_DEMO.function_space.epochs) == (3, 3, 3)
    assert QUICK_DEMO.teacher_fraction == QUICK_DEMO.function_space.train_fraction == 0.1
    assert QUICK_DEMO.num_samples == 8 and QUICK_DEMO.student_fraction == DEMO.student_fraction == 0.1
    assert QUICK_DEMO.uncertainty.num_samples == 4 and DEMO.uncertainty.num_samples is None  # the run's 32
    assert QUICK_DEMO.teacher.lr == DEMO.teacher.lr and QUICK_DEMO.distill.criterion == DEMO.distill.criterion


def test_a_folder_holding_a_demo_is_refused(quick_demo: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = quick_demo
    before = (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 2
    one_line_error(capsys, "already holds a run", "--overwrite")
    assert (out / "report.md").read_text() == before
