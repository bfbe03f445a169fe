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


@pytest.fixture(scope="session")
def quick_demo(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One ``bayesdistill demo --quick`` for the suite (the CLI test and the report's test read it):
    its folder and what it printed."""
    import contextlib
    import io

    from bayesdistill.cli import main

    out = tmp_path_factory.mktemp("demo") / "demo"
    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(buf):
        mp.setenv("BAYESDISTILL_CACHE", str(cache_dir))
        assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 0
    return out, buf.getvalue()
