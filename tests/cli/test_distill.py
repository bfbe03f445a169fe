"""``bayesdistill distill`` (in-process ``main([...])``, one-epoch runs on MNIST-1D): the Bayesian
route (``--method prior``: alignment, the teacher prior) and the function-space terms (``--method
kd,vid,...``, ``--transfer``, ``--vid-pairs``), the run-folder rule, students by import path."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

import bayesdistill as bd
from _helpers import one_line_error, run_cli, write_factory_package
from bayesdistill import cli
from bayesdistill.cli import FUNCTION_SPACE_DEFAULTS, METHODS, main
from bayesdistill.experiments import DistillRecipe, ExperimentError
from bayesdistill.experiments.distill import default_pairs
from bayesdistill.experiments.recipes import PRUNING_PLOT_FRACTIONS

ARTEFACTS = ("metrics.json", "model.pt", "posterior.pt", "plan.json", "plan.pt", "history.csv", "plain_history.csv",
             "elbo.png", "alignment.png", "pruning_curve.png", "cosine_distances.png")
FS_ARTEFACTS = ("metrics.json", "model.pt", "posterior.pt", "history.csv", "plain_history.csv", "elbo.png",
                "vid_bounds.png", "cosine_distances.png")
SMALL = ["--train-fraction", "0.1", "--epochs", "1", "--num-samples", "2", "--quiet", "--device", "cpu"]
DISTILL_DEFAULTS = DistillRecipe().to_dict()


# ============================================================================= the Bayesian route (prior)
@pytest.fixture(scope="module")
def deep_teacher(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cnn-deep teacher: 1 epoch on 10 % of MNIST-1D."""
    out = tmp_path_factory.mktemp("teacher")
    code = run_cli(cache_dir, ["fit", "--dataset", "mnist1d", "--model", "cnn-deep", "--epochs", "1", "--train-fraction", "0.1",
                   "--num-samples", "4", "--quiet", "--no-checkpoint", "--device", "cpu", "--out", str(out)])
    assert code == 0
    return out / "posterior.pt"


