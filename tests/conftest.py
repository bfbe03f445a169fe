"""Shared fixtures for the Bayesian-core tests (BNN, ELBO, fit, posterior, errors).

Every test runs single-threaded (fast and bit-reproducible on small CPU machines) with a
fresh Pyro parameter store, and with Pyro's argument validation switched on, as users have it.
"""

from __future__ import annotations

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
