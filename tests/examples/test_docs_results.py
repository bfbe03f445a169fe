"""The docs' result tables of generalized distillation and data-free distillation are the benchmark
scripts' rendering of the committed results (no number typed by hand), and every figure of theirs in
``docs/figures`` is shown on its page. (Their example notebooks run in ``test_notebooks.py``.)"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _benchmark(name: str):
    path = ROOT / "benchmarks" / f"{name}.py"
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    finally:
        sys.path.remove(str(path.parent))
    return module


@pytest.mark.parametrize("name,results", [("privileged", "privileged"), ("datafree", "datafree"),
                                          ("datafree", "datafree_cnn")])
def test_docs_tables_are_the_benchmarks_rendering_of_the_committed_results(name: str, results: str) -> None:
    summary = json.loads((ROOT / "docs" / "results" / f"{results}.json").read_text())
    rendered = _benchmark(name).render(summary)
    doc = (ROOT / "docs" / f"{name}.md").read_text()
    for block in rendered.split("\n\n"):
        assert block.strip() in doc, f"docs/{name}.md does not hold this block of the rendered results:\n{block}"
    for figure in (ROOT / "docs" / "figures").glob(f"{name}_*.png"):
        assert figure.name in doc


def test_datafree_benchmark_with_a_cnn_teacher_runs_without_the_spectral_records(tmp_path: Path) -> None:
    """``benchmarks/datafree.py --teacher cnn --quick`` (about 15 s): the spectral records, which need
    fully connected layers, are left out rather than failing; the rest runs and names the CNN teacher."""
    bench = _benchmark("datafree")
    assert bench.main(["--quick", "--teacher", "cnn", "--cache", str(tmp_path), "--json",
                       str(tmp_path / "run.json"), "--figures", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "run.json").read_text())
    methods = {r["method"] for r in payload["results"]}
    assert methods == {m for m in bench.METHODS if bench.METHODS[m][0] not in bench.CHAIN_KINDS}
    assert payload["config"]["teacher"] == "cnn" and payload["config"]["teacher_epochs"] == 5
    assert "1-D CNN" in bench.render(bench.summarize(payload))
    assert (tmp_path / "datafree_cnn_accuracy.png").exists() and (tmp_path / "datafree_cnn_inputs.png").exists()
