"""``bayesdistill fit`` (in-process ``main([...])``, small runs): artefacts, resume, the run-folder
rule, one-line errors, threads, models and data by import path, the run-configuration file, torchrun."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

import bayesdistill as bd
from _helpers import one_line_error, write_factory_package
from bayesdistill import cli
from bayesdistill.cli import main
from bayesdistill.experiments import RunSettings, TeacherRecipe

REPO = Path(__file__).resolve().parents[2]
ARTEFACTS = ("metrics.json", "posterior.pt", "model.pt", "history.csv", "elbo.png", "calibration.png", "snr.png")
CLASSIFICATION_KEYS = {"accuracy", "nll", "ece", "brier", "predictive_entropy", "expected_entropy",
                       "mutual_information", "num_samples"}
TINY = ["--dataset", "digits", "--model", "mlp", "--hidden", "8", "--num-samples", "2", "--quiet", "--epochs", "1"]


def read_history(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def check_artefacts(out: Path) -> dict:
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
    metrics = check_artefacts(out)
    assert metrics["dataset"] == "digits" and metrics["model"] == "mlp" and metrics["task"] == "classification"
    assert set(metrics["test"]) == CLASSIFICATION_KEYS
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert metrics["test"]["num_samples"] == 8
    assert metrics["epochs_trained"] == 2 and metrics["train_size"] == 1437 and metrics["test_size"] == 360
    assert metrics["wall_time_s"] > 0 and metrics["train_time_s"] > 0
    assert metrics["config"]["hidden"] == [32] and metrics["config"]["lr"] == TeacherRecipe().lr
    cal = metrics["calibration"]  # the CalibrationResult drawn in calibration.png
    assert cal["task"] == "classification" and cal["ece"] == pytest.approx(metrics["test"]["ece"], abs=1e-12)
    assert sum(cal["bins"]["count"]) == 360 and len(cal["bins"]["count"]) == cal["n_bins"] + 1
    rows = read_history(out / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"elbo", "nll", "kl", "loss", "lr"} <= set(rows[0])
    captured = capsys.readouterr()
    assert "accuracy" in captured.out and "fit:" not in captured.out + captured.err  # --quiet: the table only
    assert metrics["environment"]["world_size"] == 1 and metrics["config"]["threads"] == torch.get_num_threads()


def test_fit_mnist1d_cnn_artefacts(cnn_run: Path) -> None:
    metrics = check_artefacts(cnn_run)
    assert metrics["dataset"] == "mnist1d" and metrics["model"] == "cnn"
    assert metrics["train_size"] == 400 and metrics["test_size"] == 1000
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert len(read_history(cnn_run / "history.csv")) == 1
    q = bd.MeanFieldPosterior.load(cnn_run / "posterior.pt")
    meta = q.metadata
    assert meta["model"] == "cnn" and meta["model_kwargs"] == {"channels": 8}
    assert meta["dataset"] == "mnist1d" and meta["input_shape"] == [40] and meta["output_dim"] == 10
    assert meta["task"] == "classification" and meta["likelihood"] == "categorical"
    assert meta["prior_scale"] == TeacherRecipe().prior_scale
    # the whole model: one call brings back the teacher, its posterior equal to the posterior file's
    teacher = bd.load_model(cnn_run / "model.pt")
    assert all(torch.equal(teacher.posterior().locs[k], q.locs[k]) for k in q.locs)


def test_fit_regression_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reg"
    args = ["fit", "--dataset", "synthetic-regression", "--model", "mlp", "--hidden", "16", "--quiet",
            "--num-samples", "4", "--out", str(out)]
    assert main(args + ["--epochs", "1"]) == 0
    first = read_history(out / "history.csv")
    assert main(args + ["--epochs", "2", "--resume", "--extend"]) == 0
    metrics = check_artefacts(out)
    rows = read_history(out / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert rows[0]["elbo"] == first[0]["elbo"]  # resumed, not retrained
    assert metrics["task"] == "regression" and {"rmse", "nll"} <= set(metrics["test"])
    assert bd.MeanFieldPosterior.load(out / "posterior.pt").metadata["likelihood"] == "normal"
    capsys.readouterr()
    assert main(["evaluate", "--posterior", str(out / "posterior.pt"), "--num-samples", "4", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["test"]
    assert got["rmse"] == metrics["test"]["rmse"] and got["nll"] == metrics["test"]["nll"]
    assert main(["evaluate", "--posterior", str(out / "model.pt"), "--num-samples", "4", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["test"]  # the model file: the learned noise too
    assert got["rmse"] == metrics["test"]["rmse"] and got["nll"] == metrics["test"]["nll"]


def test_teacher_recipe_drives_fit_parser() -> None:
    d = TeacherRecipe()
    assert set(d.to_dict()) == {"epochs", "lr", "batch_size", "prior_scale", "lr_schedule", "channels", "kl_weight"}
    args = cli.build_parser().parse_args(["fit", "--out", "x"])
    assert args.epochs == d.epochs and args.lr == d.lr
    assert args.batch_size == d.batch_size and args.channels == d.channels
    assert args.prior_scale == d.prior_scale and args.lr_schedule == "cosine"
    assert args.kl_weight == d.kl_weight
    assert args.dataset == "mnist1d" and args.model == "cnn"
    assert args.threads is None and args.allow_imports is False and args.seed == RunSettings().seed
    assert args.ood is True and cli.build_parser().parse_args(["fit", "--out", "x", "--no-ood"]).ood is False


def test_fit_reports_ood_detection_unless_no_ood(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["fit", *TINY, "--out", str(tmp_path / "on")]) == 0
    printed = capsys.readouterr().out
    u = json.loads((tmp_path / "on" / "metrics.json").read_text())["uncertainty"]
    assert u["kinds"] == ["inverted", "rotated", "noise"] and u["num_samples"] == 2 and u["applicable"] is True
    assert "OOD detection: AUROC" in printed and "rotated" in printed and "selective area" in printed
    (tmp_path / "run.toml").write_text("ood = false\n")  # the run-configuration file's key
    assert main(["fit", *TINY, "--out", str(tmp_path / "off"), "--config", str(tmp_path / "run.toml")]) == 0
    m = json.loads((tmp_path / "off" / "metrics.json").read_text())
    assert m["uncertainty"] is None and m["config"]["ood"] is False and "OOD" not in capsys.readouterr().out


def test_local_reparam_option_values() -> None:
    parse = cli.build_parser().parse_args
    assert parse(["fit", "--out", "x"]).local_reparam is False
    assert parse(["fit", "--local-reparam", "--out", "x"]).local_reparam == "all"
    assert parse(["fit", "--out", "x", "--local-reparam"]).local_reparam == "all"
    assert parse(["fit", "--local-reparam", "linear", "--out", "x"]).local_reparam == "linear"
    with pytest.raises(SystemExit):
        parse(["fit", "--local-reparam", "conv", "--out", "x"])


# ----------------------------------------------------------------------------- the run folder
def test_a_folder_holding_a_run_is_refused_and_overwrite_replaces_it(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["fit", *TINY, "--out", str(out)]) == 0
    before = (out / "model.pt").read_bytes()
    (out / "stale.txt").write_text("not ours")
    capsys.readouterr()
    assert main(["fit", *TINY, "--seed", "1", "--out", str(out)]) == 2
    one_line_error(capsys, "already holds a run", "--resume", "--overwrite")
    assert (out / "model.pt").read_bytes() == before  # untouched
    # a finished run without a checkpoint (--no-checkpoint) is refused all the same
    out2 = tmp_path / "no-ckpt"
    assert main(["fit", *TINY, "--no-checkpoint", "--out", str(out2)]) == 0
    assert main(["fit", *TINY, "--no-checkpoint", "--out", str(out2)]) == 2
    one_line_error(capsys, "already holds a run", "--overwrite")
    assert main(["fit", *TINY, "--seed", "1", "--overwrite", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["seed"] == 1
    assert (out / "model.pt").read_bytes() != before and (out / "stale.txt").exists()  # only our files replaced


def test_resume_with_more_epochs_needs_extend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["fit", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["fit", *TINY, "--epochs", "2", "--resume", "--out", str(out)]) == 2
    one_line_error(capsys, "planned for 1 epochs", "--extend")
    assert main(["fit", *TINY, "--lr", "0.01", "--resume", "--out", str(out)]) == 2
    one_line_error(capsys, "different settings", "lr")
    assert main(["fit", *TINY, "--epochs", "2", "--resume", "--extend", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs_trained"] == 2


def test_out_naming_a_file_and_a_truncated_checkpoint_are_one_line_errors(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "a-file"
    file.write_text("x")
    assert main(["fit", *TINY, "--out", str(file)]) == 2
    one_line_error(capsys, "is a file")
    out = tmp_path / "run"
    assert main(["fit", *TINY, "--out", str(out)]) == 0
    ckpt = out / "checkpoints" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    capsys.readouterr()
    assert main(["fit", *TINY, "--resume", "--out", str(out)]) == 2
    one_line_error(capsys, "could not be read as a checkpoint", "--overwrite")


# ----------------------------------------------------------------------------- threads, imports, config
def test_threads_are_set_and_recorded(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    out = tmp_path / "t"
    assert main(["fit", *TINY, "--threads", "2", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["threads"] == 2 and m["environment"]["torch_threads"] == 2
    assert bd.experiments.read_model_file(out / "model.pt").environment["torch_threads"] == 2
    assert bd.MeanFieldPosterior.load(out / "posterior.pt").metadata["torch_threads"] == 2
    assert torch.get_num_threads() == before  # restored after the run


def test_a_model_and_data_by_import_path_need_allow_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    marker = write_factory_package(tmp_path / "src", "bdcli_fit_pkg")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    out = tmp_path / "mine"
    argv = ["fit", "--dataset", "bdcli_fit_pkg.nets:data", "--model", "bdcli_fit_pkg.nets:tiny", "--model-kwargs",
            '{"hidden": 5}', "--epochs", "1", "--num-samples", "2", "--quiet", "--out", str(out)]
    assert main(argv) == 2
    one_line_error(capsys, "bdcli_fit_pkg.nets", "--allow-imports")
    assert not marker.exists() and "bdcli_fit_pkg.nets" not in sys.modules and not out.exists()
    assert main(argv + ["--allow-imports", "other_pkg"]) == 2  # an allow list without this package
    one_line_error(capsys, "--allow-imports")
    assert main(argv + ["--allow-imports", "bdcli_fit_pkg"]) == 0
    assert marker.exists()
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "bdcli_fit_pkg.nets:tiny" and m["dataset"] == "bdcli_fit_pkg.nets:data"
    assert m["train_size"] == 72 and m["config"]["model_kwargs"] == {"hidden": 5}
    # the saved model names its factory; loading imports it only when allowed
    with pytest.raises(bd.experiments.ImportNotAllowedError, match="allow_imports"):
        bd.load_model(out / "model.pt")
    bnn = bd.load_model(out / "model.pt", allow_imports=["bdcli_fit_pkg"])
    assert bnn.shapes["1.weight"] == (5, 6)
    capsys.readouterr()
    assert main(["evaluate", "--posterior", str(out), "--json", "--num-samples", "2"]) == 2
    one_line_error(capsys, "--allow-imports")
    assert main(["evaluate", "--posterior", str(out), "--json", "--num-samples", "2", "--allow-imports"]) == 0
    assert json.loads(capsys.readouterr().out)["test"] == m["test"]


def test_a_run_configuration_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.toml"
    out = tmp_path / "from-file"
    config.write_text(f'dataset = "digits"\nmodel = "mlp"\nhidden = [12]\nepochs = 2\nnum-samples = 2\n'
                      f'lr_schedule = "none"\nquiet = true\nout = "{out}"\n\n[fit]\nseed = 3\n\n'
                      '[distill]\nstudent = "cnn-small"\n')
    assert main(["fit", "--config", str(config), "--epochs", "1"]) == 0  # the flag overrides the file
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs_trained"] == 1 and m["config"]["hidden"] == [12] and m["config"]["seed"] == 3
    assert m["config"]["lr_schedule"] == "none" and m["test"]["num_samples"] == 2 and m["dataset"] == "digits"
    capsys.readouterr()
    config.write_text('dataset = "digits"\nepoch = 2\nbogus = 1\nout = "x"\n')
    assert main(["fit", "--config", str(config)]) == 2
    one_line_error(capsys, "unknown keys", "bogus", "epoch")
    config.write_text('allow_imports = true\nout = "x"\n')
    assert main(["fit", "--config", str(config)]) == 2
    one_line_error(capsys, "allow_imports", "--allow-imports")
    config.write_text('epochs = [\n')
    assert main(["fit", "--config", str(config)]) == 2
    one_line_error(capsys, "not a valid TOML file")
    assert main(["fit", "--config", str(tmp_path / "missing.toml")]) == 2
    one_line_error(capsys, "no run-configuration file")


# ----------------------------------------------------------------------------- errors
def test_unknown_dataset_and_model_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--dataset", "imagenet", "--epochs", "1", "--out", str(tmp_path / "a")]) == 2
    one_line_error(capsys, "unknown dataset 'imagenet'", "mnist1d")
    assert not (tmp_path / "a").exists()  # nothing is created for a failed lookup
    assert main(["fit", "--dataset", "digits", "--model", "resnet", "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "b")]) == 2
    err = one_line_error(capsys, "unknown model 'resnet'")
    assert not err.split("error: ", 1)[1].startswith("'")  # no KeyError quoting


def test_unavailable_cuda_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["fit", "--dataset", "digits", "--device", "cuda", "--epochs", "1",
                 "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "CUDA is not available")


# ----------------------------------------------------------------------------- torchrun
def test_fit_under_torchrun_writes_one_set_of_artefacts(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "BAYESDISTILL_CACHE": str(cache_dir), "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "0",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", "-m", "bayesdistill", "fit", *TINY,
           "--epochs", "2", "--threads", "1", "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test metrics:") == 1  # rank 0 prints
    m = check_artefacts(out)
    assert m["environment"]["world_size"] == 2 and m["epochs_trained"] == 2
    assert sorted(p.name for p in out.iterdir()) == sorted([*ARTEFACTS, "checkpoints"])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint.pt", "history.csv"]
    assert len(read_history(out / "history.csv")) == 2
    assert bd.experiments.read_model_file(out).environment["world_size"] == 2
