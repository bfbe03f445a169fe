"""MkDocs hook: the example notebooks (``examples/*.ipynb``) as pages of the site, with outputs.

The notebooks are stored without outputs. For each one, in this order:

1. ``BAYESDISTILL_DOCS_NOTEBOOKS=off``: the stored notebook as it is (no outputs, nothing runs);
   for quick builds, e.g. the unit test of the site.
2. ``$BAYESDISTILL_EXECUTED_NOTEBOOKS/<stem>.ipynb``, when that file exists and holds the same
   cells as the stored notebook: the copy the test suite executed (CI runs the tests first, so
   no notebook runs twice).
3. ``.cache/docs-notebooks/<stem>.ipynb`` from an earlier build of the same notebook.
4. Otherwise the notebook is executed here with nbclient, in quick mode
   (``BAYESDISTILL_NOTEBOOK_QUICK=1``), from the repository root, with a timeout per cell
   (``BAYESDISTILL_DOCS_CELL_TIMEOUT`` seconds, default 600).

A notebook that raises (in any of these sources but the first) is a build warning, so
``mkdocs build --strict`` fails. The hook also writes the gallery page ``examples/index.md`` and
lists the notebooks under "Examples" in the navigation; mkdocs-jupyter renders them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.notebooks")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CACHE = ROOT / ".cache" / "docs-notebooks"
GALLERY = "examples/index.md"
MODE_VAR = "BAYESDISTILL_DOCS_NOTEBOOKS"
EXECUTED_VAR = "BAYESDISTILL_EXECUTED_NOTEBOOKS"
TIMEOUT_VAR = "BAYESDISTILL_DOCS_CELL_TIMEOUT"
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"

_INTRO = """# Examples

Each notebook below is rendered with its outputs and figures, from a run in quick mode
(`BAYESDISTILL_NOTEBOOK_QUICK=1`: fewer epochs and smaller settings than the notebook's own,
so the numbers are smaller than the ones in the guide). Run one yourself with
`jupyter lab examples/<name>.ipynb` (the `notebooks` extra), or download it from its page.
`examples/teacher_mnist1d.py` is the first notebook as a plain script.

"""


def notebooks() -> list[Path]:
    """Every example notebook, sorted by name."""
    return sorted(EXAMPLES.glob("*.ipynb"))


def _mode() -> str:
    mode = os.environ.get(MODE_VAR, "on").strip().lower()
    if mode not in {"on", "off"}:
        raise ValueError(f"{MODE_VAR} must be 'on' or 'off', not {mode!r}")
    return mode


def _cells(nb: dict[str, Any]) -> list[tuple[str, str]]:
    def text(source: str | list[str]) -> str:
        return source if isinstance(source, str) else "".join(source)

    return [(c["cell_type"], text(c["source"])) for c in nb["cells"]]


def _digest(nb: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(_cells(nb)).encode()).hexdigest()


def _errors(nb: dict[str, Any]) -> list[str]:
    found = []
    for index, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            if out.get("output_type") == "error":
                found.append(f"cell {index}: {out.get('ename')}: {out.get('evalue')}")
    return found


def _execute(source: Path) -> dict[str, Any]:
    import nbclient
    import nbformat

    nb = nbformat.read(source, as_version=4)
    env = dict(os.environ)
    # the kernel's inline backend, not Agg: figures must become image outputs
    env.update({"BAYESDISTILL_NOTEBOOK_QUICK": "1", "MPLBACKEND": INLINE_BACKEND,
                "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)})
    timeout = int(os.environ.get(TIMEOUT_VAR, "600"))
    log.info("Executing %s (quick mode, at most %d s per cell)", source.relative_to(ROOT), timeout)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout, allow_errors=True,
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute(env=env)
    return json.loads(nbformat.writes(nb))


def _executed(source: Path) -> dict[str, Any]:
    """The notebook with outputs: the test suite's copy, this hook's cache, or a fresh run."""
    stored = json.loads(source.read_text(encoding="utf-8"))
    digest = _digest(stored)
    folder = os.environ.get(EXECUTED_VAR)
    if folder:
        copy = Path(folder) / source.name
        if copy.is_file():
            nb = json.loads(copy.read_text(encoding="utf-8"))
            if _digest(nb) == digest:
                log.info("Using the executed copy %s", copy)
                return nb
            log.info("%s holds other cells than %s: executing it again", copy, source.name)
    cached = CACHE / source.name
    if cached.is_file():
        nb = json.loads(cached.read_text(encoding="utf-8"))
        if nb.get("metadata", {}).get("bayesdistill_docs", {}).get("cells_sha256") == digest:
            log.info("Using the cached run %s", cached.relative_to(ROOT))
            return nb
    nb = _execute(source)
    nb.setdefault("metadata", {})["bayesdistill_docs"] = {"cells_sha256": digest}
    CACHE.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    return nb


def _title_and_summary(nb: dict[str, Any], stem: str) -> tuple[str, str]:
    for cell_type, text in _cells(nb):
        if cell_type != "markdown":
            continue
        lines = text.strip().splitlines()
        if lines and lines[0].startswith("# "):
            title = lines[0][2:].strip()
            rest = "\n".join(lines[1:]).strip().split("\n\n")[0]
            return title, " ".join(rest.split())
    return stem, ""


def on_config(config, **kwargs):
    """List the notebooks under "Examples" in the navigation."""
    entries = [GALLERY] + [{path.stem: f"examples/{path.name}"} for path in notebooks()]
    for index, item in enumerate(config["nav"] or []):
        if isinstance(item, dict) and "Examples" in item:
            config["nav"][index] = {"Examples": entries}
    return config


@event_priority(100)  # before mkdocs-jupyter, which turns the .ipynb files into pages
def on_files(files: Files, config, **kwargs) -> Files:
    """Add the gallery page and one notebook file (with outputs unless switched off) per notebook."""
    mode = _mode()
    staging = CACHE.parent / "docs-notebooks-site"
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "examples").mkdir(parents=True)
    gallery = [_INTRO]
    failed = []
    for source in notebooks():
        if mode == "off":
            nb = json.loads(source.read_text(encoding="utf-8"))
        else:
            nb = _executed(source)
            errors = _errors(nb)
            if errors:
                failed.append(source.name)
                log.warning("Notebook %s raised: %s", source.relative_to(ROOT), "; ".join(errors))
        (staging / "examples" / source.name).write_text(json.dumps(nb, indent=1), encoding="utf-8")
        files.append(File(f"examples/{source.name}", src_dir=str(staging), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
        title, summary = _title_and_summary(nb, source.stem)
        gallery.append(f"## [{title}]({source.name})\n\n`examples/{source.name}`"
                       + (f": {summary}" if summary else "") + "\n")
    if mode == "off":
        gallery.insert(1, "!!! note\n    This build skipped running the notebooks "
                          f"(`{MODE_VAR}=off`): they are shown without outputs.\n")
    files.append(File.generated(config, GALLERY, content="\n".join(gallery)))
    return files
