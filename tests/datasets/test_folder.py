"""A user's own images (datasets/_folder.py): class folders read with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bayesdistill as bd
from bayesdistill.datasets import AugmentedTensors


def _write(folder: Path, classes: dict[str, int], size=(6, 5), seed: int = 0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    for c, n in classes.items():
        (folder / c).mkdir(parents=True, exist_ok=True)
        out[c] = []
        for i in range(n):
            img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(img).save(folder / c / f"{i}.png")
            out[c].append(img)
    (folder / "README.txt").write_text("not an image")
    return out


def _pixels(x, info):
    mean, std = torch.tensor(info["mean"]), torch.tensor(info["std"])
    return (x * std[:, None, None] + mean[:, None, None]) * 255


def test_train_and_test_folders_are_the_splits(tmp_path):
    train = _write(tmp_path / "train", {"cat": 3, "dog": 2})
    _write(tmp_path / "test", {"cat": 1, "dog": 1}, seed=1)
    data = bd.datasets.load("image-folder", root=tmp_path, size=(6, 5))
    assert data.info["classes"] == ["cat", "dog"] and data.input_shape == (3, 6, 5)
    x, y = data.tensors("train")
    assert y.tolist() == [0, 0, 0, 1, 1] and len(data.test) == 2
    # the same size: the pixels come back exactly (PNG is lossless, no resize)
    expected = torch.from_numpy(np.stack(train["cat"] + train["dog"])).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(_pixels(x, data.info), expected, rtol=0, atol=1e-3)


def test_one_pool_is_split_per_class_and_resized(tmp_path):
    _write(tmp_path, {"a": 5, "b": 5, "c": 4}, size=(10, 12))
    data = bd.datasets.load("image-folder", root=tmp_path, size=(8, 8), test_fraction=0.4, seed=3)
    assert data.input_shape == (3, 8, 8) and data.num_classes == 3
    assert torch.bincount(data.tensors("test")[1]).tolist() == [2, 2, 2]
    assert torch.bincount(data.tensors("train")[1]).tolist() == [3, 3, 2]
    again = bd.datasets.load("image-folder", root=tmp_path, size=(8, 8), test_fraction=0.4, seed=3)
    assert torch.equal(again.tensors("test")[0], data.tensors("test")[0])
    gray = bd.datasets.load("image-folder", root=tmp_path, size=(8, 8), channels=1, augment=True)
    assert gray.input_shape == (1, 8, 8) and isinstance(gray.train, AugmentedTensors)
    assert gray.train[0][0].shape == (1, 8, 8)


def test_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bd.datasets.load("image-folder", root=tmp_path / "nope")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"holds no images in class folders"):
        bd.datasets.load("image-folder", root=tmp_path / "empty")
    with pytest.raises(ValueError, match="needs root="):
        bd.datasets.load("image-folder")
    (tmp_path / "bad" / "x").mkdir(parents=True)
    (tmp_path / "bad" / "x" / "0.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read .*0\.png"):
        bd.datasets.load("image-folder", root=tmp_path / "bad")
