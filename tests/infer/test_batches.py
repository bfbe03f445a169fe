"""Batches (infer/batches.py): what data sets yield, adapted to (inputs, targets, side inputs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import bayesdistill as bd
from bayesdistill.infer import Batch, Batches, default_batch
from _helpers import PlainDataset, tiny_mlp, toy_classification

CPU = torch.device("cpu")


class DictData(Dataset):
    def __init__(self, x, y, key="x"):
        self.x, self.y, self.key = x, y, key

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {self.key: self.x[i], "label": self.y[i], "privileged": self.x[i] * 2}


def test_default_adapter_reads_tensors_tuples_and_dicts():
    x, y = torch.randn(4, 3), torch.arange(4)
    assert default_batch(x).y is None and default_batch(x).x is x
    b = default_batch((x, y, x * 2))
    assert b.x is x and b.y is y and torch.equal(b.side["extra"][0], x * 2)
    d = default_batch({"inputs": x, "targets": y, "mask": x > 0})
    assert d.x is x and d.y is y and set(d.side) == {"mask"}
    with pytest.raises(bd.DataError, match=r"keys \['image', 'label'\].*batch=lambda b"):
        default_batch({"image": x, "label": y})
    with pytest.raises(bd.DataError, match="cannot read a batch of type str"):
        default_batch("oops")


def test_fit_trains_on_a_dict_dataset_with_side_inputs_and_with_an_adapter():
    x, y = toy_classification(32)
    a, b, c = (bd.BNN(tiny_mlp(), dataset_size=32) for _ in range(3))
    bd.fit(a, DictData(x, y), epochs=2, batch_size=8, progress=False)
    bd.fit(b, DictData(x, y, key="image"), epochs=2, batch_size=8, progress=False,
           batch=lambda raw: (raw["image"], raw["label"]))
    bd.fit(c, PlainDataset(x, y), epochs=2, batch_size=8, progress=False)
    # the same examples in the same order: the three runs are identical
    assert torch.equal(a.loc, b.loc) and torch.equal(a.loc, c.loc)
    with pytest.raises(bd.DataError, match="batch=lambda"):
        bd.fit(bd.BNN(tiny_mlp()), DictData(x, y, key="image"), epochs=1, progress=False)
    batches = Batches(DictData(x, y), 8, CPU, 0)
    assert torch.equal(batches.first().side["privileged"], batches.first().x * 2)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(2, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, u, v):
        return self.out(torch.relu(self.a(u) + self.b(v)))


class TwoInputData(Dataset):
    def __init__(self, n=32):
        g = torch.Generator().manual_seed(0)
        self.u, self.v = torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g)
        self.y = (self.u[:, 0] > 0).long() + (self.v[:, 0] > 0).long()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return (self.u[i], self.v[i]), self.y[i]


def test_a_two_input_network_trains_and_predicts():
    data = TwoInputData()
    bnn = bd.BNN(TwoInputs(), dataset_size=32)
    result = bd.fit(bnn, data, epochs=3, batch_size=8, progress=False)
    assert len(result.history) == 3 and all(torch.isfinite(torch.tensor(r["elbo"])) for r in result.history)
    out, targets = bd.predict(bnn, DataLoader(data, batch_size=16), num_samples=3)
    assert out.shape == (3, 32, 3) and targets.shape == (32,)


def test_empty_training_and_transfer_sets_are_errors():
    x, y = toy_classification(8)
    with pytest.raises(bd.DataError, match="training data are empty"):
        bd.fit(bd.BNN(tiny_mlp()), (x[:0], y[:0]), epochs=1, progress=False)
    with pytest.raises(bd.DataError, match="training data are empty"):
        bd.fit(bd.BNN(tiny_mlp()), TensorDataset(x[:0], y[:0]), epochs=1, progress=False)
    teacher = bd.BNN(tiny_mlp(seed=1))
    with pytest.raises(bd.DataError, match="transfer data are empty"):
        bd.fit(bd.BNN(tiny_mlp()), (x, y), epochs=1, progress=False, distill=[bd.distill.KD(teacher)],
               transfer=x[:0])


def test_transfer_data_that_do_not_fit_or_hold_nan_are_named():
    x, y = toy_classification(8)
    teacher = bd.BNN(tiny_mlp(seed=1))
    with pytest.raises(bd.DataError, match="transfer data do not fit the network"):
        bd.fit(bd.BNN(tiny_mlp()), (x, y), epochs=1, progress=False, distill=[bd.distill.KD(teacher)],
               transfer=torch.randn(8, 5))
    bad = torch.randn(8, 4)
    bad[3, 1] = float("nan")
    with pytest.raises(bd.DataError, match=r"transfer data: inputs contain NaN or inf \(first in example 3\)"):
        bd.fit(bd.BNN(tiny_mlp()), (x, y), epochs=1, progress=False, distill=[bd.distill.KD(teacher)], transfer=bad)


def test_head_and_fingerprint():
    x, y = toy_classification(20)
    tensors, dataset = Batches((x, y), 8, CPU, 0), Batches(PlainDataset(x, y), 8, CPU, 0)
    assert torch.equal(tensors.head(12).x, x[:12]) and torch.equal(dataset.head(12).x, x[:12])
    assert torch.equal(dataset.head(12).y, y[:12])
    assert tensors.fingerprint() == Batches((x.clone(), y.clone()), 4, CPU, 3).fingerprint()
    assert tensors.fingerprint() != Batches((x, (y + 1) % 3), 8, CPU, 0).fingerprint()
    assert dataset.fingerprint() != Batches(PlainDataset(x + 1, y), 8, CPU, 0).fingerprint()
    assert tensors.fingerprint()["num_examples"] == 20
    b = Batch((x, y), None, {"k": x})
    assert len(b) == 20 and isinstance(b.to(CPU).x, tuple)
