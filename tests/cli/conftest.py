"""Runs shared by the command-line tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from _helpers import run_cli


@pytest.fixture(scope="session")
def cnn_run(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small CNN teacher on MNIST-1D (1 epoch on 10 % of the data), shared by several tests."""
    out = tmp_path_factory.mktemp("cnn-run")
    code = run_cli(cache_dir, ["fit", "--dataset", "mnist1d", "--model", "cnn", "--epochs", "1", "--train-fraction",
                               "0.1", "--num-samples", "8", "--channels", "8", "--out", str(out), "--device", "cpu"])
    assert code == 0
    return out
