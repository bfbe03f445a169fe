"""MNIST-1D (Greydanus, 2020), generated offline and cached as ``.npz``.

Reference: S. Greydanus and D. Kobak, "Scaling down deep learning with
MNIST-1D", ICML 2024 (arXiv:2011.14439, 2020).

Everything here is produced by ``mnist1d.data.make_dataset``; the package's
download helper (``get_dataset`` and its ``url``) is never used.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import random
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Literal, overload

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ._base import DatasetBundle
from ._cache import Arrays, cached_arrays, resolve_cache_dir

__all__ = ["STANDARD_SEED", "load_mnist1d", "mnist1d_samples"]

#: Seed of the standard MNIST-1D split (``get_dataset_args()['seed']``).
STANDARD_SEED = 42
NUM_CLASSES = 10
SEQ_LEN = 40
N_TRAIN = 4000
N_TEST = 1000
# Bump when the cached layout changes so that old files are regenerated.
_CACHE_VERSION = 1


@contextlib.contextmanager
def _preserved_global_rng() -> Iterator[None]:
    """Restore Python's and NumPy's global RNG state on exit.

    ``make_dataset`` reseeds both global generators; without this, loading
    data would silently reset the caller's random streams.
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _generate(**overrides: object) -> dict[str, np.ndarray]:
    """Run ``mnist1d.data.make_dataset`` with the default args plus ``overrides``."""
    import mnist1d.data

    args = mnist1d.data.get_dataset_args(as_dict=True)
    args.pop("url", None)  # only used for downloading, which we never do
    args.update(overrides)
    with _preserved_global_rng():
        raw = mnist1d.data.make_dataset(SimpleNamespace(**args))
    return {
        "x_train": np.asarray(raw["x"], dtype=np.float32),
        "y_train": np.asarray(raw["y"], dtype=np.int64),
        "x_test": np.asarray(raw["x_test"], dtype=np.float32),
        "y_test": np.asarray(raw["y_test"], dtype=np.int64),
    }


def _has_layout(arrays: Arrays, sizes: dict[str, int]) -> bool:
    """Whether ``arrays`` holds ``x_<split>``/``y_<split>`` pairs of the given sizes."""
    if int(arrays.get("version", -1)) != _CACHE_VERSION:
        return False
    for split, n in sizes.items():
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if x is None or y is None:
            return False
        if x.dtype != np.float32 or x.shape != (n, SEQ_LEN) or not np.isfinite(x).all():
            return False
        if (
            y.dtype != np.int64
            or y.shape != (n,)
            or ((y < 0) | (y >= NUM_CLASSES)).any()
        ):
            return False
    return True


def load_mnist1d(cache_dir: str | os.PathLike[str] | None = None) -> DatasetBundle:
    """The standard MNIST-1D split: 4000 train / 1000 test sequences.

    Inputs are ``float32`` of shape ``[N, 40]`` (dimensionless signal
    amplitudes); targets are ``int64`` digit labels in ``0..9``. The arrays
    are exactly those of ``make_dataset(get_dataset_args())`` (seed 42), cast
    to ``float32``. No further standardisation is applied: ``make_dataset``
    already centres and scales the whole generated set to mean 0 and
    standard deviation 1 (train split: mean ~ -3e-4, std ~ 0.998).
    Classes are close to, but not exactly, balanced (394-411 per class in
    train).

    The arrays are cached as ``mnist1d_seed42_v1.npz`` in ``cache_dir``
    (see :func:`bayesdistill.datasets.default_cache_dir`).
    """
    path = (
        resolve_cache_dir(cache_dir)
        / f"mnist1d_seed{STANDARD_SEED}_v{_CACHE_VERSION}.npz"
    )

    def build() -> Arrays:
        return {**_generate(), "version": np.array(_CACHE_VERSION)}

    arrays = cached_arrays(
        path, build, lambda a: _has_layout(a, {"train": N_TRAIN, "test": N_TEST})
    )
    return DatasetBundle(
        name="mnist1d",
        task="classification",
        train=TensorDataset(
            torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"])
        ),
        test=TensorDataset(
            torch.from_numpy(arrays["x_test"]), torch.from_numpy(arrays["y_test"])
        ),
        num_classes=NUM_CLASSES,
        input_shape=(SEQ_LEN,),
        output_dim=NUM_CLASSES,
        info={
            "source": (
                "Greydanus & Kobak, Scaling down deep learning with MNIST-1D "
                "(arXiv:2011.14439)"
            ),
            "mnist1d_seed": STANDARD_SEED,
        },
    )


