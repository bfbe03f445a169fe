"""CIFAR-10 and CIFAR-100 from a local copy of the "python version" (nothing is downloaded).

The files are the ones the CIFAR authors distribute (https://www.cs.toronto.edu/~kriz/cifar.html,
``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``) and that torchvision's ``CIFAR10(...,
download=True)`` unpacks: a folder ``cifar-10-batches-py`` with ``data_batch_1`` .. ``data_batch_5``
and ``test_batch`` (CIFAR-100: ``cifar-100-python`` with ``train`` and ``test``), each a pickled
dict with ``data`` (``uint8 [N, 3072]``: 1024 red, 1024 green, 1024 blue values of a 32x32 image,
row by row) and ``labels`` (CIFAR-100: ``fine_labels``). ``root`` may hold the folder, be the
folder, or hold the ``.tar.gz`` archive (read without unpacking).

The pickles are read with an unpickler that accepts only what these files contain (numpy arrays,
lists, dicts, bytes), so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ._augment import AugmentedTensors, RandomCropFlip
from ._base import DatasetBundle

__all__ = ["load_cifar", "DATA_ENV_VAR", "CIFAR_FILES"]

#: The environment variable naming the folder of local data-set copies (CIFAR); then the cache folder.
DATA_ENV_VAR = "BAYESDISTILL_DATA"

#: name -> (folder, archive, training files, test file, label key, classes)
CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz", [f"data_batch_{i}" for i in range(1, 6)],
                "test_batch", "labels", 10),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", ["train"], "test", "fine_labels", 100),
}
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("copyreg", "_reconstructor"),
            ("copy_reg", "_reconstructor"), ("builtins", "object"), ("__builtin__", "object")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR file: refusing to load {module}.{name} (not part of a CIFAR batch)")
        return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict:
    try:
        d = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:
        raise ValueError(f"{where} is not a readable CIFAR batch ({type(err).__name__}: {err})") from err
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _default_root() -> Path:
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser()
    from ._cache import default_cache_dir

    return default_cache_dir()


def _reader(name: str, root: Path):
    """A function ``file name -> bytes`` over the folder or the archive found under ``root``."""
    folder, archive, train, test, _, _ = CIFAR_FILES[name]
    for d in (root / folder, root):
        if all((d / f).is_file() for f in train + [test]):
            return lambda f, d=d: (d / f).read_bytes(), str(d)
    tar_path = root / archive
    if tar_path.is_file():
        tar = tarfile.open(tar_path, "r:gz")
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        if all(f in members for f in train + [test]):
            return lambda f: tar.extractfile(members[f]).read(), str(tar_path)
    raise FileNotFoundError(
        f"{name}: no local copy found under {str(root)!r}. bayesdistill never downloads data: put the folder "
        f"{folder!r} (with {', '.join(train)} and {test}; the python version from "
        f"https://www.cs.toronto.edu/~kriz/cifar.html, or what torchvision's download unpacks) or the archive "
        f"{archive!r} into {str(root)!r}, or pass root= (or set ${DATA_ENV_VAR}) to where it is"
    )


def _arrays(read, files: list[str], label_key: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for f in files:
        d = _unpickle(read(f), f"{where}/{f}")
        data = np.asarray(d["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{where}/{f}: data must be uint8 [N, 3072], got shape {data.shape}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def load_cifar(name: str, root: Optional[os.PathLike] = None, *, augment: bool = True,
               normalize: bool = True) -> DatasetBundle:
    """CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels) as a bundle.

    Inputs ``float32 [N, 3, 32, 32]``: pixel values / 255, standardized per channel with the
    training split's mean and standard deviation when ``normalize`` (recorded in ``info``).
    With ``augment`` the training split is an :class:`AugmentedTensors` with
    :class:`RandomCropFlip` (4-pixel padding, horizontal flips); the test split never is.

    ``root``: where the data are (see the module docstring); default ``$BAYESDISTILL_DATA``, else
    the cache directory. Raises ``FileNotFoundError`` naming the folder and the files expected.
    """
    folder, archive, train, test, label_key, classes = CIFAR_FILES[name]
    base = Path(root).expanduser() if root is not None else _default_root()
    read, where = _reader(name, base)
    x_train, y_train = _arrays(read, train, label_key, where)
    x_test, y_test = _arrays(read, [test], label_key, where)
    xt = torch.from_numpy(x_train).float().div_(255.0)
    xs = torch.from_numpy(x_test).float().div_(255.0)
    info: dict[str, Any] = {"source": "Krizhevsky (2009), Learning multiple layers of features from tiny images",
                            "files": where, "augment": "RandomCropFlip(padding=4, flip=True)" if augment else None}
    if normalize:
        mean, std = xt.mean((0, 2, 3)), xt.std((0, 2, 3)).clamp_min(1e-6)
        xt = (xt - mean[:, None, None]) / std[:, None, None]
        xs = (xs - mean[:, None, None]) / std[:, None, None]
        info.update(mean=mean.tolist(), std=std.tolist())
    yt, ys = torch.from_numpy(y_train), torch.from_numpy(y_test)
    train_set = AugmentedTensors(xt, yt, RandomCropFlip(4)) if augment else TensorDataset(xt, yt)
    return DatasetBundle(name=name, task="classification", train=train_set, test=TensorDataset(xs, ys),
                         num_classes=classes, input_shape=(3, 32, 32), output_dim=classes, info=info)
