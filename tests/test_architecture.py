"""The package's layering (docs/architecture.md): one-way imports, no cycles, no private reach.

Parts, lowest first: base modules (errors, _io, _checks, models, datasets) < bnn < infer <
distill < diagnostics < experiments < cli. A module may import its own part and the parts
below it. The checks read the source with ``ast`` (lazy imports inside functions count too).
"""

from __future__ import annotations

import ast
from collections import defaultdict
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bayesdistill"
BASE = {"errors", "_io", "_checks", "models", "datasets", "__init__", "__main__", "_version"}
ORDER = ["base", "bnn", "infer", "distill", "diagnostics", "experiments", "cli"]


def _part(module: str) -> str:
    """``bayesdistill.infer.fit`` -> ``infer``; base modules -> ``base``."""
    bits = module.split(".")
    if len(bits) == 1:
        return "root"
    head = bits[1]
    if head in BASE:
        return "base" if head not in ("__init__", "__main__") else ("root" if head == "__init__" else "cli")
    return head


def _imports() -> list[tuple[str, str, str, int, list[str]]]:
    """(importing module, imported module, file, line, imported names) for every import of the package."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts)
        is_pkg = path.name == "__init__.py"
        if is_pkg:
            module = module[: -len(".__init__")]
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".")
                    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [a.name for a in node.names]
                if not node.module and node.level:  # from . import x: x may be a submodule
                    folder = ROOT.joinpath(*target.split("."))
                    for name in names:
                        sub = (folder / f"{name}.py").exists() or (folder / name / "__init__.py").exists()
                        out.append((module, f"{target}.{name}" if sub else target, str(path), node.lineno,
                                    [] if sub else [name]))
                    continue
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    out.append((module, alias.name, str(path), node.lineno, []))
                continue
            else:
                continue
            out.append((module, target, str(path), node.lineno, names))
    return [o for o in out if o[1] == "bayesdistill" or o[1].startswith("bayesdistill.")]


def test_imports_go_one_way():
    bad = []
    for src, dst, path, line, _ in _imports():
        a, b = _part(src), _part(dst)
        if "root" in (a, b) or a == b:
            continue
        if ORDER.index(b) > ORDER.index(a):
            bad.append(f"{path}:{line}: {src} ({a}) imports {dst} ({b}), a higher layer")
    assert not bad, "\n".join(bad)


def test_parts_do_not_import_each_other():
    graph: dict[str, set[str]] = defaultdict(set)
    for src, dst, *_ in _imports():
        a, b = _part(src), _part(dst)
        if a != b and "root" not in (a, b):
            graph[a].add(b)
    cycles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph.get(b, ())})
    assert not cycles, f"parts that import each other: {cycles}"


def test_no_private_names_across_parts():
    bad = []
    for src, dst, path, line, names in _imports():
        if _part(src) == _part(dst) or _part(src) == "root":
            continue
        private = [n for n in names if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))]
        private_module = any(bit.startswith("_") and bit not in ("__init__",) and bit not in BASE
                             for bit in dst.split(".")[1:])
        if private or private_module:
            bad.append(f"{path}:{line}: {src} imports private {dst} {private}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("folder", ["benchmarks", "examples"])
def test_benchmarks_and_examples_use_the_library_not_the_cli(folder):
    offenders = [str(p) for p in (ROOT / folder).glob("*.py") if "bayesdistill.cli" in p.read_text()
                 or "from bayesdistill import cli" in p.read_text()]
    assert not offenders, offenders


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    """The check can fail: a bnn module that imports infer is reported."""
    fake = tmp_path / "bayesdistill"
    (fake / "bnn").mkdir(parents=True)
    (fake / "bnn" / "bad.py").write_text("from ..infer import fit\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match="imports bayesdistill.infer"):
        test_imports_go_one_way()
