"""bayesdistill.datasets.ood: OOD sets built offline from MNIST-1D and the digits (shapes,
determinism, held-out classes really absent, what each transform does, the description)."""

from __future__ import annotations

import math

import pytest
import torch

from bayesdistill import datasets

MNIST1D_KINDS = ["held-out-classes", "reversed", "phase-shuffled", "scaled", "noise"]
DIGITS_KINDS = ["held-out-classes", "inverted", "rotated", "noise"]


@pytest.fixture(scope="module")
def full():
    return {"mnist1d": datasets.load("mnist1d"), "digits": datasets.load("digits")}


def test_kinds_are_listed():
    assert list(datasets.ood_kinds("mnist1d")) == MNIST1D_KINDS
    assert list(datasets.ood_kinds("digits")) == DIGITS_KINDS
    assert set(datasets.ood_kinds()) == {"mnist1d", "digits"}


@pytest.mark.parametrize("name, kind", [("mnist1d", k) for k in MNIST1D_KINDS] + [("digits", k) for k in DIGITS_KINDS])
def test_shapes_dtypes_description_and_determinism(name, kind, full):
    s = datasets.ood(name, kind, seed=3)
    assert isinstance(s, datasets.OODSet) and s.kind == kind and s.name == name
    d = full[name]
    assert s.ood.dtype == torch.float32 and s.ood.shape[1:] == d.input_shape and len(s.ood) > 0
    assert torch.isfinite(s.ood).all()
    assert s.ood_labels.dtype == torch.int64 and s.ood_labels.shape == (len(s.ood),)
    assert isinstance(s.description, str) and len(s.description) > 40 and "{" not in s.description
    assert s.data.input_shape == d.input_shape and s.test is s.data.test
    again = datasets.ood(name, kind, seed=3)
    assert torch.equal(again.ood, s.ood) and again.description == s.description
    for split in ("train", "test"):
        for a, b in zip(again.data.tensors(split), s.data.tensors(split)):
            assert torch.equal(a, b)
    assert repr(s).startswith("OODSet(")


@pytest.mark.parametrize("name", ["mnist1d", "digits"])
def test_held_out_classes_are_absent_and_relabelled(name, full):
    s = datasets.ood(name, "held-out-classes", held_out=(2, 5), seed=0)
    kept = [0, 1, 3, 4, 6, 7, 8, 9]
    assert s.info["classes"] == tuple(kept) and s.info["held_out"] == (2, 5)
    assert s.data.num_classes == 8 and s.data.output_dim == 8
    x_full, y_full = full[name].tensors("test")
    xtr_full, ytr_full = full[name].tensors("train")
    for split, (xf, yf) in {"train": (xtr_full, ytr_full), "test": (x_full, y_full)}.items():
        x, y = s.data.tensors(split)
        assert sorted(torch.unique(y).tolist()) == list(range(8))
        mask = (yf != 2) & (yf != 5)
        assert torch.equal(x, xf[mask])  # the kept inputs, in their order, none of the held-out
        assert torch.equal(torch.tensor(kept)[y], yf[mask])  # relabelled 0..7 in ascending order
    # the OOD inputs are exactly the held-out test inputs
    mask = (y_full == 2) | (y_full == 5)
    assert torch.equal(s.ood, x_full[mask]) and torch.equal(s.ood_labels, y_full[mask])
    assert "[2, 5]" in s.description


def test_default_held_out_and_other_kinds_keep_all_classes():
    s = datasets.ood("mnist1d", "held-out-classes")
    assert s.info["held_out"] == datasets.DEFAULT_HELD_OUT == (7, 8, 9)
    assert s.data.num_classes == 7
    r = datasets.ood("mnist1d", "reversed")
    assert r.data.num_classes == 10 and r.info["held_out"] == ()


