"""Small benchmark datasets for Bayesian knowledge distillation, all offline.

>>> from bayesdistill import datasets
>>> data = datasets.load("mnist1d", train_fraction=0.1, seed=0)
>>> len(data.train), len(data.test), data.input_shape, data.num_classes
(400, 1000, (40,), 10)
>>> x, y = data.tensors("train")  # float32 [400, 40], int64 [400]

Datasets (see :func:`available`):

``"mnist1d"``
    MNIST-1D (Greydanus & Kobak, arXiv:2011.14439): 4000 train / 1000 test
    sequences of length 40, 10 classes. Generated locally by the ``mnist1d``
    package and cached as ``.npz`` (see :func:`default_cache_dir`).
``"digits"``
    scikit-learn's 8x8 digits (UCI optical digits): 1437 train / 360 test,
    64 pixels scaled to ``[0, 1]``, 10 classes.
``"synthetic-regression"``
    Linear-Gaussian regression of Grabovoy & Strijov (2021): 900 train /
    124 test, 10 inputs, ``[N, 1]`` targets; see :func:`synthetic_regression`.
``"cifar10"``, ``"cifar100"``
    CIFAR-10 / CIFAR-100 (50000 train / 10000 test 32x32 RGB images) read from
    a local copy of the python-pickle batches (``root=``; nothing is
    downloaded); the training split is augmented (random crop with padding,
    horizontal flip: :class:`RandomCropFlip`) unless ``augment=False``.
``"image-folder"``
    A user's own images, one folder per class (``root=``, ``size=``, ...).

Out-of-distribution sets (:func:`ood`, kinds per data set in :func:`ood_kinds`): an
:class:`OODSet` holds a trainable in-distribution bundle and OOD inputs (held-out classes,
transformed test inputs, noise) with a description of what shifts.
``"privileged-clean-labels"``, ``"privileged-clean-features"``, ``"privileged-relevant-features"``, ``"privileged-sample-dependent"``, ``"privileged-sample-dependent-code"``
    The synthetic setups of Lopez-Paz et al. (2016), section 5: 200 train /
    10,000 test triplets ``(x, x*, y)``, ``d = 50``, 2 classes; the splits
    are :class:`PrivilegedDataset` (dict examples ``{"x", "privileged", "y"}``)
    and the seed draws the problem; see :func:`privileged_synthetic`.

The cache directory is ``cache_dir`` if given, else ``$BAYESDISTILL_CACHE``,
else ``platformdirs.user_cache_dir("bayesdistill")``. Local copies of CIFAR
are looked up under ``root`` if given, else ``$BAYESDISTILL_DATA``, else the
cache directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ._augment import AugmentedTensors, RandomCropFlip
from ._base import (
    DatasetBundle,
    UnknownDatasetError,
    check_train_fraction,
    subset_train,
)
from ._cache import CACHE_ENV_VAR, default_cache_dir
from ._cifar import DATA_ENV_VAR, load_cifar
from ._digits import load_digits
from ._folder import load_image_folder
from ._mnist1d import load_mnist1d, mnist1d_samples
from ._ood import DEFAULT_HELD_OUT, OODSet, ood, ood_kinds
from ._privileged import PRIVILEGED_EXPERIMENTS, PrivilegedDataset, privileged_synthetic
from ._synthetic import synthetic_regression

__all__ = [
    "AugmentedTensors",
    "CACHE_ENV_VAR",
    "DATA_ENV_VAR",
    "RandomCropFlip",
    "DatasetBundle",
    "UnknownDatasetError",
    "available",
    "default_cache_dir",
    "load",
    "mnist1d_samples",
    "ood",
    "ood_kinds",
    "OODSet",
    "DEFAULT_HELD_OUT",
    "PrivilegedDataset",
    "privileged_synthetic",
    "synthetic_regression",
]

_Builder = Callable[..., DatasetBundle]


def _plain(name: str, build: Callable[[int, "str | os.PathLike[str] | None"], DatasetBundle]) -> _Builder:
    """A builder of a data set without options (``root=`` and other keywords are refused)."""

    def builder(seed, cache_dir, root=None, **options):
        if root is not None or options:
            given = (["root"] if root is not None else []) + sorted(options)
            raise TypeError(f"dataset {name!r} takes no {', '.join(given)} (only cifar10, cifar100 and image-folder do)")
        return build(seed, cache_dir)

    return builder


# Each builder takes (seed, cache_dir, root=None, **options) and returns the full dataset.
_REGISTRY: dict[str, _Builder] = {
    "mnist1d": _plain("mnist1d", lambda seed, cache_dir: load_mnist1d(cache_dir)),
    "digits": _plain("digits", lambda seed, cache_dir: load_digits()),
    "synthetic-regression": _plain("synthetic-regression", lambda seed, cache_dir: synthetic_regression(seed=seed)),
    "cifar10": lambda seed, cache_dir, root=None, **options: load_cifar("cifar10", root, **options),
    "cifar100": lambda seed, cache_dir, root=None, **options: load_cifar("cifar100", root, **options),
    "image-folder": lambda seed, cache_dir, root=None, **options: load_image_folder(root, **{"seed": seed, **options}),
    **{
        name: _plain(name, lambda seed, cache_dir, e=e, v=v: privileged_synthetic(e, seed=seed, variant=v))
        for name, (e, v) in PRIVILEGED_EXPERIMENTS.items()
    },
}


def available() -> list[str]:
    """Names accepted by :func:`load`, sorted."""
    return sorted(_REGISTRY)


def load(
    name: str,
    *,
    train_fraction: float = 1.0,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    **options,
) -> DatasetBundle:
    """Load dataset ``name`` as a :class:`DatasetBundle`.

    Parameters
    ----------
    name:
        One of :func:`available` (case-insensitive; ``_`` is read as ``-``).
    train_fraction:
        Keep this fraction of the training set, in ``(0, 1]``:
        ``round(train_fraction * N_train)`` rows (at least one), in their
        original order. For classification the subset is class-balanced
        (equal counts per class where class sizes allow; e.g. 0.1 of
        MNIST-1D gives 400 rows, 40 per class). The test set is unchanged.
    seed:
        Seeds the training subset, and for ``"synthetic-regression"`` and the
        ``"privileged-*"`` sets also the data themselves. The MNIST-1D and digits data do not depend on it.
    cache_dir:
        Cache location for generated data (only MNIST-1D uses it).
    root:
        Where a local copy of the data lies (``"cifar10"``, ``"cifar100"``:
        the folder holding ``cifar-10-batches-py`` / ``cifar-100-python`` or
        the ``.tar.gz``; ``"image-folder"``: the folder of class folders).
    options:
        Data-set specific keywords: CIFAR ``augment=True``,
        ``normalize=True``; image folder ``size=(32, 32)``, ``channels=3``,
        ``test_fraction=0.2``, ``augment=False``, ``padding=4``.

    Raises
    ------
    UnknownDatasetError
        (a ``KeyError`` and ``ValueError``) for a name not in :func:`available`.
    FileNotFoundError
        For CIFAR or an image folder that is not where ``root`` says, naming
        the folder and files expected (nothing is downloaded).
    ValueError
        If ``train_fraction`` is not in ``(0, 1]``.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    fraction = check_train_fraction(train_fraction)
    builder = _REGISTRY.get(name.strip().lower().replace("_", "-"))
    if builder is None:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; available datasets: {', '.join(available())}"
        )
    return subset_train(builder(seed, cache_dir, root=root, **options), fraction, seed=seed)
