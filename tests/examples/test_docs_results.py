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


@pytest.mark.parametrize("name", ["privileged", "datafree"])
def test_docs_tables_are_the_benchmarks_rendering_of_the_committed_results(name: str) -> None:
    summary = json.loads((ROOT / "docs" / "results" / f"{name}.json").read_text())
    rendered = _benchmark(name).render(summary)
    doc = (ROOT / "docs" / f"{name}.md").read_text()
    for block in rendered.split("\n\n"):
        assert block.strip() in doc, f"docs/{name}.md does not hold this block of the rendered results:\n{block}"
    for figure in (ROOT / "docs" / "figures").glob(f"{name}_*.png"):
        assert figure.name in doc
