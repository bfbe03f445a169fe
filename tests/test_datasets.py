"""Tests for bayesdistill.datasets (all offline; caches live under tmp_path)."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import mnist1d.data
import numpy as np
import pytest
import torch

from bayesdistill import datasets
from bayesdistill.datasets._mnist1d import _num_samples_for

MNIST1D_CACHE_FILE = "mnist1d_seed42_v1.npz"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never let a test fall back to the user's real cache directory."""
    env_dir = tmp_path / "env-cache"
    monkeypatch.setenv(datasets.CACHE_ENV_VAR, str(env_dir))
    return env_dir


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache dir holding the standard MNIST-1D arrays, generated once per module."""
    cache = tmp_path_factory.mktemp("mnist1d-cache")
    datasets.load("mnist1d", cache_dir=cache)
    return cache


@pytest.fixture
def forbid_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("make_dataset was called although a cache should be used")

    monkeypatch.setattr(mnist1d.data, "make_dataset", fail)


def assert_bundles_equal(a: datasets.DatasetBundle, b: datasets.DatasetBundle) -> None:
    assert repr(a) == repr(b)
    for split in ("train", "test"):
        for ta, tb in zip(a.tensors(split), b.tensors(split), strict=True):
            assert torch.equal(ta, tb)


def test_available_lists_all_names() -> None:
    assert datasets.available() == [
        "cifar10", "cifar100", "digits", "image-folder", "mnist1d", "privileged-clean-features", "privileged-clean-labels", "privileged-relevant-features",
        "privileged-sample-dependent", "privileged-sample-dependent-code", "privileged-sample-dependent-top3",
        "synthetic-regression"]


# --- shapes, dtypes, sizes ---------------------------------------------------------


def test_mnist1d_shapes(shared_cache: Path) -> None:
    data = datasets.load("mnist1d", cache_dir=shared_cache)
    assert (data.name, data.task, data.num_classes, data.output_dim) == (
        "mnist1d",
        "classification",
        10,
        10,
    )
    assert data.input_shape == (40,)
    x, y = data.tensors("train")
    xt, yt = data.tensors("test")
    assert x.shape == (4000, 40) and xt.shape == (1000, 40)
    assert y.shape == (4000,) and yt.shape == (1000,)
    assert x.dtype == xt.dtype == torch.float32
    assert y.dtype == yt.dtype == torch.int64
    assert set(y.unique().tolist()) == set(range(10))
    # Documented: mnist1d already standardises its inputs; we add nothing.
    assert abs(x.mean().item()) < 0.02 and abs(x.std().item() - 1) < 0.02


def test_digits_shapes() -> None:
    data = datasets.load("digits")
    assert (data.task, data.num_classes, data.output_dim, data.input_shape) == (
        "classification",
        10,
        10,
        (64,),
    )
    x, y = data.tensors("train")
    xt, yt = data.tensors("test")
    assert x.shape == (1437, 64) and xt.shape == (360, 64)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() == 1
    # stratified split: every class holds 36 +- 1 test samples
    assert torch.bincount(yt, minlength=10).sub(36).abs().max() <= 1


def test_synthetic_regression_shapes() -> None:
    data = datasets.load("synthetic-regression")
    assert (data.task, data.num_classes, data.output_dim, data.input_shape) == (
        "regression",
        None,
        1,
        (10,),
    )
    x, y = data.tensors("train")
    xt, yt = data.tensors("test")
    assert x.shape == (900, 10) and y.shape == (900, 1)
    assert xt.shape == (124, 10) and yt.shape == (124, 1)
    assert x.dtype == y.dtype == torch.float32


def test_synthetic_regression_noise_level() -> None:
    data = datasets.synthetic_regression(seed=3)
    x, y = data.tensors("train")
    w_hat = torch.linalg.lstsq(x.double(), y.double()).solution
    residual_std = (y.double() - x.double() @ w_hat).std().item()
    assert 0.08 <= residual_std <= 0.12
    w_true = data.info["weights"]
    assert w_true.shape == (10,)
    assert torch.allclose(w_hat.squeeze(1).float(), w_true, atol=0.03)
    # the test split follows the same model
    xt, yt = data.tensors("test")
    assert 0.08 <= (yt - xt @ w_true[:, None]).std().item() <= 0.12


def test_synthetic_regression_seed_controls_data() -> None:
    a = datasets.load("synthetic-regression", seed=1)
    b = datasets.load("synthetic-regression", seed=2)
    assert not torch.equal(a.info["weights"], b.info["weights"])
    assert not torch.equal(a.tensors("train")[0], b.tensors("train")[0])


# --- determinism and train_fraction -------------------------------------------------


@pytest.mark.parametrize("name", ["mnist1d", "digits", "synthetic-regression"])
@pytest.mark.parametrize("fraction", [1.0, 0.25])
def test_loading_is_deterministic(
    name: str, fraction: float, shared_cache: Path
) -> None:
    first = datasets.load(name, train_fraction=fraction, seed=5, cache_dir=shared_cache)
    second = datasets.load(
        name, train_fraction=fraction, seed=5, cache_dir=shared_cache
    )
    assert_bundles_equal(first, second)


def test_train_fraction_is_class_balanced_subset(shared_cache: Path) -> None:
    full = datasets.load("mnist1d", cache_dir=shared_cache)
    small = datasets.load("mnist1d", train_fraction=0.1, seed=0, cache_dir=shared_cache)
    x, y = small.tensors("train")
    assert len(small.train) == 400
    assert torch.bincount(y, minlength=10).tolist() == [40] * 10
    # rows are taken from the full training set, test set is untouched
    full_rows = {tuple(row) for row in full.tensors("train")[0].tolist()}
    assert all(tuple(row) in full_rows for row in x.tolist())
    for a, b in zip(small.tensors("test"), full.tensors("test"), strict=True):
        assert torch.equal(a, b)
    # seeded: another seed picks another subset
    other = datasets.load("mnist1d", train_fraction=0.1, seed=1, cache_dir=shared_cache)
    assert not torch.equal(other.tensors("train")[0], x)


def test_train_fraction_regression_and_digits_sizes() -> None:
    assert len(datasets.load("synthetic-regression", train_fraction=0.5).train) == 450
    assert len(datasets.load("synthetic-regression", train_fraction=0.5).test) == 124
    digits = datasets.load("digits", train_fraction=0.1)
    counts = torch.bincount(digits.tensors("train")[1], minlength=10)
    assert len(digits.train) == 144 and counts.max() - counts.min() <= 1


# --- caching -------------------------------------------------------------------------


def test_cache_file_created_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_cache: Path
) -> None:
    cache = tmp_path / "cache"
    np_state = np.random.get_state()
    first = datasets.load("mnist1d", cache_dir=cache)
    # make_dataset reseeds NumPy's global RNG; the loader must restore it
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    assert sorted(p.name for p in cache.iterdir()) == [
        MNIST1D_CACHE_FILE
    ]  # no temp leftovers

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("cache was not reused")

    monkeypatch.setattr(mnist1d.data, "make_dataset", fail)
    assert_bundles_equal(datasets.load("mnist1d", cache_dir=cache), first)
    assert_bundles_equal(first, datasets.load("mnist1d", cache_dir=shared_cache))


def test_env_var_sets_default_cache_dir(
    _isolated_cache: Path, shared_cache: Path, forbid_generation: None
) -> None:
    assert datasets.default_cache_dir() == _isolated_cache
    _isolated_cache.mkdir(parents=True)
    shutil.copy(shared_cache / MNIST1D_CACHE_FILE, _isolated_cache / MNIST1D_CACHE_FILE)
    assert len(datasets.load("mnist1d").train) == 4000


@pytest.mark.parametrize("corruption", ["garbage", "truncated", "wrong-shape"])
def test_corrupt_cache_is_regenerated(
    tmp_path: Path, shared_cache: Path, corruption: str
) -> None:
    good = (shared_cache / MNIST1D_CACHE_FILE).read_bytes()
    path = tmp_path / MNIST1D_CACHE_FILE
    if corruption == "garbage":
        path.write_bytes(b"not an npz file")
    elif corruption == "truncated":
        path.write_bytes(good[: len(good) // 2])
    else:
        np.savez(path, x_train=np.zeros((3, 40), np.float32), version=np.array(1))

    with pytest.warns(RuntimeWarning, match="corrupt dataset cache"):
        data = datasets.load("mnist1d", cache_dir=tmp_path)
    assert_bundles_equal(data, datasets.load("mnist1d", cache_dir=shared_cache))
    with np.load(path) as rewritten:  # the bad file was replaced by a valid one
        assert rewritten["x_train"].shape == (4000, 40)


# --- transfer-set samples ------------------------------------------------------------


def test_mnist1d_samples_are_new_inputs(tmp_path: Path, shared_cache: Path) -> None:
    x = datasets.mnist1d_samples(500, seed=7, cache_dir=tmp_path)
    assert x.shape == (500, 40) and x.dtype == torch.float32
    standard = datasets.load("mnist1d", cache_dir=shared_cache).tensors("train")[0]
    assert torch.cdist(x, standard).min() > 1e-3  # no sample repeats a training input
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1

    x2, y2 = datasets.mnist1d_samples(
        500, seed=7, return_labels=True, cache_dir=tmp_path
    )
    assert torch.equal(x, x2)
    assert (
        y2.shape == (500,)
        and y2.dtype == torch.int64
        and 0 <= y2.min() <= y2.max() <= 9
    )
    assert not torch.equal(x, datasets.mnist1d_samples(500, seed=8, cache_dir=tmp_path))


def test_mnist1d_samples_cache_keyed_by_n_and_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = datasets.mnist1d_samples(123, seed=1, cache_dir=tmp_path)
    assert (tmp_path / "mnist1d_samples_n123_seed1_v1.npz").exists()
    monkeypatch.setattr(mnist1d.data, "make_dataset", lambda *a, **k: 1 / 0)
    assert torch.equal(datasets.mnist1d_samples(123, seed=1, cache_dir=tmp_path), x)
    with pytest.raises(
        ZeroDivisionError
    ):  # a new (n, seed) key is not served from cache
        datasets.mnist1d_samples(124, seed=1, cache_dir=tmp_path)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 30, 799, 800, 801, 4000, 12345])
def test_num_samples_gives_enough_train_rows(n: int) -> None:
    num_samples = _num_samples_for(n, 0.8)
    assert int(10 * (num_samples // 10) * 0.8) >= n
    assert int(10 * ((num_samples - 10) // 10) * 0.8) < n  # and is the smallest such


def test_mnist1d_samples_rejects_standard_seed_and_bad_n() -> None:
    with pytest.raises(ValueError, match="overlap"):
        datasets.mnist1d_samples(10, seed=42)
    with pytest.raises(ValueError, match="positive integer"):
        datasets.mnist1d_samples(0, seed=1)


# --- errors and the bundle type ------------------------------------------------------


def test_unknown_name_lists_available() -> None:
    with pytest.raises(datasets.UnknownDatasetError) as info:
        datasets.load("imagenet")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    message = str(info.value)
    assert "'imagenet'" in message
    assert all(name in message for name in datasets.available())


def test_name_is_normalised() -> None:
    assert datasets.load("Synthetic_Regression").name == "synthetic-regression"


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.0001, 2, math.nan, math.inf])
def test_bad_train_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"train_fraction must be in \(0, 1\]"):
        datasets.load("digits", train_fraction=fraction)


@pytest.mark.parametrize("fraction", ["0.5", True, None])
def test_non_numeric_train_fraction(fraction: object) -> None:
    with pytest.raises(TypeError, match="train_fraction"):
        datasets.load("digits", train_fraction=fraction)  # type: ignore[arg-type]


def test_bundle_is_frozen_and_reports_sizes() -> None:
    data = datasets.load("synthetic-regression", train_fraction=0.5)
    assert repr(data) == (
        "DatasetBundle(name='synthetic-regression', task='regression', "
        "train=450, test=124, input_shape=(10,), output_dim=1)"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.name = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="split must be one of"):
        data.tensors("validation")  # type: ignore[arg-type]
