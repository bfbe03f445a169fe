"""The growth and adversarial-prior example notebooks: stored without outputs, and they run end to
end (through nbclient, in quick mode: ``BAYESDISTILL_NOTEBOOK_QUICK=1``) and show what they claim.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import bayesdistill as bd

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {"growth": ROOT / "examples" / "growth.ipynb",
             "adversarial_prior": ROOT / "examples" / "adversarial_prior.ipynb"}


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("bayesdistill-cache")
    bd.datasets.load("mnist1d", cache_dir=cache)
    env = dict(os.environ)
    # the kernel's inline backend (not Agg): the figures become image outputs, which the tests count
    env.update({"BAYESDISTILL_NOTEBOOK_QUICK": "1", "BAYESDISTILL_CACHE": str(cache),
                "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)})
    return env


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_committed_notebook_has_no_outputs(name):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the notebook's outputs"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "QUICK = False" in params[0].source
    assert len([c for c in code if "summary" in c.metadata.get("tags", [])]) == 1


def _run(name: str, env: dict[str, str], tmp_path: Path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(tmp_path)}}).execute(env=env)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    text = "".join(_stdout(c) for c in nb.cells if c.cell_type == "code")
    summary = _stdout(next(c for c in nb.cells if "summary" in c.metadata.get("tags", [])))
    accuracies = [float(a) for a in re.findall(r"accuracy (\d\.\d+)", summary)]
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {}))
    return text, accuracies, images


def test_growth_notebook_runs(notebook_env, tmp_path):
    text, accuracies, images = _run("growth", notebook_env, tmp_path)
    assert len(accuracies) == 3 and all(0 <= a <= 1 for a in accuracies)
    diffs = dict(re.findall(r"^(\w+)\s+function preserving: \w+\s+max \|old logits - small logits\| = (\S+)$", text, re.M))
    assert set(diffs) == {"net2net", "embed", "zero", "uniform"}
    assert all(float(diffs[m]) < 1e-3 for m in ("net2net", "embed", "zero")) and float(diffs["uniform"]) > 1e-2
    zero = re.search(r"^zero\s+at the means: \|grad in\| (\S+)\s+\|grad out\| (\S+)", text, re.M)
    assert float(zero.group(1)) == 0 and float(zero.group(2)) == 0  # the pitfall, in the notebook too
    assert "the reloaded plan gives the same grown posterior: True" in text
    assert images >= 3  # logits scatter, learning curves, weight noise
    assert (tmp_path / "runs" / "notebook-growth" / "plan.pt").exists()


def test_adversarial_prior_notebook_runs(notebook_env, tmp_path):
    text, accuracies, images = _run("adversarial_prior", notebook_env, tmp_path)
    assert len(accuracies) == 5 and all(0 <= a <= 1 for a in accuracies)
    assert "bd.align refuses the wide student" in text
    assert "mismatched pair: AdversarialPrior: pair '1' -> '3'" in text
    assert "final lambdas" in text
    assert images >= 3  # learning curves, critics and lambdas, kernels
