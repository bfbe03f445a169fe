"""Synthetic linear-Gaussian regression of Grabovoy & Strijov (2021).

Reference: A. V. Grabovoy and V. V. Strijov, "Bayesian distillation of deep
learning models", Automation and Remote Control, 2021.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ._base import DatasetBundle

__all__ = ["synthetic_regression"]


def _check_int(name: str, value: int, minimum: int) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
    ):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def synthetic_regression(
    n_train: int = 900,
    n_test: int = 124,
    dim: int = 10,
    noise: float = 0.1,
    seed: int = 0,
) -> DatasetBundle:
    """Linear regression data ``y = x^T w + noise * eps``.

    With ``rng = numpy.random.default_rng(seed)`` the draws are, in order:

    1. ``w ~ N(0, I_dim)``, one weight vector for the whole dataset;
    2. ``x ~ N(0, I_dim)`` for ``n_train + n_test`` rows (train rows first);
    3. ``eps ~ N(0, 1)`` per row.

    Computed in ``float64``, stored as ``float32``. Inputs have shape
    ``[N, dim]`` and targets ``[N, 1]`` (unitless). ``info["weights"]`` holds
    the true ``w`` (``float32``, shape ``[dim]``) and ``info["noise"]`` the
    noise standard deviation.
    """
    n_train = _check_int("n_train", n_train, 1)
    n_test = _check_int("n_test", n_test, 0)
    dim = _check_int("dim", dim, 1)
    if (
        isinstance(noise, bool)
        or not isinstance(noise, numbers.Real)
        or not (math.isfinite(noise) and noise >= 0)
    ):
        raise ValueError(f"noise must be a finite real >= 0, got {noise!r}")

    rng = np.random.default_rng(seed)
    w = rng.standard_normal(dim)
    x = rng.standard_normal((n_train + n_test, dim))
    eps = rng.standard_normal(n_train + n_test)
    y = (x @ w + noise * eps)[:, None]

    x_t = torch.from_numpy(x.astype(np.float32))
    y_t = torch.from_numpy(y.astype(np.float32))
    return DatasetBundle(
        name="synthetic-regression",
        task="regression",
        train=TensorDataset(x_t[:n_train], y_t[:n_train]),
        test=TensorDataset(x_t[n_train:], y_t[n_train:]),
        num_classes=None,
        input_shape=(dim,),
        output_dim=1,
        info={
            "source": (
                "Grabovoy & Strijov, Bayesian distillation of deep learning models "
                "(2021)"
            ),
            "weights": torch.from_numpy(w.astype(np.float32)),
            "noise": float(noise),
            "seed": seed,
        },
    )
