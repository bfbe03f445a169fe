"""The experiment pages hold no number typed by hand: their tables are exactly what the experiment
scripts render from the committed JSON (``docs/results/<name>.json``), and their figures exist.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
PAGES = {  # script -> (docs page, results JSON, figures)
    "growth": ("growth.md", "growth.json", ["growth_classes.png", "growth_features.png"]),
    "adversarial_prior": ("adversarial-prior.md", "adversarial_prior.json",
                          ["adversarial_prior_students.png", "adversarial_prior_dynamics.png"]),
}


def _script(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the scripts import their siblings _common and _report
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", list(PAGES))
def test_docs_tables_are_rendered_from_the_json(name):
    page, results, figures = PAGES[name]
    path = ROOT / "docs" / "results" / results
    if not path.exists():
        pytest.fail(f"docs/results/{results} is missing: run benchmarks/{name}.py and copy its JSON there")
    script = _script(name)
    report = sys.modules["_report"]
    blocks = script.tables(json.loads(path.read_text()))
    on_page = report.blocks_of((ROOT / "docs" / page).read_text())
    assert set(blocks) <= set(on_page), f"blocks missing from docs/{page}: {set(blocks) - set(on_page)}"
    for key, text in blocks.items():
        assert on_page[key].strip() == text.strip(), f"docs/{page} block {key!r} differs from the JSON; " \
            f"re-render with: python benchmarks/{name}.py --from-json docs/results/{results} --update-docs"
    for fig in figures:
        assert (ROOT / "docs" / "figures" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fill_blocks_replaces_only_the_named_blocks(tmp_path):
    _script("growth")
    report = sys.modules["_report"]
    page = tmp_path / "p.md"
    page.write_text("a\n<!-- BEGIN x -->\nold\n<!-- END x -->\nb\n<!-- BEGIN y -->\nkeep\n<!-- END y -->\n")
    assert report.fill_blocks(page, {"x": "new | 1"}) == ["x"]
    assert report.blocks_of(page.read_text()) == {"x": "new | 1\n", "y": "keep\n"}
    with pytest.raises(KeyError, match="no block"):
        report.fill_blocks(page, {"z": "?"})
