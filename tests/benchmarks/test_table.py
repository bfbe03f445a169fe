"""benchmarks/table.py, the comparison table: its ``--quick`` run (every data set, pair, label
setting and method, 2 seeds, 1 epoch on a few examples; about 15 s of CPU time) writes a JSON, a
Markdown table and a figure of the expected structure; the numbers of a quick run mean nothing
and are not checked."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("bench_table", ROOT / "benchmarks" / "table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_table"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_table", None)


@pytest.fixture(scope="module")
def quick_run(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("table")
    assert table.main(["--quick", "--out", str(out), "--teacher-cache", str(out / "teachers")]) == 0
    return out


def _expected_cells(table):
    return {(d, p, s, m) for d, spec in table.DATASETS.items() for p in spec["pairs"] for s in table.SETTINGS
            for m in table.METHODS if table.applies(m, d, p)}


def test_quick_run_covers_every_cell_with_two_seeds(table, quick_run):
    payload = json.loads((quick_run / "table.json").read_text())
    cells = _expected_cells(table)
    assert {(r["dataset"], r["pair"], r["setting"], r["method"]) for r in payload["results"]} == cells
    # every built-in data set, same- and cross-kind pairs, both label settings, the methods that apply
    assert {c[0] for c in cells} == {"mnist1d", "digits", "synthetic-regression"}
    assert {"same-kind", "cross-kind"} <= {c[1] for c in cells} and {c[2] for c in cells} == {"10%", "full"}
    assert {c[3] for c in cells if c[0] == "synthetic-regression"} == {
        "plain", "hint", "pkt", "vid", "prior", "prior+vid", "heavy"}  # no KD on regression
    assert ("mnist1d", "cross-kind", "10%", "prior") not in cells  # no alignment from a CNN into an MLP
    for r in payload["results"]:
        keys = (("accuracy", "nll", "ece", "confidence", "auroc_mi", "auroc_h", "sel_area")
                if r["dataset"] != "synthetic-regression" else ("rmse", "nll"))
        assert all(isinstance(r[k], float) for k in keys) and r["fit_s"] >= 0 and r["cpu_s"] >= 0
    assert len(payload["summary"]) == len(cells)
    for e in payload["summary"]:
        assert e["seeds"] == [0, 1]
        assert all(m["n"] == 2 and m["std"] >= 0 for m in e["metrics"].values())
        assert set(e["verdict"]) == (set() if e["method"] == "plain" else set(e["metrics"]))
        assert set(e["verdict"].values()) <= {"better", "worse", "same"}
    assert {t["dataset"] for t in payload["teachers"]} == set(table.DATASETS)
    assert payload["config"]["quick"] and payload["seconds"] > 0 and payload["cpu_seconds"] > 0
    # the record says what ran, not where this machine kept its outputs and teachers
    assert payload["config"]["command"] == "python benchmarks/table.py --quick"


def test_recorded_command_leaves_out_the_locations_and_keeps_the_settings(table):
    cmd = ("python benchmarks/table.py --datasets mnist1d --teacher-cache /tmp/a/teachers --out=/tmp/b "
           "--term-kw 'kd={\"weight\": 0.25}' --out /tmp/c --seeds 0 1")
    assert table.recorded_command(cmd) == ("python benchmarks/table.py --datasets mnist1d "
                                           "--term-kw 'kd={\"weight\": 0.25}' --seeds 0 1")
    # merged runs: each part's command cleaned (parts recorded before the cleaning included)
    part = {"config": {"datasets": ["d"], "command": "python benchmarks/table.py --out /x --datasets d"},
            "results": [], "teachers": [], "seconds": 1.0, "cpu_seconds": 1.0}
    other = {**part, "config": {"datasets": ["e"], "command": "python benchmarks/table.py --datasets e"}}
    assert table.merge_runs([part, other])["config"]["command"] == (
        "python benchmarks/table.py --datasets d & python benchmarks/table.py --datasets e")
    assert table.merge_runs([part])["config"]["command"] == "python benchmarks/table.py --datasets d"


def test_paired_differences_by_hand(table):
    def row(method, seed, acc, ece):
        return {"dataset": "digits", "pair": "same-kind", "setting": "full", "method": method, "seed": seed,
                "accuracy": acc, "nll": 0.5, "ece": ece, "auroc_mi": 0.7, "sel_area": 0.9}
    rows = [row("plain", 0, 0.80, 0.05), row("plain", 1, 0.90, 0.04), row("plain", 2, 0.70, 0.06),
            row("kd", 0, 0.82, 0.07), row("kd", 1, 0.89, 0.05), row("kd", 3, 0.99, 0.00)]  # seed 3: no plain
    (e,) = table.paired(rows)
    assert e["method"] == "kd" and e["seeds"] == [0, 1]
    acc, ece = e["metrics"]["accuracy"], e["metrics"]["ece"]
    # differences: accuracy +0.02, -0.01 (worse on seed 1); ECE +0.02, +0.01 (worse on both)
    assert acc["mean"] == pytest.approx(0.005) and acc["std"] == pytest.approx(0.03 / 2 ** 0.5)
    assert (acc["worse"], acc["n"]) == (1, 2)
    assert ece["mean"] == pytest.approx(0.015) and (ece["worse"], ece["n"]) == (2, 2)
    assert e["metrics"]["nll"] == {"mean": 0.0, "std": 0.0, "n": 2, "worse": 0}
    md = table.paired_markdown({"results": rows})
    assert "| digits same-kind full | kd | +0.5 ± 2.1 (1/2) | +0.0000 ± 0.0000 (0/2) | +0.0150 ± 0.0071 (2/2) |" in md


def test_quick_run_writes_the_markdown_table_and_the_figure(table, quick_run):
    md = (quick_run / "table.md").read_text()
    for d, spec in table.DATASETS.items():
        for s in table.SETTINGS:
            assert f"### {d}, {s} of the labels" in md
    assert ("| method | same-kind: acc % | same-kind: NLL | same-kind: ECE | same-kind: OOD AUROC (MI) | "
            "same-kind: sel. area | cross-kind: acc % |") in md
    assert "| method | mlp -> mlp: RMSE | mlp -> mlp: NLL |" in md
    assert "at the last epoch" in md
    # prior applies to the same-kind pairs and the regression MLPs: "—" in the cross-kind columns
    rows = [line for line in md.splitlines() if line.startswith("| prior |")]
    assert sorted(line.count("—") for line in rows) == [0, 0, 5, 5, 5, 5]
    assert md.count("| vid (wide map) |") == 4  # the cross-kind pairs of MNIST-1D and digits, two settings
    assert "**Worse than plain beyond 2 standard deviations, accuracy / RMSE, NLL, ECE**" in md
    assert "**Worse than plain beyond 2 standard deviations, OOD AUROC, selective area**" in md
    assert (quick_run / "table.png").stat().st_size > 10_000
    # the tables again from the JSON, without training
    again = quick_run / "again"
    assert table.main(["--from-json", str(quick_run / "table.json"), "--out", str(again)]) == 0
    assert (again / "table.md").read_text() == md
    assert table.main(["--from-json", str(quick_run / "table.json"), "--out", str(again), "--paired"]) == 0
    with_paired = (again / "table.md").read_text()
    assert with_paired.startswith(md) and "### Paired differences to plain (the same seed)" in with_paired
    assert "| mnist1d cross-kind full | vid (wide map) |" in with_paired
    # runs side by side (one data set each) merge into the same tables
    payload = json.loads((quick_run / "table.json").read_text())
    for d in ("digits", "mnist1d"):
        part = {**payload, "config": {**payload["config"], "datasets": [d]},
                "results": [r for r in payload["results"] if r["dataset"] == d],
                "teachers": [t for t in payload["teachers"] if t["dataset"] == d]}
        (quick_run / f"{d}.json").write_text(json.dumps(part))
    merged = table.merge_runs([json.loads((quick_run / f"{d}.json").read_text()) for d in ("digits", "mnist1d")])
    # the merged wall time is the longest run's, and the line says so (the runs' order is unknown)
    assert merged["runs"] == 2 and "min wall time (the longest of 2 runs)" in table.findings(merged)
    assert "(the longest of" not in table.findings(payload)
    only = [r for r in payload["results"] if r["dataset"] in ("digits", "mnist1d")]
    assert merged["summary"] == table.summarize(sorted(only, key=lambda r: r["dataset"] != "digits"))
    with pytest.raises(SystemExit, match="overlap"):
        table.merge_runs([json.loads((quick_run / "digits.json").read_text())] * 2)
    # one data set split by label setting over two runs: listed once, each table once
    mnist = json.loads((quick_run / "mnist1d.json").read_text())
    halves = [{**mnist, "results": [r for r in mnist["results"] if r["setting"] == s],
               "teachers": mnist["teachers"] if s == "10%" else []} for s in table.SETTINGS]
    merged = table.merge_runs(halves)
    assert merged["config"]["datasets"] == ["mnist1d"]
    assert sorted(map(json.dumps, merged["summary"])) == sorted(map(json.dumps, table.summarize(mnist["results"])))
    assert table.markdown(merged).count("### mnist1d, full of the labels") == 1


def test_sweep_summary_of_quick_runs(table, quick_run, capsys):
    path = str(quick_run / "table.json")
    assert table.main(["--sweep-plain", path, "--sweep", f"a=b={path}"]) == 0
    out = capsys.readouterr().out
    assert "| method, setting | mnist1d same 10% |" in out
    assert "| plain (acc % or RMSE / NLL) |" in out and "| vid, a=b |" in out
    assert "| kd, a=b | +0.0 / +0.000 |" in out  # a run against itself


def test_accuracy_and_confidence_is_the_predictive_mean_by_hand(table):
    """``accuracy_and_confidence``: the posterior predictive (the mean of the draws' softmax, by
    hand from ``bd.predict``'s logits) scored against the labels."""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    import bayesdistill as bd

    torch.manual_seed(0)
    bnn = bd.BNN(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4)), dataset_size=20)
    data = TensorDataset(torch.randn(20, 3), torch.randint(0, 4, (20,)))
    acc, conf = table.accuracy_and_confidence(bnn, data, num_samples=5, seed=3)
    logits, y = bd.predict(bnn, data, num_samples=5, seed=3)
    p = torch.stack([torch.softmax(logits[s], -1) for s in range(5)]).sum(0) / 5
    right = sum(int(p[i].argmax()) == int(y[i]) for i in range(20))
    assert acc == pytest.approx(right / 20)
    assert conf == pytest.approx(float(sum(p[i].max() for i in range(20)) / 20), rel=1e-6)
    assert 0.25 <= conf <= 1.0  # a top probability of 4 classes


def test_train_fit_records_the_students_fit_of_its_training_set(table, tmp_path):
    out = tmp_path / "t"
    argv = ["--quick", "--datasets", "digits", "--settings", "full", "--pairs", "same-kind", "--methods", "plain",
            "--full-seeds", "0", "--train-fit", "--out", str(out), "--teacher-cache", str(out / "teachers")]
    assert table.main(argv) == 0
    rows = [r for r in json.loads((out / "table.json").read_text())["results"] if r["method"] == "plain"]
    assert len(rows) == 1
    assert 0.0 <= rows[0]["train_accuracy"] <= 1.0 and 0.1 <= rows[0]["train_confidence"] <= 1.0
