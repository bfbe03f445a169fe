"""Tests for the function-space options of ``bayesdistill distill`` (``--method``, ``--transfer``,
``--vid-pairs``): one-epoch runs on 10 % of MNIST-1D with a small CNN teacher."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest

import bayesdistill as bd
from _helpers import one_line_error, run_cli
from bayesdistill import cli
from bayesdistill.cli import FUNCTION_SPACE_DEFAULTS, METHODS, main

FS_ARTEFACTS = ("metrics.json", "posterior.pt", "history.csv", "plain_history.csv", "elbo.png", "vid_bounds.png",
                "cosine_distances.png")
SMALL = ["--train-fraction", "0.1", "--epochs", "1", "--num-samples", "2", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def teacher(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cnn teacher with 8 channels: 1 epoch on 10 % of MNIST-1D (modules: ReLU '6' before the Flatten)."""
    out = tmp_path_factory.mktemp("cnn-teacher")
    code = run_cli(cache_dir, ["fit", "--dataset", "mnist1d", "--model", "cnn", "--channels", "8", "--epochs", "1",
                   "--train-fraction", "0.1", "--num-samples", "2", "--quiet", "--no-checkpoint", "--device", "cpu",
                   "--out", str(out)])
    assert code == 0
    return out / "posterior.pt"


