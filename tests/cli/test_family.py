"""The family commands end to end on tiny settings: ``generalized``, ``record`` + ``datafree``,
``grow``; their refusals (one line on stderr, exit status 2) and reports rendered from metrics.json."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest

from _helpers import one_line_error, run_cli
from bayesdistill import cli
from bayesdistill.cli import main
from bayesdistill.experiments.family_reports import mean_pm_std, network_columns
from bayesdistill.experiments.reports import markdown_table

RUN = ["--quiet", "--device", "cpu", "--threads", "1"]
TINY = ["--num-samples", "2", *RUN]


def _run(cache_dir: Path, argv: list[str]) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run_cli(cache_dir, argv) == 0
    return buf.getvalue()


@pytest.fixture(scope="module")
def teacher(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Bayesian MLP on MNIST-1D: 1 epoch on 10 % of the data."""
    out = tmp_path_factory.mktemp("family-teacher")
    assert run_cli(cache_dir, ["fit", "--dataset", "mnist1d", "--model", "mlp", "--hidden", "32,32", "--epochs", "1",
                               "--train-fraction", "0.1", "--no-checkpoint", "--no-ood", "--out", str(out), *TINY]) == 0
    return out / "model.pt"


@pytest.fixture(scope="module")
def grown(cache_dir: Path, teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("grown") / "run"
    printed = _run(cache_dir, ["grow", "--small", str(teacher), "--model", "mlp", "--hidden", "48,48", "--epochs", "1",
                               "--train-fraction", "0.1", "--compare", "--out", str(out), *TINY])
    return out, printed


def test_help_lists_the_family_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("generalized", "record", "datafree", "grow"):
        assert command in text
    parse = cli.build_parser().parse_args
    for argv in (["generalized", "--out", "x"], ["record", "--teacher", "t", "--out", "r"],
                 ["datafree", "--teacher", "t", "--record", "r", "--out", "x"],
                 ["grow", "--small", "s", "--model", "mlp", "--out", "x"]):
        args = parse([*argv, "--threads", "3", "--device", "cpu", "--quiet"])
        assert args.threads == 3 and args.device == "cpu" and args.quiet


# ----------------------------------------------------------------------------- generalized
def test_generalized_writes_metrics_and_a_report_from_them(cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gd"
    printed = _run(cache_dir, ["generalized", "--dataset", "privileged-clean-labels", "--seeds", "0", "1",
                               "--epochs", "2", "--out", str(out), *TINY])
    m = json.loads((out / "metrics.json").read_text())
    assert m["seeds"] == [0, 1] and m["roles"] == ["teacher", "student", "distilled"]
    assert [e["seed"] for e in m["per_seed"]] == [0, 1]
    report = (out / "report.md").read_text()
    for role in m["roles"]:
        for metric in ("accuracy", "nll", "ece", "selective_area"):
            assert mean_pm_std(m["summary"][role][metric]) in report
            assert mean_pm_std(m["summary"][role][metric]) in printed
        accs = [e[role]["test"]["accuracy"] for e in m["per_seed"]]
        assert m["summary"][role]["accuracy"]["mean"] == pytest.approx(sum(accs) / 2)
    assert mean_pm_std(m["gain"]) in report
    # the finished run is not overwritten without --overwrite
    assert run_cli(cache_dir, ["generalized", "--seeds", "0", "--epochs", "1", "--out", str(out), *TINY]) == 2


def test_generalized_refuses_a_data_set_without_privileged_inputs(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generalized", "--dataset", "mnist1d", "--out", str(tmp_path / "x"), *TINY]) == 2
    one_line_error(capsys, "'mnist1d'", "privileged-clean-labels", "privileged-sample-dependent-top3")
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- record + datafree
def test_record_then_datafree(cache_dir: Path, teacher: Path, tmp_path: Path) -> None:
    record = tmp_path / "teacher.record.pt"
    printed = _run(cache_dir, ["record", "--teacher", str(teacher), "--kind", "top", "--out", str(record), *RUN])
    assert record.is_file() and "top record" in printed and "400 training examples" in printed
    out = tmp_path / "df"
    _run(cache_dir, ["datafree", "--teacher", str(teacher), "--record", str(record), "--student", "mlp",
                     "--hidden", "16", "--inputs", "100", "--steps", "2", "--epochs", "1", "--out", str(out), *TINY])
    m = json.loads((out / "metrics.json").read_text())
    assert m["reconstruction"]["inputs"] == 100 and m["record"]["kind"] == "top"
    assert set(m["networks"]) == {"teacher", "student"}
    assert m["networks"]["student"]["uncertainty"]["applicable"]  # OOD and selective numbers
    assert markdown_table(network_columns(m["networks"])) in (out / "report.md").read_text()
    # the student's model file is read by evaluate, which reproduces its test metrics
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run_cli(cache_dir, ["evaluate", "--posterior", str(out / "model.pt"), "--json", "--no-ood", *TINY]) == 0
    assert json.loads(buf.getvalue())["test"]["accuracy"] == m["networks"]["student"]["test"]["accuracy"]
    # an existing record is not replaced without --overwrite
    assert run_cli(cache_dir, ["record", "--teacher", str(teacher), "--kind", "top", "--out", str(record), *RUN]) == 2


def test_datafree_refuses_another_teachers_record(cache_dir: Path, teacher: Path, grown: tuple[Path, str],
                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = tmp_path / "r.pt"
    _run(cache_dir, ["record", "--teacher", str(teacher), "--kind", "top", "--out", str(record), *RUN])
    capsys.readouterr()
    code = run_cli(cache_dir, ["datafree", "--teacher", str(grown[0] / "model.pt"), "--record", str(record),
                               "--out", str(tmp_path / "df"), *TINY])
    assert code == 2
    one_line_error(capsys, "another teacher")
    assert not (tmp_path / "df").exists()


# ----------------------------------------------------------------------------- grow
def test_grow_with_compare(cache_dir: Path, grown: tuple[Path, str]) -> None:
    out, printed = grown
    for name in ("model.pt", "plan.pt", "plan.json", "metrics.json", "report.md", "history.csv",
                 "scratch_history.csv", "elbo.png"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["networks"]) == ["small", "grown", "scratch"]
    assert m["plan"]["function_preserving"] and m["config"]["mode"] == "net2net"
    assert markdown_table(network_columns(m["networks"])) in (out / "report.md").read_text()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run_cli(cache_dir, ["evaluate", "--posterior", str(out / "model.pt"), "--json", "--no-ood", *TINY]) == 0
    assert json.loads(buf.getvalue())["test"]["accuracy"] == m["networks"]["grown"]["test"]["accuracy"]


def test_grow_refuses_a_plan_that_shrinks(teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["grow", "--small", str(teacher), "--model", "mlp", "--hidden", "16,16", "--out",
                 str(tmp_path / "g"), *TINY]) == 2
    one_line_error(capsys, "cannot shrink", "bd.align")
    assert not (tmp_path / "g").exists()


# ----------------------------------------------------------------------------- adversarial prior
def test_adversarial_prior_is_a_distill_method(cache_dir: Path, cnn_run: Path, tmp_path: Path) -> None:
    """docs/adversarial-prior.md: the registered term is a method of ``distill``, flags from the registry."""
    out = tmp_path / "adv"
    _run(cache_dir, ["distill", "--teacher", str(cnn_run / "model.pt"), "--student", "cnn", "--channels", "8",
                     "--method", "adversarial_prior", "--adversarial-prior-critic-steps", "2", "--epochs", "1",
                     "--train-fraction", "0.1", "--no-ood", "--out", str(out), *TINY])
    m = json.loads((out / "metrics.json").read_text())
    assert m["methods"] == ["adversarial_prior"] and m["function_space"]["terms"] == ["adversarial_prior"]


def test_datafree_passes_the_deepinversion_weights_to_the_reconstruction(
        cache_dir: Path, teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bayesdistill.distill.datafree import student as df_student

    seen: list[dict] = []
    real = df_student.reconstruct

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(df_student, "reconstruct", spy)
    record = tmp_path / "r.pt"
    _run(cache_dir, ["record", "--teacher", str(teacher), "--kind", "all", "--out", str(record), *RUN])
    common = ["--teacher", str(teacher), "--record", str(record), "--hidden", "16", "--inputs", "20", "--steps", "1",
              "--epochs", "1", *TINY]
    _run(cache_dir, ["datafree", *common, "--objective", "deepinversion", "--tv-weight", "0.5", "--feature-weight", "2",
                     "--out", str(tmp_path / "di")])
    _run(cache_dir, ["datafree", *common, "--out", str(tmp_path / "match")])
    assert seen[0]["objective"] == "deepinversion"
    assert (seen[0]["tv_weight"], seen[0]["feature_weight"]) == (0.5, 2.0)
    assert seen[1]["objective"] == "match" and "tv_weight" not in seen[1]
    m = json.loads((tmp_path / "di" / "metrics.json").read_text())
    assert m["reconstruction"]["objective"] == "deepinversion"