def _num_samples_for(n: int, train_split: float) -> int:
    """Smallest ``num_samples`` whose ``make_dataset`` train part has ``>= n`` rows."""
    num_samples = NUM_CLASSES * math.ceil(n / (NUM_CLASSES * train_split))
    # make_dataset rounds down to whole classes and truncates the split index.
    while int(NUM_CLASSES * (num_samples // NUM_CLASSES) * train_split) < n:
        num_samples += NUM_CLASSES
    return num_samples


def _check_samples_args(n: int, seed: int) -> None:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(
            f"seed must be an integer, got {seed!r} of type {type(seed).__name__}"
        )
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if seed == STANDARD_SEED:
        raise ValueError(
            f"seed={STANDARD_SEED} is the seed of the standard MNIST-1D split, so the "
            "samples would overlap the train/test data; pass any other seed"
        )


@overload
def mnist1d_samples(
    n: int,
    seed: int,
    return_labels: Literal[False] = ...,
    *,
    cache_dir: str | os.PathLike[str] | None = ...,
) -> torch.Tensor: ...
@overload
def mnist1d_samples(
    n: int,
    seed: int,
    return_labels: Literal[True],
    *,
    cache_dir: str | os.PathLike[str] | None = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


def mnist1d_samples(
    n: int,
    seed: int,
    return_labels: bool = False,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Fresh MNIST-1D inputs from the same generator, e.g. as a transfer set.

    Runs ``mnist1d.data.make_dataset`` with the standard arguments except
    ``seed`` and ``num_samples`` (sized so the generated train part alone
    holds ``>= n`` rows), concatenates its train and test parts and returns
    the first ``n`` rows. Because ``make_dataset`` standardises each generated
    set by its own mean and std, the scale matches the standard split closely
    but not bit-for-bit.

    Parameters
    ----------
    n:
        Number of samples, ``>= 1``.
    seed:
        Generator seed in ``[0, 2**32)``; must differ from 42, the seed of the
        standard split, or the samples would duplicate its train/test data.
    return_labels:
        Also return the digit labels the samples were generated from.
    cache_dir:
        Where to cache the arrays (keyed by ``n`` and ``seed``); defaults to
        :func:`bayesdistill.datasets.default_cache_dir`.

    Returns
    -------
    ``x`` of shape ``[n, 40]``, ``float32``; with ``return_labels=True``,
    ``(x, y)`` with ``y`` of shape ``[n]``, ``int64`` in ``0..9``.
    """
    _check_samples_args(n, seed)
    n, seed = int(n), int(seed)
    path = (
        resolve_cache_dir(cache_dir)
        / f"mnist1d_samples_n{n}_seed{seed}_v{_CACHE_VERSION}.npz"
    )

    def build() -> Arrays:
        import mnist1d.data

        train_split = mnist1d.data.get_dataset_args(as_dict=True)["train_split"]
        raw = _generate(seed=seed, num_samples=_num_samples_for(n, train_split))
        return {
            "x_samples": np.concatenate([raw["x_train"], raw["x_test"]])[:n],
            "y_samples": np.concatenate([raw["y_train"], raw["y_test"]])[:n],
            "version": np.array(_CACHE_VERSION),
        }

    arrays = cached_arrays(path, build, lambda a: _has_layout(a, {"samples": n}))
    x = torch.from_numpy(arrays["x_samples"])
    return (x, torch.from_numpy(arrays["y_samples"])) if return_labels else x