def test_mnist1d_transforms(full):
    x, y = full["mnist1d"].tensors("test")
    xtr, _ = full["mnist1d"].tensors("train")
    r = datasets.ood("mnist1d", "reversed")
    assert torch.equal(r.ood, x.flip(-1)) and torch.equal(r.ood_labels, y)
    sc = datasets.ood("mnist1d", "scaled", factor=7.0)
    assert torch.allclose(sc.ood, 7.0 * x) and "7" in sc.description
    assert sc.ood.abs().max() > 5 * xtr.abs().max()
    ph = datasets.ood("mnist1d", "phase-shuffled", seed=1)
    # same power spectrum and mean per sequence, a different shape
    a, b = torch.fft.rfft(x.double(), dim=-1).abs(), torch.fft.rfft(ph.ood.double(), dim=-1).abs()
    assert torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(ph.ood.mean(-1), x.mean(-1), atol=1e-5)
    assert (ph.ood - x).abs().mean() > 0.5
    assert not torch.equal(datasets.ood("mnist1d", "phase-shuffled", seed=2).ood, ph.ood)
    nz = datasets.ood("mnist1d", "noise", seed=0)
    assert len(nz.ood) == len(x) and bool((nz.ood_labels == -1).all())
    assert torch.allclose(nz.ood.mean(0), xtr.mean(0), atol=0.15)
    assert torch.allclose(nz.ood.std(0), xtr.std(0), rtol=0.15)
    assert not torch.equal(datasets.ood("mnist1d", "noise", seed=1).ood, nz.ood)


def test_transforms_use_the_kept_classes_with_held_out(full):
    s = datasets.ood("mnist1d", "reversed", held_out=(7, 8, 9))
    x, y = s.data.tensors("test")
    assert s.data.num_classes == 7 and torch.equal(s.ood, x.flip(-1))
    assert set(s.ood_labels.tolist()) == set(range(7))  # original labels, all kept classes
    assert "held out" in s.description


def test_digits_transforms(full):
    x, y = full["digits"].tensors("test")
    inv = datasets.ood("digits", "inverted")
    assert torch.allclose(inv.ood, 1 - x)
    rot = datasets.ood("digits", "rotated")
    img = x[0].reshape(8, 8)
    assert torch.equal(rot.ood[0].reshape(8, 8), torch.rot90(img, 1, (0, 1)))
    nz = datasets.ood("digits", "noise")
    assert nz.ood.min() >= 0 and nz.ood.max() <= 1 and len(nz.ood) == len(x)


def test_train_fraction_is_class_balanced():
    s = datasets.ood("mnist1d", "held-out-classes", train_fraction=0.1, seed=0)
    _, y = s.data.tensors("train")
    counts = torch.bincount(y).tolist()
    assert len(counts) == 7 and max(counts) - min(counts) <= 1
    assert len(y) == round(0.1 * 2796)
    assert len(s.data.test) == 704  # the test set is whole


@pytest.mark.parametrize("kwargs, err, match", [
    ({"name": "synthetic-regression", "kind": "noise"}, datasets.UnknownDatasetError, "no OOD sets"),
    ({"name": "mnist1d", "kind": "blurred"}, datasets.UnknownDatasetError, "unknown OOD kind"),
    ({"name": "mnist1d", "kind": "reversed", "held_out": (3, 11)}, ValueError, "class labels in 0..9"),
    ({"name": "mnist1d", "kind": "reversed", "held_out": tuple(range(9))}, ValueError, "at least two"),
    ({"name": "mnist1d", "kind": "reversed", "held_out": 3}, TypeError, "sequence"),
    ({"name": "mnist1d", "kind": "scaled", "factor": -1.0}, ValueError, "factor"),
    ({"name": "mnist1d", "kind": "noise", "seed": -1}, ValueError, "seed"),
    ({"name": "mnist1d", "kind": "noise", "train_fraction": 0.0}, ValueError, "train_fraction"),
])
def test_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        datasets.ood(**kwargs)


def test_description_names_the_parameters():
    s = datasets.ood("mnist1d", "scaled", factor=5.0)
    assert "multiplied by 5" in s.description and "training range" in s.description
    assert not math.isnan(float(s.ood.mean()))
