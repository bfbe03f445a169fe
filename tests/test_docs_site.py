"""The documentation site: ``mkdocs build --strict`` succeeds, and the generated API reference
documents every public name (through the objects inventory the build writes) with a docstring.

One strict build, shared by the module (notebooks rendered without outputs:
``BAYESDISTILL_DOCS_NOTEBOOKS=off``; CI's final ``mkdocs build --strict`` is the full one).
mkdocs is in the ``docs`` extra; without it these tests fail, they do not skip.
"""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
import types
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = ["bayesdistill", "bayesdistill.bnn", "bayesdistill.infer", "bayesdistill.distill",
          "bayesdistill.distill.align", "bayesdistill.distill.terms", "bayesdistill.diagnostics",
          "bayesdistill.diagnostics.plots", "bayesdistill.datasets", "bayesdistill.models",
          "bayesdistill.experiments", "bayesdistill.errors"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, BAYESDISTILL_DOCS_NOTEBOOKS="off",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _inventory(site: Path) -> set[str]:
    data = (site / "objects.inv").read_bytes()
    header_end = 0
    for _ in range(4):  # four header lines, then zlib
        header_end = data.index(b"\n", header_end) + 1
    body = zlib.decompress(data[header_end:]).decode()
    return {line.split(" ", 1)[0] for line in body.splitlines() if line.strip()}


def _public_names() -> list[tuple[str, str, object]]:
    names = []
    for module_name in PUBLIC:
        module = importlib.import_module(module_name)
        names += [(module_name, name, getattr(module, name)) for name in module.__all__]
    return names


def _documented_as(module_name: str, name: str, obj: object) -> list[str]:
    """The identifiers under which the reference may document ``module_name.name``: that path, or,
    for a re-exported module, class or function, the path where it is defined."""
    paths = [f"{module_name}.{name}"]
    if isinstance(obj, types.ModuleType):
        paths.append(obj.__name__)
    elif inspect.isclass(obj) or inspect.isfunction(obj):
        paths.append(f"{obj.__module__}.{obj.__qualname__}")
    return paths


def test_strict_build(site: Path):
    assert (site / "index.html").is_file()
    assert (site / "reference" / "bayesdistill" / "index.html").is_file()
    assert (site / "examples" / "index.html").is_file()
    notebooks = sorted(p.stem for p in (ROOT / "examples").glob("*.ipynb"))
    assert notebooks and all((site / "examples" / stem / "index.html").is_file() for stem in notebooks)


def test_every_public_name_is_in_the_reference(site: Path):
    inventory = _inventory(site)
    missing = [f"{m}.{n}" for m, n, obj in _public_names()
               if not any(path in inventory for path in _documented_as(m, n, obj))]
    assert not missing, f"not in the API reference (docs/reference/*.md): {missing}"


def test_reference_anchors_the_names_the_docs_link_to(site: Path):
    page = (site / "reference" / "bayesdistill" / "index.html").read_text(encoding="utf-8")
    for name in ("BNN", "MeanFieldPosterior", "fit", "evaluate", "predict", "align", "save_model", "load_model"):
        assert f'id="bayesdistill.{name}"' in page, name


def test_every_public_callable_has_a_docstring():
    bare = []
    for module_name, name, obj in _public_names():
        if isinstance(obj, types.ModuleType):
            doc = obj.__doc__
        elif inspect.isclass(obj):
            doc = obj.__dict__.get("__doc__")  # its own, not a base class's
            if doc and doc.startswith(f"{obj.__name__}("):
                doc = None  # the signature dataclasses write when a class has no docstring
        elif callable(obj):
            doc = obj.__doc__
        else:
            continue
        if not (doc or "").strip():
            bare.append(f"{module_name}.{name}")
    assert not bare, f"public objects without a docstring: {bare}"


def test_api_md_is_gone_and_nothing_links_to_it():
    assert not (ROOT / "docs" / "api.md").exists()
    linking = [str(p.relative_to(ROOT)) for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
               if "api.md" in p.read_text(encoding="utf-8")]
    assert not linking, linking