@pytest.fixture(scope="module")
def distilled(cache_dir: Path, deep_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("student")
    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(buf):
        mp.setenv("BAYESDISTILL_CACHE", str(cache_dir))
        code = main(["distill", "--teacher", str(deep_teacher), "--student", "cnn-small", "--dataset", "mnist1d",
                     "--train-fraction", "0.1", "--epochs", "1", "--num-samples", "4", "--quiet",
                     "--device", "cpu", "--out", str(out)])
    assert code == 0
    return out, buf.getvalue()


def test_distill_writes_all_artefacts(distilled: tuple[Path, str], deep_teacher: Path) -> None:
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
    assert m["config"]["prior_scale"] == DISTILL_DEFAULTS["prior_scale"] and m["config"]["epochs"] == 1
    curves = m["pruning_curve"]
    assert [c["compensation"] for c in curves] == [False, True]
    assert all(c["fraction"] == list(PRUNING_PLOT_FRACTIONS) for c in curves)
    assert all(c["metric"] == "accuracy" for c in curves)
    assert curves[0]["values"][0] == pytest.approx(m["teacher"]["test"]["accuracy"])
    # plan.json / plan.pt
    data = json.loads((out / "plan.json").read_text())
    assert data["layers"][0]["teacher"] == "1" and data["param_map"]
    loaded = bd.AlignmentPlan.load(out / "plan.pt")
    assert loaded.output_error == pytest.approx(plan["output_error"])
    # the distilled student's posterior carries what `evaluate` needs
    meta = bd.MeanFieldPosterior.load(out / "posterior.pt").metadata
    assert meta["model"] == "cnn-small" and meta["teacher"] == str(deep_teacher) and meta["prior"] == "teacher-posterior"
    assert meta["distill"]["criterion"] == "snr"
    # every network's OOD detection (the transformed MNIST-1D inputs) and selective prediction
    for key in ("teacher", "aligned", "distilled", "plain"):
        u = m[key]["uncertainty"]
        assert u["kinds"] == ["reversed", "phase-shuffled", "scaled", "noise"] and u["num_samples"] == 4
        assert 0.0 <= u["mean_auroc"]["mutual_information"] <= 1.0 and 0.0 <= u["selective_area"] <= 1.0
        assert (u["kept"] is None) == (key == "teacher")
    for name in ("ood_roc.png", "selective.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    # the comparison table
    assert "distilled" in printed and "plain" in printed and "accuracy" in printed and "aligned" in printed
    assert "OOD AUROC MI (mean of 4)" in printed and "kept AUROC MI" in printed and "selective area" in printed


def test_evaluate_reproduces_the_distilled_student(distilled: tuple[Path, str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = distilled
    expected = json.loads((out / "metrics.json").read_text())["distilled"]["test"]
    for path in (out / "posterior.pt", out / "model.pt"):
        capsys.readouterr()
        assert main(["evaluate", "--posterior", str(path), "--num-samples", "4", "--json", "--device", "cpu"]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got["model"] == "cnn-small" and got["dataset"] == "mnist1d"
        assert got["test"]["accuracy"] == expected["accuracy"]
        assert got["test"]["nll"] == expected["nll"]
    # the model file brings the student back whole: its prior is the aligned teacher posterior
    student = bd.load_model(out / "model.pt")
    assert isinstance(student.prior, bd.priors.TeacherPosterior) and student.prior.scale == "unit"
    assert bd.experiments.read_model_file(out / "model.pt").prior["aligned"] is True


def test_distill_variants_and_monitor(deep_teacher: Path, tmp_path: Path) -> None:
    """No compensation, data criterion (probe still needed), learned prior scale, the network's own init, --monitor."""
    out = tmp_path / "variant"
    assert main(["distill", "--teacher", str(deep_teacher), "--student", "cnn", "--channels", "8", "--train-fraction", "0.1",
                 "--epochs", "1", "--num-samples", "2", "--criterion", "data", "--no-compensation",
                 "--prior-scale", "learned", "--init", "module", "--probe-size", "100", "--monitor", "--quiet",
                 "--no-ood", "--device", "cpu", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["ood"] is False and not (out / "ood_roc.png").exists()  # --no-ood: no uncertainty
    assert all(m[key]["uncertainty"] is None for key in ("teacher", "distilled", "plain"))
    assert "uncertainty" not in m["aligned"]
    assert m["plan"]["criterion"] == "data" and m["plan"]["compensation"] is False
    assert m["probe_size"] == 100 and m["student"]["model_kwargs"] == {"channels": 8}
    assert (out / "students.png").read_bytes()[:4] == b"\x89PNG"
    assert "eval_accuracy" in (out / "history.csv").read_text().splitlines()[0]
    assert bd.MeanFieldPosterior.load(out / "posterior.pt").metadata["model_kwargs"] == {"channels": 8}


def test_wider_student_exits_2_naming_the_layer(deep_teacher: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "wide"
    capsys.readouterr()
    # cnn-small with 64 channels against the 32-channel cnn-deep teacher
    assert main(["distill", "--teacher", str(deep_teacher), "--student", "cnn-small", "--channels", "64",
                 "--epochs", "1", "--quiet", "--out", str(out)]) == 2
    one_line_error(capsys, "layer '1'", "64", "wider")
    assert not out.exists()  # nothing is written for a refused student


def test_other_bad_students_exit_2(deep_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bad"
    capsys.readouterr()
    assert main(["distill", "--teacher", str(deep_teacher), "--student", "resnet", "--out", str(out)]) == 2
    one_line_error(capsys, "unknown model 'resnet'")
    assert main(["distill", "--teacher", str(deep_teacher), "--student", "mlp", "--hidden", "8", "--epochs", "1",
                 "--out", str(out)]) == 2
    one_line_error(capsys, "cannot align teacher cnn-deep to student mlp", "--method kd")  # the function-space hint
    assert main(["distill", "--teacher", str(deep_teacher), "--student", "cnn-small", "--hidden", "8",
                 "--out", str(out)]) == 2
    one_line_error(capsys, "--hidden")
    assert main(["distill", "--teacher", str(tmp_path / "missing.pt"), "--student", "cnn-small",
                 "--out", str(out)]) == 2
    one_line_error(capsys, "no posterior file")
    assert main(["distill", "--teacher", str(deep_teacher), "--student", "cnn-small", "--dataset", "digits",
                 "--out", str(out)]) == 2
    one_line_error(capsys, "digits")
    assert not out.exists()
    for bad in (["--prior-scale", "bogus"], ["--prior-scale", "-1"], ["--criterion", "magic"], ["--init", "zeros"],
                ["--init", "random"], ["--variance", "unit"]):  # the old words: --init module, --prior-scale
        with pytest.raises(SystemExit) as exc:
            main(["distill", "--teacher", str(deep_teacher), "--student", "cnn-small", "--out", str(out), *bad])
        assert exc.value.code == 2


def test_distill_defaults_drive_the_parser() -> None:
    assert set(DISTILL_DEFAULTS) == {"epochs", "lr", "batch_size", "criterion", "prior_scale", "init", "compensation",
                                     "kl_weight", "lr_schedule"}
    args = cli.build_parser().parse_args(["distill", "--teacher", "t.pt", "--student", "cnn-small", "--out", "x"])
    for key, value in DISTILL_DEFAULTS.items():
        expected = (value or "none") if key == "lr_schedule" else value
        assert getattr(args, key) == expected, key
    args = cli.build_parser().parse_args(["distill", "--teacher", "t.pt", "--student", "cnn-small", "--out", "x",
                                          "--prior-scale", "0.5", "--no-compensation"])
    assert args.prior_scale == 0.5 and args.compensation is False


# ============================================================================= function space (kd, vid, ...)
def history_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def cnn_teacher(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cnn teacher with 8 channels: 1 epoch on 10 % of MNIST-1D (modules: ReLU '6' before the Flatten)."""
    out = tmp_path_factory.mktemp("cnn-teacher")
    code = run_cli(cache_dir, ["fit", "--dataset", "mnist1d", "--model", "cnn", "--channels", "8", "--epochs", "1",
                   "--train-fraction", "0.1", "--num-samples", "2", "--quiet", "--no-checkpoint", "--device", "cpu",
                   "--out", str(out)])
    assert code == 0
    return out / "posterior.pt"


@pytest.fixture(scope="module")
def kd_vid(cache_dir: Path, cnn_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cnn -> mlp (not reachable by alignment) with --method kd,vid."""
    out = tmp_path_factory.mktemp("kd-vid")
    code = run_cli(cache_dir, ["distill", "--teacher", str(cnn_teacher), "--student", "mlp", "--hidden", "16,16",
                   "--method", "kd,vid", *SMALL, "--out", str(out)])
    assert code == 0
    return out


def test_kd_vid_cnn_to_mlp_writes_all_artefacts(kd_vid: Path) -> None:
    for name in FS_ARTEFACTS:
        assert (kd_vid / name).is_file() and (kd_vid / name).stat().st_size > 0, name
    for name in ("elbo.png", "vid_bounds.png", "cosine_distances.png"):
        assert (kd_vid / name).read_bytes()[:4] == b"\x89PNG", name
    for name in ("plan.json", "plan.pt", "alignment.png", "pruning_curve.png"):  # no alignment without prior
        assert not (kd_vid / name).exists(), name
    rows = history_rows(kd_vid / "history.csv")
    assert len(rows) == 1
    assert {"distill/kd/loss", "distill/vid/loss", "distill/vid/pair0/log_q", "distill/vid/pair0/mi_bound"} <= set(rows[0])
    assert float(rows[0]["distill/kd/loss"]) >= 0.0
    assert "distill/kd/loss" not in history_rows(kd_vid / "plain_history.csv")[0]  # the plain reference has no terms

    m = json.loads((kd_vid / "metrics.json").read_text())
    assert m["methods"] == ["kd", "vid"] and m["config"]["method"] == ["kd", "vid"]
    assert m["aligned"] is None and m["plan"] is None and m["pruning_curve"] is None and m["probe_size"] == 0
    fs = m["function_space"]
    # the default pair: the teacher's ReLU before the Flatten -> the student's last hidden ReLU
    assert fs["pairs"] == {"6": "4"} and fs["terms"] == ["kd", "vid"] and fs["transfer_size"] == 0
    assert fs["settings"] == {k: FUNCTION_SPACE_DEFAULTS[k] for k in ("kd_temperature", "kd_weight", "kd_calibration", "kd_likelihood",
                                                                   "vid_weight", "vid_reduction")}
    assert set(fs["final"]) >= {"distill/kd/loss", "distill/vid/loss", "distill/vid/pair0/mi_bound"}
    for key in ("teacher", "distilled", "plain"):
        assert 0.0 <= m[key]["test"]["accuracy"] <= 1.0 and m[key]["test"]["num_samples"] == 2
    assert m["distilled"]["num_weights"] == m["plain"]["num_weights"] == 40 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10
    cos = m["cosine"]
    assert list(cos) == ["teacher cnn", "plain mlp", "distilled mlp (kd,vid)"]
    assert [c["layer"] for c in cos.values()] == ["6", "4", "4"]
    assert all(c["num_similar"] + c["num_dissimilar"] == 20000 and 0 <= c["separation_auc"] <= 1 for c in cos.values())
    meta = bd.MeanFieldPosterior.load(kd_vid / "posterior.pt").metadata
    assert meta["model"] == "mlp" and meta["prior"] == "normal" and meta["distill"]["method"] == ["kd", "vid"]


def test_evaluate_reproduces_the_function_space_student(kd_vid: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = json.loads((kd_vid / "metrics.json").read_text())["distilled"]["test"]
    capsys.readouterr()
    assert main(["evaluate", "--posterior", str(kd_vid / "posterior.pt"), "--num-samples", "2", "--json",
                 "--device", "cpu"]) == 0
    got = json.loads(capsys.readouterr().out)["test"]
    assert got["accuracy"] == expected["accuracy"] and got["nll"] == expected["nll"]


def test_prior_with_unalignable_student_exits_2(cnn_teacher: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bad"
    capsys.readouterr()
    assert main(["distill", "--teacher", str(cnn_teacher), "--student", "mlp", "--method", "prior,kd", *SMALL,
                 "--out", str(out)]) == 2
    one_line_error(capsys, "--method prior", "--method kd")
    assert main(["distill", "--teacher", str(cnn_teacher), "--student", "mlp", "--hidden", "4", "--method", "prior",
                 *SMALL, "--out", str(out)]) == 2
    one_line_error(capsys, "--method prior", "cannot align teacher cnn to student mlp", "kd")
    assert not out.exists()


def test_transfer_needs_mnist1d_and_a_function_space_method(cnn_teacher: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    digits = tmp_path / "digits-teacher"
    assert main(["fit", "--dataset", "digits", "--model", "mlp", "--hidden", "8", "--epochs", "1", "--quiet",
                 "--num-samples", "2", "--no-checkpoint", "--out", str(digits)]) == 0
    out = tmp_path / "bad"
    capsys.readouterr()
    assert main(["distill", "--teacher", str(digits / "posterior.pt"), "--student", "mlp", "--hidden", "4",
                 "--method", "kd", "--transfer", "100", *SMALL, "--out", str(out)]) == 2
    one_line_error(capsys, "--transfer", "mnist1d", "digits")
    assert main(["distill", "--teacher", str(cnn_teacher), "--student", "cnn", "--channels", "4", "--transfer", "100",
                 *SMALL, "--out", str(out)]) == 2
    one_line_error(capsys, "--transfer", "kd")
    assert main(["distill", "--teacher", str(cnn_teacher), "--student", "mlp", "--method", "kd", "--vid-pairs", "6:4",
                 *SMALL, "--out", str(out)]) == 2
    one_line_error(capsys, "--vid-pairs")
    assert main(["distill", "--teacher", str(cnn_teacher), "--student", "mlp", "--method", "vid", "--vid-pairs", "6:9",
                 *SMALL, "--out", str(out)]) == 2
    one_line_error(capsys, "student has no module '9'")
    assert not out.exists()


def test_transfer_pkt_hint_and_pairs(cnn_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    samples = bd.datasets.mnist1d_samples

    def recording(n, seed, *args, **kw):
        calls.append((n, seed))
        return samples(n, seed, *args, **kw)

    monkeypatch.setattr(bd.datasets, "mnist1d_samples", recording)
    out = tmp_path / "pkt-hint"
    assert main(["distill", "--teacher", str(cnn_teacher), "--student", "mlp", "--hidden", "16,16",
                 "--method", "pkt,hint,kd", "--vid-pairs", "4:2,6:4", "--transfer", "300", "--seed", "3", *SMALL,
                 "--out", str(out)]) == 0
    assert calls == [(300, 1003)]  # the transfer set: generated MNIST-1D inputs, seed 1000 + --seed
    row = history_rows(out / "history.csv")[0]
    # one PKT term over both pairs, one Hint term, KD
    assert {"distill/pkt/loss", "distill/pkt/pair0/loss", "distill/pkt/pair1/loss", "distill/hint/loss",
            "distill/hint/pair1/loss", "distill/kd/loss"} <= set(row) and "distill/vid/loss" not in row
    assert not (out / "vid_bounds.png").exists() and (out / "cosine_distances.png").is_file()
    fs = json.loads((out / "metrics.json").read_text())["function_space"]
    assert fs["pairs"] == {"4": "2", "6": "4"} and fs["transfer_size"] == 300


def test_prior_and_kd_together(cnn_teacher: Path, tmp_path: Path) -> None:
    """An alignable student gets the teacher prior and a KD term."""
    out = tmp_path / "prior-kd"
    assert main(["distill", "--teacher", str(cnn_teacher), "--student", "cnn", "--channels", "4",
                 "--method", "prior,kd", "--monitor", *SMALL, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["methods"] == ["prior", "kd"] and m["aligned"] is not None and m["plan"] is not None
    assert (out / "plan.json").is_file() and (out / "students.png").is_file()
    assert "distill/kd/loss" in history_rows(out / "history.csv")[0]
    assert bd.MeanFieldPosterior.load(out / "posterior.pt").metadata["prior"] == "teacher-posterior"


def test_function_space_options_parse() -> None:
    parse = cli.build_parser().parse_args
    args = parse(["distill", "--teacher", "t.pt", "--student", "mlp", "--out", "x"])
    assert args.method is None and args.transfer is None and args.pairs is None
    for key, value in FUNCTION_SPACE_DEFAULTS.items():
        assert getattr(args, key) == value, key
    args = parse(["distill", "--teacher", "t.pt", "--student", "mlp", "--out", "x", "--method", "KD, vid,kd",
                  "--pairs", "8:4, 6:2", "--transfer", "10"])
    assert args.method == ("kd", "vid") and args.pairs == {"8": "4", "6": "2"} and args.transfer == 10
    assert set(METHODS) == {"prior", "kd", "vid", "pkt", "hint", "tinybert", "privileged_kd", "adversarial_prior"}  # prior and the registered terms
    for bad in (["--method", "magic"], ["--method", ""], ["--vid-pairs", "8"], ["--vid-pairs", "8:4,8:2"],
                ["--transfer", "0"], ["--kd-weight", "1.5"], ["--vid-weight", "0"]):
        with pytest.raises(SystemExit) as exc:
            parse(["distill", "--teacher", "t.pt", "--student", "mlp", "--out", "x", *bad])
        assert exc.value.code == 2


def test_last_hidden_finds_the_feature_modules() -> None:
    """The CLI's default pairs come from bd.bnn.last_hidden_layer (tested in tests/bnn/test_taps.py);
    a network without one is a one-line error naming the flag."""
    assert default_pairs(bd.models.build("cnn-deep", (40,), 10), bd.models.build("mlp", (40,), 10)) == {"8": "4"}
    with pytest.raises(ExperimentError, match="--vid-pairs"):
        default_pairs(bd.models.build("cnn", (40,), 10), torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)))


# ============================================================================= run folder, imports, the model file
def test_a_folder_holding_a_run_is_refused_and_overwrite_replaces_it(cnn_teacher: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kd"
    argv = ["distill", "--teacher", str(cnn_teacher), "--student", "mlp", "--hidden", "4", "--method", "kd", *SMALL,
            "--out", str(out)]
    assert main(argv) == 0
    before = (out / "metrics.json").read_text()
    capsys.readouterr()
    assert main(argv) == 2
    one_line_error(capsys, "already holds a run", "--overwrite")
    assert (out / "metrics.json").read_text() == before
    assert main([*argv, "--overwrite", "--seed", "2"]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["seed"] == 2


def test_a_student_by_import_path_and_a_teacher_by_run_folder(cnn_teacher: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    marker = write_factory_package(tmp_path / "src", "bdcli_distill_pkg")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    out = tmp_path / "mine"
    argv = ["distill", "--teacher", str(cnn_teacher.parent), "--student", "bdcli_distill_pkg.nets:tiny",
            "--student-kwargs", '{"hidden": 6}', "--method", "kd,vid", *SMALL, "--threads", "1", "--out", str(out)]
    capsys.readouterr()
    assert main(argv) == 2
    one_line_error(capsys, "student 'bdcli_distill_pkg.nets:tiny'", "--allow-imports")
    assert not marker.exists() and not out.exists()
    assert main([*argv, "--allow-imports"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["student"] == {"model": "bdcli_distill_pkg.nets:tiny", "model_kwargs": {"hidden": 6},
                            "plain_prior": "Normal(0, 1)"}
    assert m["function_space"]["pairs"] == {"6": "2"} and m["config"]["threads"] == 1
    assert m["teacher"]["posterior"] == str(cnn_teacher.parent)
    student = bd.load_model(out / "model.pt", allow_imports=True)
    assert student.shapes["1.weight"] == (6, 40)
