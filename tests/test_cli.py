"""Tests for the ``bayesdistill`` command line (in-process ``main([...])``, small runs)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

import bayesdistill as bd
from _helpers import one_line_error, run_cli
from bayesdistill import cli
from bayesdistill.cli import TEACHER_DEFAULTS, main

ARTEFACTS = ("metrics.json", "posterior.pt", "history.csv", "elbo.png", "calibration.png", "snr.png")
CLASSIFICATION_KEYS = {"accuracy", "nll", "ece", "brier", "predictive_entropy", "expected_entropy",
                       "mutual_information", "num_samples"}


@pytest.fixture(scope="module")
def cnn_run(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small CNN teacher on MNIST-1D (1 epoch on 10 % of the data), shared by several tests."""
    out = tmp_path_factory.mktemp("cnn-run")
    code = run_cli(cache_dir, ["fit", "--dataset", "mnist1d", "--model", "cnn", "--epochs", "1", "--train-fraction", "0.1",
                   "--num-samples", "8", "--channels", "8", "--out", str(out), "--device", "cpu"])
    assert code == 0
    return out


def _read_history(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _check_artefacts(out: Path) -> dict:
    for name in ARTEFACTS:
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 0, name
    for name in ("elbo.png", "calibration.png", "snr.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert (out / "checkpoints" / "checkpoint.pt").is_file()
    return json.loads((out / "metrics.json").read_text())


# ----------------------------------------------------------------------------- fit
def test_fit_digits_mlp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "digits"
    code = main(["fit", "--dataset", "digits", "--model", "mlp", "--epochs", "2", "--quiet", "--hidden", "32",
                 "--num-samples", "8", "--out", str(out)])
    assert code == 0
    metrics = _check_artefacts(out)
    assert metrics["dataset"] == "digits" and metrics["model"] == "mlp" and metrics["task"] == "classification"
    assert set(metrics["test"]) == CLASSIFICATION_KEYS
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert metrics["test"]["num_samples"] == 8
    assert metrics["epochs_trained"] == 2 and metrics["train_size"] == 1437 and metrics["test_size"] == 360
    assert metrics["wall_time_s"] > 0 and metrics["train_time_s"] > 0
    assert metrics["config"]["hidden"] == [32] and metrics["config"]["lr"] == TEACHER_DEFAULTS["lr"]
    cal = metrics["calibration"]  # the CalibrationResult drawn in calibration.png
    assert cal["task"] == "classification" and cal["ece"] == pytest.approx(metrics["test"]["ece"], abs=1e-12)
    assert sum(cal["bins"]["count"]) == 360 and len(cal["bins"]["count"]) == cal["n_bins"] + 1
    rows = _read_history(out / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"elbo", "nll", "kl", "loss", "lr"} <= set(rows[0])
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "fit:" not in printed  # --quiet: the table only


def test_fit_mnist1d_cnn_artefacts(cnn_run: Path) -> None:
    metrics = _check_artefacts(cnn_run)
    assert metrics["dataset"] == "mnist1d" and metrics["model"] == "cnn"
    assert metrics["train_size"] == 400 and metrics["test_size"] == 1000
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert len(_read_history(cnn_run / "history.csv")) == 1
    q = bd.MeanFieldPosterior.load(cnn_run / "posterior.pt")
    meta = q.metadata
    assert meta["model"] == "cnn" and meta["model_kwargs"] == {"channels": 8}
    assert meta["dataset"] == "mnist1d" and meta["input_shape"] == [40] and meta["output_dim"] == 10
    assert meta["task"] == "classification" and meta["likelihood"] == "categorical"
    assert meta["prior_scale"] == TEACHER_DEFAULTS["prior_scale"]


def test_evaluate_reproduces_fit_metrics(cnn_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = json.loads((cnn_run / "metrics.json").read_text())["test"]
    capsys.readouterr()
    code = main(["evaluate", "--posterior", str(cnn_run / "posterior.pt"), "--dataset", "mnist1d",
                 "--num-samples", "8", "--json", "--device", "cpu"])
    assert code == 0
    got = json.loads(capsys.readouterr().out)
    assert got["dataset"] == "mnist1d" and got["model"] == "cnn"
    assert got["test"]["accuracy"] == expected["accuracy"]
    assert got["test"]["nll"] == expected["nll"]
    assert got["test"]["ece"] == expected["ece"]


def test_evaluate_table_defaults_to_training_dataset(cnn_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["evaluate", "--posterior", str(cnn_run / "posterior.pt"), "--num-samples", "4"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "mnist1d" in out and "S = 4" in out


def test_fit_regression_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reg"
    args = ["fit", "--dataset", "synthetic-regression", "--model", "mlp", "--hidden", "16", "--quiet",
            "--num-samples", "4", "--out", str(out)]
    assert main(args + ["--epochs", "1"]) == 0
    first = _read_history(out / "history.csv")
    assert main(args + ["--epochs", "2", "--resume", "--extend"]) == 0
    metrics = _check_artefacts(out)
    rows = _read_history(out / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert rows[0]["elbo"] == first[0]["elbo"]  # resumed, not retrained
    assert metrics["task"] == "regression" and {"rmse", "nll"} <= set(metrics["test"])
    assert bd.MeanFieldPosterior.load(out / "posterior.pt").metadata["likelihood"] == "normal"
    capsys.readouterr()
    assert main(["evaluate", "--posterior", str(out / "posterior.pt"), "--num-samples", "4", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["test"]
    assert got["rmse"] == metrics["test"]["rmse"] and got["nll"] == metrics["test"]["nll"]


# ----------------------------------------------------------------------------- demo
def test_demo_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo: a cnn-deep teacher in OUT/teacher, cnn-small students in OUT/student, OUT/report.md."""
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 0
    metrics = _check_artefacts(out / "teacher")
    assert metrics["dataset"] == "mnist1d" and metrics["model"] == cli.DEMO_STUDENT["teacher_model"] == "cnn-deep"
    assert metrics["config"]["channels"] == TEACHER_DEFAULTS["channels"]
    assert metrics["epochs_trained"] == cli.QUICK_DEMO["epochs"]
    rows = _read_history(out / "teacher" / "history.csv")
    assert "eval_accuracy" in rows[0]  # the demo monitors the test split
    student = json.loads((out / "student" / "metrics.json").read_text())
    assert student["student"]["model"] == cli.DEMO_STUDENT["student"] == "cnn-small"
    assert student["train_size"] == 400 and student["distilled"]["epochs_trained"] == cli.QUICK_DEMO["epochs"]
    for png in ("elbo.png", "alignment.png", "pruning_curve.png", "students.png"):
        assert (out / "student" / png).read_bytes()[:4] == b"\x89PNG", png
    report = (out / "report.md").read_text()
    for png in ("student/students.png", "student/alignment.png", "student/pruning_curve.png", "teacher/elbo.png"):
        assert f"({png})" in report
    assert "| accuracy |" in report and "| distilled | plain |" in report and "--quick" in report
    assert (out / "student" / "cosine_distances.png").read_bytes()[:4] == b"\x89PNG"
    # the function-space comparison: the same teacher into Bayesian MLPs, plain vs KD vs VID+KD
    fs = json.loads((out / "function-space" / "metrics.json").read_text())
    assert fs["teacher"]["model"] == "cnn-deep" and fs["student"]["model"] == cli.FS_DEMO["student"] == "mlp"
    assert list(fs["students"]) == list(cli.FS_DEMO["variants"]) == ["plain", "kd", "vid+kd"]
    assert fs["students"]["vid+kd"]["methods"] == ["vid", "kd"] and fs["pairs"] == {"8": "4"}
    assert fs["train_size"] == 400 and fs["config"]["epochs"] == cli.QUICK_DEMO["epochs"]
    for r in fs["students"].values():
        assert r["epochs_trained"] == cli.QUICK_DEMO["epochs"] and 0.0 <= r["test"]["accuracy"] <= 1.0
    assert "distill/vid/pair0/mi_bound" in fs["students"]["vid+kd"]["final_terms"]
    assert "distill/kd/loss" in fs["students"]["kd"]["final_terms"]
    assert list(fs["cosine"]) == ["teacher cnn-deep", "plain", "kd", "vid+kd"]
    for png in ("students.png", "elbo.png", "vid_bounds.png", "cosine_distances.png"):
        assert (out / "function-space" / png).read_bytes()[:4] == b"\x89PNG", png
    rows = _read_history(out / "function-space" / "history_vid+kd.csv")
    assert {"distill/kd/loss", "distill/vid/loss", "distill/vid/pair0/mi_bound", "eval_accuracy"} <= set(rows[0])
    assert "## Function space" in report and "| metric | teacher cnn-deep | plain | kd | vid+kd |" in report
    for png in ("function-space/vid_bounds.png", "function-space/cosine_distances.png", "function-space/students.png"):
        assert f"({png})" in report
    printed = capsys.readouterr().out
    assert "report:" in printed and "distilled" in printed and "function space" in printed


def test_teacher_defaults_drive_fit_parser() -> None:
    assert set(TEACHER_DEFAULTS) == {"epochs", "lr", "batch_size", "prior_scale", "lr_schedule", "channels", "kl_weight"}
    args = cli.build_parser().parse_args(["fit", "--out", "x"])
    assert args.epochs == TEACHER_DEFAULTS["epochs"] and args.lr == TEACHER_DEFAULTS["lr"]
    assert args.batch_size == TEACHER_DEFAULTS["batch_size"] and args.channels == TEACHER_DEFAULTS["channels"]
    assert args.prior_scale == TEACHER_DEFAULTS["prior_scale"] and args.lr_schedule == "cosine"
    assert args.kl_weight == TEACHER_DEFAULTS["kl_weight"]
    assert args.dataset == "mnist1d" and args.model == "cnn"


def test_local_reparam_option_values() -> None:
    parse = cli.build_parser().parse_args
    assert parse(["fit", "--out", "x"]).local_reparam is False
    assert parse(["fit", "--local-reparam", "--out", "x"]).local_reparam == "all"
    assert parse(["fit", "--out", "x", "--local-reparam"]).local_reparam == "all"
    assert parse(["fit", "--local-reparam", "linear", "--out", "x"]).local_reparam == "linear"
    with pytest.raises(SystemExit):
        parse(["fit", "--local-reparam", "conv", "--out", "x"])


# ----------------------------------------------------------------------------- errors
def test_corrupt_posterior_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "posterior.pt"
    bad.write_bytes(b"definitely not a torch file")
    capsys.readouterr()
    assert main(["evaluate", "--posterior", str(bad), "--dataset", "mnist1d"]) == 2
    one_line_error(capsys, "could not be read as a posterior")


def test_missing_posterior_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--posterior", str(tmp_path / "nope.pt")]) == 2
    one_line_error(capsys, "no posterior file")


def test_posterior_without_architecture_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bnn = bd.BNN(bd.models.build("mlp", (4,), 2, hidden=(3,)))
    path = bnn.posterior().save(tmp_path / "bare.pt")  # metadata left empty
    assert main(["evaluate", "--posterior", str(path), "--dataset", "digits"]) == 2
    one_line_error(capsys, "architecture")


def test_evaluate_on_mismatched_dataset_exits_2(cnn_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["evaluate", "--posterior", str(cnn_run / "posterior.pt"), "--dataset", "digits"]) == 2
    one_line_error(capsys, "digits")


def test_unknown_dataset_and_model_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--dataset", "imagenet", "--epochs", "1", "--out", str(tmp_path / "a")]) == 2
    one_line_error(capsys, "unknown dataset 'imagenet'", "mnist1d")
    assert not (tmp_path / "a").exists()  # nothing is created for a failed lookup
    assert main(["fit", "--dataset", "digits", "--model", "resnet", "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "b")]) == 2
    err = one_line_error(capsys, "unknown model 'resnet'")
    assert not err.split("error: ", 1)[1].startswith("'")  # no KeyError quoting


def test_bad_arguments_are_argparse_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["fit", "--epochs", "-1", "--out", str(tmp_path)],
                 ["fit", "--lr", "0", "--out", str(tmp_path)],
                 ["fit", "--train-fraction", "1.5", "--out", str(tmp_path)],
                 ["fit", "--dataset", "digits"],  # --out missing
                 ["nonsense"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "usage:" in capsys.readouterr().err
    assert main([]) == 2  # no command: help on stderr


def test_unavailable_cuda_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["fit", "--dataset", "digits", "--device", "cuda", "--epochs", "1",
                 "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "CUDA is not available")


# ----------------------------------------------------------------------------- entry points
def test_python_m_version() -> None:
    # the repository first, then whatever the environment already had (dependencies may come
    # from PYTHONPATH rather than site-packages)
    paths = [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    proc = subprocess.run([sys.executable, "-m", "bayesdistill", "--version"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"bayesdistill {bd.__version__}"


def test_console_script_version() -> None:
    exe = shutil.which("bayesdistill")
    if exe is None:
        pytest.skip("the bayesdistill console script is not installed (pip install -e .)")
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"bayesdistill {bd.__version__}"
