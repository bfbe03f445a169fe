"""Tests for ``bayesdistill distill`` (in-process ``main([...])``, one-epoch runs on MNIST-1D)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest

import bayesdistill as bd
from _helpers import one_line_error, run_cli
from bayesdistill import cli
from bayesdistill.cli import DISTILL_DEFAULTS, main

ARTEFACTS = ("metrics.json", "posterior.pt", "plan.json", "plan.pt", "history.csv", "plain_history.csv",
             "elbo.png", "alignment.png", "pruning_curve.png", "cosine_distances.png")


@pytest.fixture(scope="module")
def teacher(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cnn-deep teacher: 1 epoch on 10 % of MNIST-1D."""
    out = tmp_path_factory.mktemp("teacher")
    code = run_cli(cache_dir, ["fit", "--dataset", "mnist1d", "--model", "cnn-deep", "--epochs", "1", "--train-fraction", "0.1",
                   "--num-samples", "4", "--quiet", "--no-checkpoint", "--device", "cpu", "--out", str(out)])
    assert code == 0
    return out / "posterior.pt"


@pytest.fixture(scope="module")
def distilled(cache_dir: Path, teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("student")
    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(buf):
        mp.setenv("BAYESDISTILL_CACHE", str(cache_dir))
        code = main(["distill", "--teacher", str(teacher), "--student", "cnn-small", "--dataset", "mnist1d",
                     "--train-fraction", "0.1", "--epochs", "1", "--num-samples", "4", "--quiet",
                     "--device", "cpu", "--out", str(out)])
    assert code == 0
    return out, buf.getvalue()


def test_distill_writes_all_artefacts(distilled: tuple[Path, str], teacher: Path) -> None:
    out, printed = distilled
    for name in ARTEFACTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in ("elbo.png", "alignment.png", "pruning_curve.png", "cosine_distances.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert not (out / "vid_bounds.png").exists()  # no VID term
    m = json.loads((out / "metrics.json").read_text())
    # without --method: the Bayesian route alone (the aligned teacher posterior as the prior)
    assert m["methods"] == ["prior"] and m["config"]["method"] == ["prior"] and m["function_space"] is None
    assert [c["layer"] for c in m["cosine"].values()] == ["8", "6", "6"]  # the last hidden ReLUs
    assert m["dataset"] == "mnist1d" and m["train_size"] == 400 and m["test_size"] == 1000
    assert m["teacher"]["model"] == "cnn-deep" and m["student"]["model"] == "cnn-small"
    for key in ("teacher", "aligned", "distilled", "plain"):
        assert 0.0 <= m[key]["test"]["accuracy"] <= 1.0 and m[key]["test"]["num_samples"] == 4
    assert m["distilled"]["epochs_trained"] == 1 and m["plain"]["epochs_trained"] == 1
    assert m["distilled"]["num_weights"] == m["plain"]["num_weights"] < m["teacher"]["num_weights"]
    # the plan: cnn-deep -> cnn-small removes one layer and halves the others, compensated on the
    # teacher's 400 training inputs
    plan = m["plan"]
    assert plan["criterion"] == DISTILL_DEFAULTS["criterion"] and plan["compensation"] is True
    assert [L["removed"] for L in plan["layers"]].count(True) == 1
    assert [L["kept"] for L in plan["layers"] if not L["removed"]] == [16, 16, 16, 10]
    assert m["probe_size"] == 400 and plan["output_error"] is not None
    assert m["config"]["variance"] == DISTILL_DEFAULTS["variance"] and m["config"]["epochs"] == 1
    curves = m["pruning_curve"]
    assert [c["compensation"] for c in curves] == [False, True]
    assert all(c["fraction"] == list(cli.PRUNING_PLOT_FRACTIONS) for c in curves)
    assert all(c["metric"] == "accuracy" for c in curves)
    assert curves[0]["values"][0] == pytest.approx(m["teacher"]["test"]["accuracy"])
    # plan.json / plan.pt
    data = json.loads((out / "plan.json").read_text())
    assert data["layers"][0]["teacher"] == "1" and data["param_map"]
    loaded = bd.AlignmentPlan.load(out / "plan.pt")
    assert loaded.output_error == pytest.approx(plan["output_error"])
    # the distilled student's posterior carries what `evaluate` needs
    meta = bd.MeanFieldPosterior.load(out / "posterior.pt").metadata
    assert meta["model"] == "cnn-small" and meta["teacher"] == str(teacher) and meta["prior"] == "teacher-posterior"
    assert meta["distill"]["criterion"] == "snr"
    # the comparison table
    assert "distilled" in printed and "plain" in printed and "accuracy" in printed and "aligned" in printed


def test_evaluate_reproduces_the_distilled_student(distilled: tuple[Path, str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = distilled
    expected = json.loads((out / "metrics.json").read_text())["distilled"]["test"]
    capsys.readouterr()
    assert main(["evaluate", "--posterior", str(out / "posterior.pt"), "--num-samples", "4", "--json",
                 "--device", "cpu"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["model"] == "cnn-small" and got["dataset"] == "mnist1d"
    assert got["test"]["accuracy"] == expected["accuracy"]
    assert got["test"]["nll"] == expected["nll"]


def test_distill_variants_and_monitor(teacher: Path, tmp_path: Path) -> None:
    """No compensation, data criterion (probe still needed), learned variance, random init, --monitor."""
    out = tmp_path / "variant"
    assert main(["distill", "--teacher", str(teacher), "--student", "cnn", "--channels", "8", "--train-fraction", "0.1",
                 "--epochs", "1", "--num-samples", "2", "--criterion", "data", "--no-compensation",
                 "--variance", "learned", "--init", "random", "--probe-size", "100", "--monitor", "--quiet",
                 "--device", "cpu", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["plan"]["criterion"] == "data" and m["plan"]["compensation"] is False
    assert m["probe_size"] == 100 and m["student"]["model_kwargs"] == {"channels": 8}
    assert (out / "students.png").read_bytes()[:4] == b"\x89PNG"
    assert "eval_accuracy" in (out / "history.csv").read_text().splitlines()[0]
    assert bd.MeanFieldPosterior.load(out / "posterior.pt").metadata["model_kwargs"] == {"channels": 8}


def test_wider_student_exits_2_naming_the_layer(teacher: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "wide"
    capsys.readouterr()
    # cnn-small with 64 channels against the 32-channel cnn-deep teacher
    assert main(["distill", "--teacher", str(teacher), "--student", "cnn-small", "--channels", "64",
                 "--epochs", "1", "--quiet", "--out", str(out)]) == 2
    one_line_error(capsys, "layer '1'", "64", "wider")
    assert not out.exists()  # nothing is written for a refused student


def test_other_bad_students_exit_2(teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bad"
    capsys.readouterr()
    assert main(["distill", "--teacher", str(teacher), "--student", "resnet", "--out", str(out)]) == 2
    one_line_error(capsys, "unknown model 'resnet'")
    assert main(["distill", "--teacher", str(teacher), "--student", "mlp", "--hidden", "8", "--epochs", "1",
                 "--out", str(out)]) == 2
    one_line_error(capsys, "cannot align teacher cnn-deep to student mlp", "--method kd")  # the function-space hint
    assert main(["distill", "--teacher", str(teacher), "--student", "cnn-small", "--hidden", "8",
                 "--out", str(out)]) == 2
    one_line_error(capsys, "--hidden")
    assert main(["distill", "--teacher", str(tmp_path / "missing.pt"), "--student", "cnn-small",
                 "--out", str(out)]) == 2
    one_line_error(capsys, "no posterior file")
    assert main(["distill", "--teacher", str(teacher), "--student", "cnn-small", "--dataset", "digits",
                 "--out", str(out)]) == 2
    one_line_error(capsys, "digits")
    assert not out.exists()
    for bad in (["--variance", "bogus"], ["--variance", "-1"], ["--criterion", "magic"], ["--init", "zeros"]):
        with pytest.raises(SystemExit) as exc:
            main(["distill", "--teacher", str(teacher), "--student", "cnn-small", "--out", str(out), *bad])
        assert exc.value.code == 2


def test_distill_defaults_drive_the_parser() -> None:
    assert set(DISTILL_DEFAULTS) == {"epochs", "lr", "batch_size", "criterion", "variance", "init", "compensation",
                                     "kl_weight", "lr_schedule"}
    args = cli.build_parser().parse_args(["distill", "--teacher", "t.pt", "--student", "cnn-small", "--out", "x"])
    for key, value in DISTILL_DEFAULTS.items():
        expected = (value or "none") if key == "lr_schedule" else value
        assert getattr(args, key) == expected, key
    args = cli.build_parser().parse_args(["distill", "--teacher", "t.pt", "--student", "cnn-small", "--out", "x",
                                          "--variance", "0.5", "--no-compensation"])
    assert args.variance == 0.5 and args.compensation is False