@pytest.fixture(scope="module")
def kd_vid(cache_dir: Path, teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cnn -> mlp (not reachable by alignment) with --method kd,vid."""
    out = tmp_path_factory.mktemp("kd-vid")
    code = run_cli(cache_dir, ["distill", "--teacher", str(teacher), "--student", "mlp", "--hidden", "16,16",
                   "--method", "kd,vid", *SMALL, "--out", str(out)])
    assert code == 0
    return out


def _history(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_kd_vid_cnn_to_mlp_writes_all_artefacts(kd_vid: Path) -> None:
    for name in FS_ARTEFACTS:
        assert (kd_vid / name).is_file() and (kd_vid / name).stat().st_size > 0, name
    for name in ("elbo.png", "vid_bounds.png", "cosine_distances.png"):
        assert (kd_vid / name).read_bytes()[:4] == b"\x89PNG", name
    for name in ("plan.json", "plan.pt", "alignment.png", "pruning_curve.png"):  # no alignment without prior
        assert not (kd_vid / name).exists(), name
    rows = _history(kd_vid / "history.csv")
    assert len(rows) == 1
    assert {"distill/kd/loss", "distill/vid/loss", "distill/vid/pair0/log_q", "distill/vid/pair0/mi_bound"} <= set(rows[0])
    assert float(rows[0]["distill/kd/loss"]) >= 0.0
    assert "distill/kd/loss" not in _history(kd_vid / "plain_history.csv")[0]  # the plain reference has no terms

    m = json.loads((kd_vid / "metrics.json").read_text())
    assert m["methods"] == ["kd", "vid"] and m["config"]["method"] == ["kd", "vid"]
    assert m["aligned"] is None and m["plan"] is None and m["pruning_curve"] is None and m["probe_size"] == 0
    fs = m["function_space"]
    # the default pair: the teacher's ReLU before the Flatten -> the student's last hidden ReLU
    assert fs["pairs"] == {"6": "4"} and fs["terms"] == ["kd", "vid"] and fs["transfer_size"] == 0
    assert fs["settings"] == {k: FUNCTION_SPACE_DEFAULTS[k] for k in ("kd_temperature", "kd_weight", "vid_weight")}
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


def test_prior_with_unalignable_student_exits_2(teacher: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bad"
    capsys.readouterr()
    assert main(["distill", "--teacher", str(teacher), "--student", "mlp", "--method", "prior,kd", *SMALL,
                 "--out", str(out)]) == 2
    one_line_error(capsys, "--method prior", "--method kd")
    assert main(["distill", "--teacher", str(teacher), "--student", "mlp", "--hidden", "4", "--method", "prior",
                 *SMALL, "--out", str(out)]) == 2
    one_line_error(capsys, "--method prior", "cannot align teacher cnn to student mlp", "kd")
    assert not out.exists()


def test_transfer_needs_mnist1d_and_a_function_space_method(teacher: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    digits = tmp_path / "digits-teacher"
    assert main(["fit", "--dataset", "digits", "--model", "mlp", "--hidden", "8", "--epochs", "1", "--quiet",
                 "--num-samples", "2", "--no-checkpoint", "--out", str(digits)]) == 0
    out = tmp_path / "bad"
    capsys.readouterr()
    assert main(["distill", "--teacher", str(digits / "posterior.pt"), "--student", "mlp", "--hidden", "4",
                 "--method", "kd", "--transfer", "100", *SMALL, "--out", str(out)]) == 2
    one_line_error(capsys, "--transfer", "mnist1d", "digits")
    assert main(["distill", "--teacher", str(teacher), "--student", "cnn", "--channels", "4", "--transfer", "100",
                 *SMALL, "--out", str(out)]) == 2
    one_line_error(capsys, "--transfer", "kd")
    assert main(["distill", "--teacher", str(teacher), "--student", "mlp", "--method", "kd", "--vid-pairs", "6:4",
                 *SMALL, "--out", str(out)]) == 2
    one_line_error(capsys, "--vid-pairs")
    assert main(["distill", "--teacher", str(teacher), "--student", "mlp", "--method", "vid", "--vid-pairs", "6:9",
                 *SMALL, "--out", str(out)]) == 2
    one_line_error(capsys, "student has no module '9'")
    assert not out.exists()


def test_transfer_pkt_hint_and_pairs(teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    samples = bd.datasets.mnist1d_samples

    def recording(n, seed, *args, **kw):
        calls.append((n, seed))
        return samples(n, seed, *args, **kw)

    monkeypatch.setattr(bd.datasets, "mnist1d_samples", recording)
    out = tmp_path / "pkt-hint"
    assert main(["distill", "--teacher", str(teacher), "--student", "mlp", "--hidden", "16,16",
                 "--method", "pkt,hint,kd", "--vid-pairs", "4:2,6:4", "--transfer", "300", "--seed", "3", *SMALL,
                 "--out", str(out)]) == 0
    assert calls == [(300, 1003)]  # the transfer set: generated MNIST-1D inputs, seed 1000 + --seed
    row = _history(out / "history.csv")[0]
    # one PKT term over both pairs, one Hint term, KD
    assert {"distill/pkt/loss", "distill/pkt/pair0/loss", "distill/pkt/pair1/loss", "distill/hint/loss",
            "distill/hint/pair1/loss", "distill/kd/loss"} <= set(row) and "distill/vid/loss" not in row
    assert not (out / "vid_bounds.png").exists() and (out / "cosine_distances.png").is_file()
    fs = json.loads((out / "metrics.json").read_text())["function_space"]
    assert fs["pairs"] == {"4": "2", "6": "4"} and fs["transfer_size"] == 300


def test_prior_and_kd_together(teacher: Path, tmp_path: Path) -> None:
    """An alignable student gets the teacher prior and a KD term."""
    out = tmp_path / "prior-kd"
    assert main(["distill", "--teacher", str(teacher), "--student", "cnn", "--channels", "4",
                 "--method", "prior,kd", "--monitor", *SMALL, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["methods"] == ["prior", "kd"] and m["aligned"] is not None and m["plan"] is not None
    assert (out / "plan.json").is_file() and (out / "students.png").is_file()
    assert "distill/kd/loss" in _history(out / "history.csv")[0]
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
    assert set(METHODS) == {"prior", "kd", "vid", "pkt", "hint", "tinybert", "adversarial_prior"}  # prior and the registered terms
    for bad in (["--method", "magic"], ["--method", ""], ["--vid-pairs", "8"], ["--vid-pairs", "8:4,8:2"],
                ["--transfer", "0"], ["--kd-weight", "1.5"], ["--vid-weight", "0"]):
        with pytest.raises(SystemExit) as exc:
            parse(["distill", "--teacher", "t.pt", "--student", "mlp", "--out", "x", *bad])
        assert exc.value.code == 2


def test_last_hidden_finds_the_feature_modules() -> None:
    """The CLI's default pairs come from bd.bnn.last_hidden_layer (tested in tests/bnn/test_taps.py);
    a network without one is a one-line error naming the flag."""
    assert cli._last_hidden(bd.models.build("cnn-deep", (40,), 10)) == "8"
    import torch

    with pytest.raises(cli.CLIError, match="--vid-pairs"):
        cli._last_hidden(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)))
