"""CIFAR from a local copy (datasets/_cifar.py), on tiny copies written here in the authors' format."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import bayesdistill as bd
from bayesdistill.datasets import AugmentedTensors, RandomCropFlip


def _batch(rng: np.random.Generator, n: int, label_key: str, classes: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """A batch as the CIFAR authors pickled it: bytes keys, uint8 data [n, 3072] (R, G, B planes), labels."""
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, classes, n)
    d = {b"batch_label": b"tiny", label_key.encode(): labels.tolist(), b"data": data,
         b"filenames": [f"img{i}.png".encode() for i in range(n)]}
    return d, data, labels


def write_cifar(root: Path, name: str = "cifar10", n_train: int = 4, n_test: int = 6, seed: int = 0,
                archive: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A tiny copy in the python-pickle format (folder, or the .tar.gz archive); returns the raw arrays."""
    folder, tar_name, train, test, key, classes = bd.datasets._cifar.CIFAR_FILES[name]
    rng = np.random.default_rng(seed)
    files, xs, ys = {}, [], []
    for f in train:
        d, x, y = _batch(rng, n_train, key, classes)
        files[f] = d
        xs.append(x)
        ys.append(y)
    d, x_test, y_test = _batch(rng, n_test, key, classes)
    files[test] = d
    if archive:
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(root / tar_name, "w:gz") as tar:
            for f, d in files.items():
                blob = pickle.dumps(d, protocol=2)
                info = tarfile.TarInfo(f"{folder}/{f}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    else:
        (root / folder).mkdir(parents=True, exist_ok=True)
        for f, d in files.items():
            (root / folder / f).write_bytes(pickle.dumps(d, protocol=2))
    return np.concatenate(xs), np.concatenate(ys), x_test, y_test


def _pixels(x: torch.Tensor, info) -> torch.Tensor:
    """Undo the per-channel standardization: back to 0..255."""
    mean, std = torch.tensor(info["mean"]), torch.tensor(info["std"])
    return (x * std[:, None, None] + mean[:, None, None]) * 255


@pytest.mark.parametrize("archive", [False, True])
def test_cifar10_reads_the_authors_layout(tmp_path, archive):
    x_train, y_train, x_test, y_test = write_cifar(tmp_path, archive=archive)
    data = bd.datasets.load("cifar10", root=tmp_path, augment=False)
    assert (len(data.train), len(data.test), data.input_shape, data.num_classes) == (20, 6, (3, 32, 32), 10)
    x, y = data.tensors("train")
    assert x.dtype == torch.float32 and torch.equal(y, torch.from_numpy(y_train))
    # pixel (channel c, row r, column k) of image i is data[i, 1024 c + 32 r + k]
    raw = torch.from_numpy(x_train.astype(np.float32))
    torch.testing.assert_close(_pixels(x, data.info)[3, 1, 5, 7], raw[3, 1024 + 32 * 5 + 7], rtol=0, atol=1e-3)
    torch.testing.assert_close(_pixels(x, data.info).reshape(20, -1), raw, rtol=0, atol=1e-3)
    xs, ys = data.tensors("test")
    torch.testing.assert_close(_pixels(xs, data.info).reshape(6, -1), torch.from_numpy(x_test.astype(np.float32)),
                               rtol=0, atol=1e-3)
    # standardized with the training split's statistics
    torch.testing.assert_close(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std((0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)


def test_cifar100_uses_the_fine_labels_and_the_folder_itself_is_accepted(tmp_path):
    _, y_train, _, _ = write_cifar(tmp_path, "cifar100", n_train=8)
    data = bd.datasets.load("cifar100", root=tmp_path / "cifar-100-python", augment=False, normalize=False)
    assert data.num_classes == 100 and torch.equal(data.tensors("train")[1], torch.from_numpy(y_train))
    assert float(data.tensors("train")[0].max()) <= 1.0


def test_missing_files_raise_one_error_naming_where_to_put_them(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"cifar10: no local copy found under .*never downloads.*"
                                                r"'cifar-10-batches-py'.*data_batch_1.*test_batch.*root="):
        bd.datasets.load("cifar10", root=tmp_path)
    monkeypatch.setenv("BAYESDISTILL_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        bd.datasets.load("cifar100")
    write_cifar(tmp_path / "elsewhere", "cifar100")
    assert len(bd.datasets.load("cifar100").train) == 4  # $BAYESDISTILL_DATA is the default root
    with pytest.raises(TypeError, match="dataset 'digits' takes no root"):
        bd.datasets.load("digits", root=tmp_path)


def test_a_pickle_that_is_not_a_cifar_batch_is_refused(tmp_path):
    write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(ValueError, match=r"refusing to load .*print"):
        bd.datasets.load("cifar10", root=tmp_path)


def test_the_training_split_is_augmented_and_the_test_split_is_not(tmp_path):
    write_cifar(tmp_path)
    data = bd.datasets.load("cifar10", root=tmp_path)
    assert isinstance(data.train, AugmentedTensors) and isinstance(data.test, torch.utils.data.TensorDataset)
    assert data.info["augment"] == "RandomCropFlip(padding=4, flip=True)"
    subset = bd.datasets.load("cifar10", root=tmp_path, train_fraction=0.5)
    assert isinstance(subset.train, AugmentedTensors) and len(subset.train) == 10
    # bd.fit trains on it through a DataLoader (the augmentation runs on every batch)
    net = bd.models.build("resnet8", data.input_shape, data.output_dim)
    result = bd.fit(bd.BNN(net, dataset_size=len(data.train)), data.train, epochs=1, batch_size=10, progress=False)
    assert np.isfinite(result.history[-1]["loss"])


def test_random_crop_flip_is_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6) + 1  # no zeros in the image
    g = torch.Generator().manual_seed(0)
    out = RandomCropFlip(padding=2)(x, generator=g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        windows = [padded[b, :, r:r + 5, c:c + 6] for r in range(5) for c in range(5)]
        windows += [w.flip(-1) for w in windows]
        assert any(torch.equal(out[b], w) for w in windows)
    # a single image, no padding, no flip: unchanged
    assert torch.equal(RandomCropFlip(padding=0, flip=False)(x[0]), x[0])
    # the offsets cover every position: over many draws each of the 5 x 5 windows appears
    crops = RandomCropFlip(padding=2, flip=False)(x[:1].expand(400, -1, -1, -1), generator=g)
    offsets = {(r, c) for crop in crops for r in range(5) for c in range(5)
               if torch.equal(crop, padded[0, :, r:r + 5, c:c + 6])}
    assert offsets == {(r, c) for r in range(5) for c in range(5)}
