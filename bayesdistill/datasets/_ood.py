"""Out-of-distribution (OOD) sets built offline from the built-in data.

>>> s = datasets.ood("mnist1d", "held-out-classes", held_out=(7, 8, 9))
>>> s.data            # in distribution: a DatasetBundle of classes 0..6 (labels 0..6), trainable
>>> s.ood             # OOD inputs [M, 40]: the test sequences of digits 7, 8, 9
>>> print(s.description)

Every set is one call: :func:`ood` returns an :class:`OODSet` holding a labelled
in-distribution bundle (train and test) and the OOD inputs, with a sentence saying what
shifts. ``held_out`` combines with every kind: the in-distribution bundle then holds only the
kept classes (relabelled 0..k-1 in ascending order of the original labels), and a transformed
kind transforms the kept classes' test inputs, so one model trained on ``s.data`` is scored
against every kind. Everything is deterministic in ``seed`` and needs no network.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Optional

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from ._base import DatasetBundle, UnknownDatasetError, check_train_fraction, subset_train

__all__ = ["OODSet", "ood", "ood_kinds", "DEFAULT_HELD_OUT"]

#: The classes held out by ``kind="held-out-classes"`` when ``held_out`` is not given.
DEFAULT_HELD_OUT = (7, 8, 9)


@dataclass(frozen=True, eq=False)
class OODSet:
    """An in-distribution data set and OOD inputs for it.

    Attributes:
        name: the data set (``"mnist1d"``, ``"digits"``).
        kind: the OOD kind (see :func:`ood_kinds`).
        description: what shifts between ``data`` and ``ood``, in one or two sentences.
        data: the in-distribution :class:`DatasetBundle` (labelled train and test); with held-out
            classes it holds only the kept ones, relabelled ``0..k-1``, and ``num_classes = k``.
        ood: the OOD inputs, ``float32`` ``[M, *input_shape]``.
        ood_labels: the original class label behind each OOD input (the held-out digit, or the
            digit of the transformed test input; ``-1`` for pure noise): for reference, never
            a target of the in-distribution model.
        seed: the seed of everything random (training subset, noise, phases).
        info: provenance: ``classes`` (original label of each in-distribution class),
            ``held_out``, the kind's parameters.
    """

    name: str
    kind: str
    description: str
    data: DatasetBundle
    ood: Tensor
    ood_labels: Tensor
    seed: int
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "info", MappingProxyType(dict(self.info)))

    @property
    def test(self) -> TensorDataset:
        """The in-distribution test set (``data.test``), what OOD inputs are compared with."""
        return self.data.test

    def __repr__(self) -> str:
        return (f"OODSet(name={self.name!r}, kind={self.kind!r}, in_train={len(self.data.train)}, "
                f"in_test={len(self.data.test)}, ood={len(self.ood)}, classes={list(self.info['classes'])})")


# --------------------------------------------------------------------------- transforms
def _generator(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + salt)


def _reversed(x: Tensor, train_x: Tensor, seed: int, **_: Any) -> Tensor:
    return x.flip(-1).contiguous()


def _phase_shuffled(x: Tensor, train_x: Tensor, seed: int, **_: Any) -> Tensor:
    """Each sequence's Fourier amplitudes kept, its phases replaced by uniform random ones (the
    constant term and, for even lengths, the Nyquist term keep theirs, so the result is real
    with the same mean and power spectrum)."""
    n = x.shape[-1]
    spec = torch.fft.rfft(x.double(), dim=-1)
    phase = 2 * math.pi * torch.rand(spec.shape, generator=_generator(seed, 1), dtype=torch.float64)
    rot = torch.polar(torch.ones_like(phase), phase)
    rot[..., 0] = 1.0
    if n % 2 == 0:
        rot[..., -1] = 1.0
    return torch.fft.irfft(spec * rot, n=n, dim=-1).float()


def _scaled(x: Tensor, train_x: Tensor, seed: int, *, factor: float, **_: Any) -> Tensor:
    return (x * factor).contiguous()


def _gaussian_noise(x: Tensor, train_x: Tensor, seed: int, *, clip: Optional[tuple[float, float]] = None,
                    **_: Any) -> Tensor:
    """Gaussian noise with the per-feature mean and standard deviation of the training inputs."""
    mean, std = train_x.double().mean(0), train_x.double().std(0)
    z = torch.randn(x.shape, generator=_generator(seed, 2), dtype=torch.float64)
    out = mean + std * z
    if clip is not None:
        out = out.clamp(*clip)
    return out.float()


def _inverted(x: Tensor, train_x: Tensor, seed: int, **_: Any) -> Tensor:
    return (1.0 - x).contiguous()


def _rotated(x: Tensor, train_x: Tensor, seed: int, **_: Any) -> Tensor:
    return torch.rot90(x.reshape(-1, 8, 8), 1, dims=(1, 2)).reshape(x.shape).contiguous()


@dataclass(frozen=True)
class _Kind:
    transform: Optional[Callable[..., Tensor]]  # None: the held-out classes themselves
    statement: str  # with {placeholders} filled from the parameters
    noise: bool = False  # the OOD inputs carry no digit


_MNIST1D: dict[str, _Kind] = {
    "held-out-classes": _Kind(None, "Semantic shift: the OOD inputs are the test sequences of digits {held_out}, "
                                    "classes the model never saw; the input statistics are those of MNIST-1D."),
    "reversed": _Kind(_reversed, "Time reversal: each in-distribution test sequence read backwards (x[39 - t]); "
                                 "the values and their marginal distribution are unchanged, the order of the "
                                 "digit's features is not."),
    "phase-shuffled": _Kind(_phase_shuffled, "Phase randomization: each in-distribution test sequence keeps its "
                                             "Fourier amplitudes (power spectrum, mean, variance) with uniform random "
                                             "phases, which destroys the digit's shape but not its spectrum."),
    "scaled": _Kind(_scaled, "Amplitude shift: each in-distribution test sequence multiplied by {factor:g}, "
                             "far outside the training range (|x| <= {train_max:.2f} in training); the shape is "
                             "unchanged, so a ReLU network's logits grow about in proportion (exactly so "
                             "without biases)."),
    "noise": _Kind(_gaussian_noise, "Pure noise: Gaussian sequences with the per-position mean and standard "
                                    "deviation of the training inputs, as many as in-distribution test sequences; "
                                    "no digit at all.", noise=True),
}
_DIGITS: dict[str, _Kind] = {
    "held-out-classes": _Kind(None, "Semantic shift: the OOD inputs are the test images of digits {held_out}, "
                                    "classes the model never saw; the pixel statistics are those of the digits."),
    "inverted": _Kind(_inverted, "Contrast inversion: each in-distribution test image as 1 - x (ink and "
                                 "background swapped); same shapes, the opposite intensities."),
    "rotated": _Kind(_rotated, "Rotation: each in-distribution test image rotated by 90 degrees "
                               "counter-clockwise; same intensities, digits on their side."),
    "noise": _Kind(lambda x, t, s, **kw: _gaussian_noise(x, t, s, clip=(0.0, 1.0)),
                   "Pure noise: Gaussian images with the per-pixel mean and standard deviation of the training "
                   "inputs, clipped to [0, 1], as many as in-distribution test images; no digit at all.",
                   noise=True),
}
_KINDS: dict[str, dict[str, _Kind]] = {"mnist1d": _MNIST1D, "digits": _DIGITS}


def ood_kinds(name: Optional[str] = None) -> dict[str, Any]:
    """The OOD kinds of data set ``name`` (kind -> its statement, placeholders unfilled), or of
    every data set (name -> that dict) when ``name`` is ``None``."""
    if name is None:
        return {n: ood_kinds(n) for n in _KINDS}
    key = _dataset_key(name)
    return {k: v.statement for k, v in _KINDS[key].items()}


def _dataset_key(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in _KINDS:
        raise UnknownDatasetError(f"no OOD sets for data set {name!r}; available: {', '.join(sorted(_KINDS))}")
    return key


def _check_held_out(held_out: Any, num_classes: int) -> tuple[int, ...]:
    if isinstance(held_out, (str, bytes)) or not isinstance(held_out, Sequence):
        raise TypeError(f"held_out must be a sequence of class labels, got {held_out!r}")
    out = []
    for c in held_out:
        if isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 <= int(c) < num_classes:
            raise ValueError(f"held_out must hold class labels in 0..{num_classes - 1}, got {list(held_out)}")
        out.append(int(c))
    out = sorted(set(out))
    if not out or len(out) > num_classes - 2:
        raise ValueError(f"hold out between 1 and {num_classes - 2} of the {num_classes} classes "
                         f"(at least two must stay), got {list(held_out)}")
    return tuple(out)


def _keep_classes(bundle: DatasetBundle, held_out: tuple[int, ...]) -> tuple[DatasetBundle, tuple[int, ...]]:
    kept = tuple(c for c in range(int(bundle.num_classes)) if c not in held_out)
    remap = torch.full((int(bundle.num_classes),), -1, dtype=torch.long)
    remap[list(kept)] = torch.arange(len(kept))
    splits = {}
    for split in ("train", "test"):
        x, y = bundle.tensors(split)
        mask = remap[y] >= 0
        splits[split] = TensorDataset(x[mask].clone(), remap[y[mask]])
    info = {**bundle.info, "classes": kept, "held_out": held_out}
    return replace(bundle, train=splits["train"], test=splits["test"], num_classes=len(kept),
                   output_dim=len(kept), info=info), kept


def ood(
    name: str,
    kind: str,
    *,
    held_out: Optional[Sequence[int]] = None,
    seed: int = 0,
    train_fraction: float = 1.0,
    factor: float = 5.0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> OODSet:
    """An in-distribution data set and OOD inputs of ``kind`` for it, in one call (offline).

    Kinds (:func:`ood_kinds`), MNIST-1D: ``"held-out-classes"``, ``"reversed"``,
    ``"phase-shuffled"``, ``"scaled"``, ``"noise"``; digits: ``"held-out-classes"``,
    ``"inverted"``, ``"rotated"``, ``"noise"``. Transformed kinds transform the
    in-distribution *test* inputs (so the OOD set has as many inputs, and the same digits, as
    ``data.test``); ``"noise"`` draws that many noise inputs.

    Args:
        name: ``"mnist1d"`` or ``"digits"``.
        kind: the OOD kind.
        held_out: classes to remove from the in-distribution data (train and test); the kept
            classes are relabelled ``0..k-1``. ``"held-out-classes"`` defaults to
            :data:`DEFAULT_HELD_OUT` ``(7, 8, 9)``; the other kinds to none (all 10 classes).
            At least two classes must stay.
        seed: seeds the training subset (``train_fraction < 1``), the random phases and the noise.
        train_fraction: keep this fraction of the in-distribution training set, class-balanced
            (as :func:`bayesdistill.datasets.load`).
        factor: the amplitude factor of ``"scaled"``.
        cache_dir: where MNIST-1D is cached (:func:`bayesdistill.datasets.load`).

    Returns:
        An :class:`OODSet`.

    Raises:
        UnknownDatasetError: a data set without OOD sets, or an unknown kind (a ``KeyError``
            and ``ValueError``).
        ValueError: bad ``held_out``, ``train_fraction`` or ``factor``.
    """
    from . import load

    key = _dataset_key(name)
    kinds = _KINDS[key]
    kind_key = kind.strip().lower().replace("_", "-") if isinstance(kind, str) else kind
    if kind_key not in kinds:
        raise UnknownDatasetError(f"unknown OOD kind {kind!r} for {key}; available: {', '.join(kinds)}")
    spec = kinds[kind_key]
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    fraction = check_train_fraction(train_fraction)
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"factor must be a positive number, got {factor!r}")
    full = load(key, cache_dir=cache_dir)
    if held_out is None and kind_key == "held-out-classes":
        held_out = DEFAULT_HELD_OUT
    held = _check_held_out(held_out, int(full.num_classes)) if held_out is not None else ()
    if held:
        data, kept = _keep_classes(full, held)
    else:
        kept = tuple(range(int(full.num_classes)))
        data = replace(full, info={**full.info, "classes": kept, "held_out": ()})
    in_train_x, _ = data.tensors("train")
    params: dict[str, Any] = {"held_out": list(held), "train_max": float(in_train_x.abs().max())}
    if spec.transform is None:
        x_test, y_test = full.tensors("test")
        mask = torch.isin(y_test, torch.tensor(held, dtype=y_test.dtype))
        x_ood, y_ood = x_test[mask].clone(), y_test[mask].clone()
    else:
        x_in, _ = data.tensors("test")
        if kind_key == "scaled":
            params["factor"] = float(factor)
        x_ood = spec.transform(x_in, in_train_x, int(seed), factor=float(factor))
        classes = torch.tensor(kept, dtype=torch.long)
        y_ood = torch.full((len(x_ood),), -1, dtype=torch.long) if spec.noise else classes[data.tensors("test")[1]]
    description = spec.statement.format(**params)
    if held and kind_key != "held-out-classes":
        description += f" In distribution: digits {list(kept)} only (digits {list(held)} held out)."
    if fraction < 1.0:
        data = subset_train(data, fraction, seed=int(seed))
    info = {"classes": kept, "held_out": held, "kind_parameters": {k: v for k, v in params.items()
                                                                   if k not in ("held_out", "train_max")}}
    return OODSet(name=key, kind=kind_key, description=description, data=data, ood=x_ood.float().contiguous(),
                  ood_labels=y_ood, seed=int(seed), info=info)
