"""Shared fixtures of the test suite.

Every test runs single-threaded (fast and bit-reproducible on small CPU machines) with a
fresh Pyro parameter store, Pyro's argument validation switched on (as users have it), and a
temporary dataset cache.
"""

from __future__ import annotations

from pathlib import Path

import pyro
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Each test starts with an empty Pyro parameter store and validation enabled."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One temporary dataset cache for the whole run (MNIST-1D is generated once)."""
    return tmp_path_factory.mktemp("bd-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Datasets are generated into the temporary cache, never the user's real one."""
    monkeypatch.setenv("BAYESDISTILL_CACHE", str(cache_dir))
