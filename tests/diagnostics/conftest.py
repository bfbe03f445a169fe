"""Fixtures of the diagnostics tests: small trained networks (Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from torch.utils.data import TensorDataset

import bayesdistill as bd


def _classification_data(n: int = 240, d: int = 8, c: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, c, generator=g)
    y = (x @ w + 0.5 * torch.randn(n, c, generator=g)).argmax(1)
    return TensorDataset(x, y)


@pytest.fixture(scope="module")
def classification_data():
    """``classification_data(n=240, d=8, c=3, seed=0)``: a labelled TensorDataset."""
    return _classification_data


@pytest.fixture(scope="module")
def trained():
    """A small classification BNN trained for a few epochs, with held-out metrics per epoch."""
    torch.manual_seed(0)
    train, test = _classification_data(seed=0), _classification_data(n=120, seed=1)
    net = bd.models.build("mlp", (8,), 3, hidden=(16,))
    bnn = bd.BNN(net, prior=bd.priors.Normal(scale=1.0), likelihood=bd.likelihoods.Categorical(),
                 dataset_size=len(train))
    result = bd.fit(bnn, train, epochs=4, lr=1e-2, batch_size=64, progress=False, eval_data=test, seed=0)
    return bnn, result, test


@pytest.fixture(scope="module")
def regression():
    """A small regression BNN (Normal likelihood with a learned scale) and its data."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g)
    y = x @ torch.randn(4, 1, generator=g) + 0.1 * torch.randn(200, 1, generator=g)
    data = TensorDataset(x, y)
    net = bd.models.build("mlp", (4,), 1, hidden=(8,))
    bnn = bd.BNN(net, likelihood=bd.likelihoods.Normal(scale=0.1, learn_scale=True), dataset_size=200)
    bd.fit(bnn, data, epochs=3, lr=1e-2, progress=False)
    return bnn, data
