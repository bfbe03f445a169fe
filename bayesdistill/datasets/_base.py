"""Core types shared by the dataset loaders: the bundle, errors and subsetting."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = [
    "DatasetBundle",
    "Split",
    "Task",
    "UnknownDatasetError",
    "check_train_fraction",
    "subset_indices",
    "subset_train",
]

Task = Literal["classification", "regression"]
Split = Literal["train", "test"]

_TASKS: tuple[str, ...] = ("classification", "regression")
_SPLITS: tuple[str, ...] = ("train", "test")


class UnknownDatasetError(KeyError, ValueError):
    """Raised by :func:`bayesdistill.datasets.load` for an unregistered name.

    Subclasses both :class:`KeyError` (a failed registry lookup) and
    :class:`ValueError` (a bad argument), so either can be caught.
    """

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True, eq=False, repr=False)
class DatasetBundle:
    """A train/test pair of tensor datasets plus the metadata models need.

    Attributes
    ----------
    name:
        Registry name of the dataset, e.g. ``"mnist1d"``.
    task:
        ``"classification"`` or ``"regression"``.
    train, test:
        :class:`~torch.utils.data.TensorDataset` of ``(inputs, targets)``
        (an augmented training split is an ``AugmentedTensors``, which holds
        the raw tensors the same way and transforms examples when read).
        Inputs are ``float32`` with shape ``[N, *input_shape]``. Targets are
        ``int64`` class indices of shape ``[N]`` for classification, and
        ``float32`` of shape ``[N, 1]`` for regression.
    num_classes:
        Number of classes for classification, ``None`` for regression.
    input_shape:
        Shape of a single input, e.g. ``(40,)``.
    output_dim:
        Width of a model's output layer: ``num_classes`` for classification,
        ``1`` for regression.
    info:
        Read-only free-form provenance (source paper, generation seed,
        ground-truth parameters for synthetic data, ...). Never needed to
        train a model.
    """

    name: str
    task: Task
    train: TensorDataset
    test: TensorDataset
    num_classes: int | None
    input_shape: tuple[int, ...]
    output_dim: int
    info: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in _TASKS:
            raise ValueError(f"task must be one of {_TASKS}, got {self.task!r}")
        expected_dim = self.num_classes if self.task == "classification" else 1
        if self.output_dim != expected_dim:
            raise ValueError(
                f"output_dim for a {self.task} dataset must be {expected_dim}, "
                f"got {self.output_dim}"
            )
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "info", MappingProxyType(dict(self.info)))

    def tensors(self, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the ``(inputs, targets)`` tensors of ``"train"`` or ``"test"``.

        The tensors are the ones stored in the dataset (not copies). A split with further
        tensors (e.g. a :class:`~bayesdistill.datasets.PrivilegedDataset`'s privileged inputs)
        still gives its first two.
        """
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        x, y = getattr(self, split).tensors[:2]
        return x, y

    def __repr__(self) -> str:
        classes = (
            f", num_classes={self.num_classes}" if self.num_classes is not None else ""
        )
        return (
            f"{type(self).__name__}(name={self.name!r}, task={self.task!r}, "
            f"train={len(self.train)}, test={len(self.test)}, "
            f"input_shape={self.input_shape}, output_dim={self.output_dim}{classes})"
        )


def check_train_fraction(train_fraction: float) -> float:
    """Validate ``train_fraction`` and return it as a float in ``(0, 1]``."""
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, numbers.Real):
        raise TypeError(
            f"train_fraction must be a real number in (0, 1], got {train_fraction!r} "
            f"of type {type(train_fraction).__name__}"
        )
    fraction = float(train_fraction)
    if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction!r}")
    return fraction


def _balanced_quotas(
    counts: Sequence[int], total: int, rng: np.random.Generator
) -> np.ndarray:
    """Split ``total`` draws over classes as evenly as their sizes allow.

    Classes are filled from the smallest up ("water-filling"), so a class that
    is too small to reach the common level gives all it has and the rest is
    shared by the others. Leftover units from the integer division go to
    randomly chosen classes that still have spare samples.
    """
    counts = np.asarray(counts, dtype=np.int64)
    quotas = np.zeros_like(counts)
    remaining = total
    order = np.argsort(counts, kind="stable")
    for rank, cls in enumerate(order):
        share = remaining // (len(order) - rank)
        quotas[cls] = min(counts[cls], share)
        remaining -= quotas[cls]
    while remaining > 0:
        spare = np.flatnonzero(quotas < counts)
        chosen = rng.choice(spare, size=min(remaining, spare.size), replace=False)
        quotas[chosen] += 1
        remaining -= chosen.size
    return quotas


def subset_indices(
    targets: torch.Tensor, fraction: float, *, stratify: bool, seed: int
) -> torch.Tensor:
    """Indices (ascending) of a seeded subset holding ``round(fraction * N)`` rows.

    With ``stratify=True`` the subset is class-balanced: every class gets the
    same number of samples where its size allows (see :func:`_balanced_quotas`).
    """
    n = len(targets)
    size = min(n, max(1, round(fraction * n)))
    rng = np.random.default_rng(seed)
    if not stratify:
        chosen = rng.choice(n, size=size, replace=False)
        return torch.from_numpy(np.sort(chosen))

    labels = targets.numpy()
    classes, counts = np.unique(labels, return_counts=True)
    quotas = _balanced_quotas(counts, size, rng)
    picked = [
        rng.choice(np.flatnonzero(labels == cls), size=quota, replace=False)
        for cls, quota in zip(classes, quotas, strict=True)
    ]
    return torch.from_numpy(np.sort(np.concatenate(picked)))


def subset_train(
    bundle: DatasetBundle, train_fraction: float, *, seed: int
) -> DatasetBundle:
    """Return ``bundle`` with its training set reduced to ``train_fraction``.

    The subset is fixed by ``seed`` and keeps the original row order. For
    classification it is class-balanced; the test set is left untouched.
    """
    fraction = check_train_fraction(train_fraction)
    if fraction == 1.0:
        return bundle
    x, y = bundle.tensors("train")
    idx = subset_indices(
        y, fraction, stratify=bundle.task == "classification", seed=seed
    )
    info = {**bundle.info, "train_fraction": fraction, "subset_seed": seed}
    # a split with its own subset keeps what it adds: augmentation (AugmentedTensors),
    # further tensors (PrivilegedDataset)
    subset = getattr(bundle.train, "subset", None)
    train = subset(idx) if callable(subset) else TensorDataset(x[idx], y[idx])
    return replace(bundle, train=train, info=info)
