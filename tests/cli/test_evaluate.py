"""``bayesdistill evaluate``: it reproduces a run's metrics from the saved model; damaged or
foreign files, and data that do not fit, are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bayesdistill as bd
from _helpers import one_line_error
from bayesdistill.cli import main


def test_evaluate_reproduces_fit_metrics(cnn_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = json.loads((cnn_run / "metrics.json").read_text())["test"]
    for path in (cnn_run / "posterior.pt", cnn_run / "model.pt", cnn_run):  # posterior, model file, run folder
        capsys.readouterr()
        code = main(["evaluate", "--posterior", str(path), "--dataset", "mnist1d", "--num-samples", "8", "--json",
                     "--device", "cpu"])
        assert code == 0
        got = json.loads(capsys.readouterr().out)
        assert got["dataset"] == "mnist1d" and got["model"] == "cnn"
        assert got["test"]["accuracy"] == expected["accuracy"]
        assert got["test"]["nll"] == expected["nll"]
        assert got["test"]["ece"] == expected["ece"]


def test_evaluate_reports_ood_detection_unless_no_ood(cnn_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = json.loads((cnn_run / "metrics.json").read_text())["uncertainty"]
    capsys.readouterr()
    assert main(["evaluate", "--posterior", str(cnn_run), "--num-samples", "8", "--json", "--device", "cpu"]) == 0
    got = json.loads(capsys.readouterr().out)["uncertainty"]
    assert got["kinds"] == ["reversed", "phase-shuffled", "scaled", "noise"] and got["num_samples"] == 8
    assert got["auroc"] == expected["auroc"] and got["mean_auroc"] == expected["mean_auroc"]  # the run's values
    assert got["selective_area"] == expected["selective_area"]
    assert main(["evaluate", "--posterior", str(cnn_run), "--num-samples", "8", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "OOD detection: AUROC" in table and "phase-shuffled" in table and "accuracy at coverage 0.9" in table
    assert main(["evaluate", "--posterior", str(cnn_run), "--num-samples", "8", "--json", "--no-ood"]) == 0
    assert json.loads(capsys.readouterr().out)["uncertainty"] is None
    assert main(["evaluate", "--posterior", str(cnn_run), "--num-samples", "8", "--no-ood"]) == 0
    assert "OOD" not in capsys.readouterr().out


def test_evaluate_table_defaults_to_training_dataset(cnn_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["evaluate", "--model-file", str(cnn_run / "model.pt"), "--num-samples", "4"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "mnist1d" in out and "S = 4" in out


def test_corrupt_posterior_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "posterior.pt"
    bad.write_bytes(b"definitely not a torch file")
    capsys.readouterr()
    assert main(["evaluate", "--posterior", str(bad), "--dataset", "mnist1d"]) == 2
    one_line_error(capsys, "could not be read as a posterior")


def test_truncated_model_file_exits_2(cnn_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cut = tmp_path / "model.pt"
    data = (cnn_run / "model.pt").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert main(["evaluate", "--posterior", str(cut)]) == 2
    one_line_error(capsys, "could not be read", "truncated")


def test_missing_posterior_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--posterior", str(tmp_path / "nope.pt")]) == 2
    one_line_error(capsys, "no posterior file")


def test_posterior_without_architecture_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bnn = bd.BNN(bd.models.build("mlp", (4,), 2, hidden=(3,)))
    path = bnn.posterior().save(tmp_path / "bare.pt")  # metadata left empty
    assert main(["evaluate", "--posterior", str(path), "--dataset", "digits"]) == 2
    one_line_error(capsys, "architecture", "bd.save_model")


def test_evaluate_on_mismatched_dataset_exits_2(cnn_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["evaluate", "--posterior", str(cnn_run / "posterior.pt"), "--dataset", "digits"]) == 2
    one_line_error(capsys, "digits")
