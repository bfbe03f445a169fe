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
    # runs side by side (one data set each) merge into the same tables
    payload = json.loads((quick_run / "table.json").read_text())
    for d in ("digits", "mnist1d"):
        part = {**payload, "config": {**payload["config"], "datasets": [d]},
                "results": [r for r in payload["results"] if r["dataset"] == d],
                "teachers": [t for t in payload["teachers"] if t["dataset"] == d]}
        (quick_run / f"{d}.json").write_text(json.dumps(part))
    merged = table.merge_runs([json.loads((quick_run / f"{d}.json").read_text()) for d in ("digits", "mnist1d")])
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
