"""The examples run end to end: the notebook (through nbclient) and the script (``--quick``).

Both run in quick mode (3 epochs on 10% of MNIST-1D), in a temporary working directory, with
the dataset cache in a temporary folder that is filled once for the module.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bayesdistill as bd

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "teacher_mnist1d.ipynb"
SCRIPT = ROOT / "examples" / "teacher_mnist1d.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SITES = ["1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias", "8.weight", "8.bias"]


@pytest.fixture(scope="module")
def example_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for the examples: quick mode, Agg backend, a private dataset cache (pre-filled)."""
    cache = tmp_path_factory.mktemp("bayesdistill-cache")
    bd.datasets.load("mnist1d", cache_dir=cache)  # generate MNIST-1D once for both examples
    env = dict(os.environ)
    env.update(
        {
            "BAYESDISTILL_NOTEBOOK_QUICK": "1",
            "BAYESDISTILL_CACHE": str(cache),
            "MPLBACKEND": "Agg",
            # the examples import bayesdistill from this checkout even without an installed package
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        }
    )
    return env


def _python3_kernel() -> str:
    """Name of a usable Python kernel, or fail with instructions (never installs anything)."""
    _require("jupyter_client")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.fail(
            "no Jupyter kernel spec named 'python3' was found (and ipykernel's built-in one is not "
            f"importable from {sys.executable}); install one with `{sys.executable} -m ipykernel "
            "install --sys-prefix --name python3` (or `pip install ipykernel`)"
        )
    if spec.language.lower() != "python":
        pytest.fail(f"the kernel spec 'python3' is for {spec.language!r}, not Python: {spec.argv}")
    return "python3"


def _require(module: str):
    """Import a test dependency or fail with the fix (these are declared in the ``test`` extra)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{module} is needed to run the example notebook: pip install -e '.[test]'")


def _stdout(cell) -> str:
    outputs = cell.get("outputs", [])
    return "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stdout")


def test_committed_notebook_has_no_outputs() -> None:
    nbformat = _require("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the notebook's outputs"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "EPOCHS = 100" in params[0].source and "QUICK = False" in params[0].source


def test_notebook_runs(example_env: dict[str, str], tmp_path: Path) -> None:
    nbformat = _require("nbformat")
    nbclient = _require("nbclient")
    kernel = _python3_kernel()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=kernel,
        timeout=300,
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working directory
    )
    client.execute(env=example_env)  # raises CellExecutionError (with the traceback) on any error

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    summary = [c for c in nb.cells if "summary" in c.metadata.get("tags", [])]
    assert len(summary) == 1, "the notebook needs one cell tagged 'summary'"
    text = _stdout(summary[0])
    values = dict(line.split(None, 2)[1:3] for line in text.splitlines() if line.startswith("test "))
    assert set(values) >= {"accuracy", "NLL", "ECE"}, text
    accuracy = float(values["accuracy"])
    assert 0.0 <= accuracy <= 1.0
    assert math.isfinite(float(values["NLL"].split()[0]))
    everything = "".join(_stdout(c) for c in nb.cells if c.cell_type == "code")
    assert "3 epochs on 10% of the training data" in everything  # quick mode was honoured
    assert "reproduces the mean-weight predictions: True" in everything
    q = bd.MeanFieldPosterior.load(tmp_path / "runs" / "notebook-teacher" / "posterior.pt")
    assert list(q) == SITES


def test_script_quick(example_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "teacher"
    env = {k: v for k, v in example_env.items() if k != "BAYESDISTILL_NOTEBOOK_QUICK"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--device", "cpu"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test accuracy" in proc.stdout

    assert sorted(p.name for p in out.iterdir()) == [
        "calibration.png",
        "elbo.png",
        "history.csv",
        "metrics.json",
        "posterior.pt",
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert 0.0 <= metrics["ece"] <= 1.0
    assert metrics["nll"] > 0 and metrics["mutual_information"] >= -1e-6
    assert metrics["num_samples"] == 8
    assert len((out / "history.csv").read_text().strip().splitlines()) == 1 + 3  # header + 3 epochs
    for png in ("elbo.png", "calibration.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC

    q = bd.MeanFieldPosterior.load(out / "posterior.pt")
    assert list(q) == SITES
    assert q.metadata["dataset"] == "mnist1d" and q.metadata["epochs"] == 3
    # the saved posterior reproduces the reported accuracy
    data = bd.datasets.load("mnist1d", cache_dir=env["BAYESDISTILL_CACHE"])
    net = bd.models.build("cnn", data.input_shape, data.output_dim)
    teacher = bd.BNN(net, dataset_size=400).load_posterior(q)
    again = bd.evaluate(teacher, data.test, num_samples=8, seed=0)
    assert again["accuracy"] == pytest.approx(metrics["accuracy"], abs=2e-3)
    assert torch.isfinite(torch.tensor(again["nll"]))
