"""The example script runs end to end (``--quick``: 3 epochs on 10% of MNIST-1D), in a temporary
working directory, with the dataset cache in a temporary folder.

The example notebooks, ``examples/teacher_mnist1d.ipynb`` among them, run in
``tests/examples/test_notebooks.py`` (each notebook once in the suite).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bayesdistill as bd

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "teacher_mnist1d.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SITES = ["1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias", "8.weight", "8.bias"]


@pytest.fixture(scope="module")
def example_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for the script: Agg backend, a private dataset cache (pre-filled)."""
    cache = tmp_path_factory.mktemp("bayesdistill-cache")
    bd.datasets.load("mnist1d", cache_dir=cache)  # generate MNIST-1D outside the script's run
    env = dict(os.environ)
    env.update(
        {
            "BAYESDISTILL_CACHE": str(cache),
            "MPLBACKEND": "Agg",
            # the script imports bayesdistill from this checkout even without an installed package
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        }
    )
    return env


def test_script_quick(example_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "teacher"
    env = dict(example_env)
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
