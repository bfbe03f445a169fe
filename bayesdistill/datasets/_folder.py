"""A user's own images: one folder per class (``root/<class>/*.png``), read with Pillow.

Layouts:

- ``root/train/<class>/...`` and ``root/test/<class>/...``: the two splits as given;
- ``root/<class>/...``: one pool, split per class into train and test by ``test_fraction``
  (seeded, so the split is the same every time).

Every image is converted to RGB (or grayscale with ``channels=1``), resized to ``size`` (height,
width) with bilinear filtering, scaled to ``[0, 1]`` and standardized per channel with the
training split's statistics. Class indices follow the sorted class-folder names (``info["classes"]``).
Files whose suffix is not an image suffix are ignored; an unreadable image raises naming it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ._augment import AugmentedTensors, RandomCropFlip
from ._base import DatasetBundle

__all__ = ["load_image_folder", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def _classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    out = []
    for label, c in enumerate(classes):
        d = folder / c
        if d.is_dir():
            out += [(p, label) for p in sorted(d.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return out


def _read(files: list[tuple[Path, int]], size: tuple[int, int], channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    mode = {1: "L", 3: "RGB"}[channels]
    xs = np.empty((len(files), size[0], size[1], channels), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with Image.open(path) as im:
                img = im.convert(mode).resize((size[1], size[0]), Image.BILINEAR)
        except Exception as err:  # Pillow raises several types for damaged files
            raise ValueError(f"image folder: cannot read {str(path)!r} ({type(err).__name__}: {err})") from err
        xs[i] = np.asarray(img, dtype=np.uint8).reshape(size[0], size[1], channels)
    x = torch.from_numpy(xs).permute(0, 3, 1, 2).float().div_(255.0)
    return x, torch.tensor([label for _, label in files], dtype=torch.int64)


def _split(files: list[tuple[Path, int]], test_fraction: float, seed: int) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    labels = np.array([label for _, label in files])
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_test = int(round(test_fraction * len(idx)))
        test += [files[i] for i in sorted(idx[:n_test])]
        train += [files[i] for i in sorted(idx[n_test:])]
    return train, test


def load_image_folder(root: Optional[os.PathLike], *, size: tuple[int, int] = (32, 32), channels: int = 3,
                      test_fraction: float = 0.2, seed: int = 0, augment: bool = False,
                      padding: int = 4) -> DatasetBundle:
    """The images under ``root`` as a classification bundle (see the module docstring).

    ``augment``: the training split applies :class:`RandomCropFlip` (``padding``) when read.
    Raises ``FileNotFoundError`` when ``root`` is missing or holds no class folder with images.
    """
    if root is None:
        raise ValueError("image-folder needs root= (the folder with one sub-folder of images per class)")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"image folder {str(base)!r} does not exist")
    if channels not in (1, 3):
        raise ValueError(f"image folder: channels must be 1 or 3, got {channels}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"image folder: test_fraction must be in [0, 1), got {test_fraction}")
    size = (int(size[0]), int(size[1]))
    split = (base / "train").is_dir() and (base / "test").is_dir()
    classes = _classes(base / "train") if split else _classes(base)
    if split:
        train_files, test_files = _files(base / "train", classes), _files(base / "test", classes)
    else:
        train_files, test_files = _split(_files(base, classes), test_fraction, seed)
    if not classes or not train_files:
        raise FileNotFoundError(
            f"image folder {str(base)!r} holds no images in class folders (expected {str(base)}/<class>/<image> or "
            f"{str(base)}/train/<class>/<image> and {str(base)}/test/<class>/<image>; suffixes {', '.join(IMAGE_SUFFIXES)})"
        )
    xt, yt = _read(train_files, size, channels)
    xs, ys = _read(test_files, size, channels) if test_files else (xt[:0], yt[:0])
    mean, std = xt.mean((0, 2, 3)), xt.std((0, 2, 3)).clamp_min(1e-6)
    xt, xs = (xt - mean[:, None, None]) / std[:, None, None], (xs - mean[:, None, None]) / std[:, None, None]
    info: dict[str, Any] = {"root": str(base), "classes": classes, "mean": mean.tolist(), "std": std.tolist(),
                            "split": "folders" if split else f"test_fraction={test_fraction}, seed={seed}"}
    train_set = AugmentedTensors(xt, yt, RandomCropFlip(padding)) if augment else TensorDataset(xt, yt)
    return DatasetBundle(name="image-folder", task="classification", train=train_set, test=TensorDataset(xs, ys),
                         num_classes=len(classes), input_shape=(channels, *size), output_dim=len(classes), info=info)
