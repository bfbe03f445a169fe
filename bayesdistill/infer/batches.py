"""Mini-batches for SVI: what a data set yields, adapted to ``(inputs, targets, side inputs)``.

A :class:`Batch` is what the training engine hands to the model: the network's input ``x`` (a
tensor, or a tuple of tensors for a network whose ``forward`` takes several inputs), the
targets ``y`` (``None`` for unlabelled transfer data) and ``side``, named extra tensors that
only some terms read (e.g. a teacher's privileged inputs).

Data sets yield batches in many shapes. The default adapter, :func:`default_batch`, accepts

- a tensor (inputs only),
- a tuple or list ``(x, y)`` (further items go to ``side["extra"]``),
- a ``TensorDataset`` ``(x, y, *more)`` whose attribute ``side_names`` names the further tensors
  (e.g. :class:`bayesdistill.datasets.PrivilegedDataset`, ``side_names = ("privileged",)``):
  sliced on the fast tensor path into ``side[name]``,
- a mapping with an input key (``"x"``, ``"input"``, ``"inputs"``) and optionally a target key
  (``"y"``, ``"target"``, ``"targets"``, ``"label"``, ``"labels"``); every other key goes to
  ``side``.

Anything else needs an adapter: ``bd.fit(..., batch=lambda b: (b["image"], b["label"]))``
(a callable returning a :class:`Batch`, ``(x, y)`` or ``(x, y, side)``).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from ..errors import DataError
from .distributed import global_batches, steps_per_epoch

__all__ = ["Batch", "Batches", "BatchAdapter", "default_batch", "Data"]

Data = Union[Dataset, DataLoader, Tensor, tuple]
Inputs = Union[Tensor, tuple[Tensor, ...]]

_INPUT_KEYS = ("x", "input", "inputs")
_TARGET_KEYS = ("y", "target", "targets", "label", "labels")


@dataclass
class Batch:
    """One mini-batch: network inputs ``x`` (``[B, ...]`` or a tuple of such), targets ``y``
    (``[B, ...]`` or ``None``) and named side inputs (``[B, ...]`` each)."""

    x: Inputs
    y: Optional[Tensor] = None
    side: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        first = self.x[0] if isinstance(self.x, tuple) else self.x
        return int(first.shape[0])

    def to(self, device: torch.device) -> "Batch":
        """The batch on ``device`` (tensors moved, non-blocking)."""

        def move(v: Any) -> Any:
            if torch.is_tensor(v):
                return v.to(device, non_blocking=True)
            if isinstance(v, tuple):
                return tuple(move(t) for t in v)
            return v

        return Batch(move(self.x), move(self.y), {k: move(v) for k, v in self.side.items()})


BatchAdapter = Callable[[Any], Union[Batch, tuple]]


def default_batch(raw: Any) -> Batch:
    """Adapt what a data set or ``DataLoader`` yields to a :class:`Batch` (see module docstring)."""
    if isinstance(raw, Batch):
        return raw
    if torch.is_tensor(raw):
        return Batch(raw)
    if isinstance(raw, Mapping):
        x_key = next((k for k in _INPUT_KEYS if k in raw), None)
        if x_key is None:
            raise DataError(
                f"batches are mappings with keys {sorted(map(str, raw))}; none is an input key "
                f"{list(_INPUT_KEYS)}. Tell fit how to read them: "
                "bd.fit(..., batch=lambda b: (b['<input key>'], b['<target key>']))"
            )
        y_key = next((k for k in _TARGET_KEYS if k in raw), None)
        side = {k: v for k, v in raw.items() if k not in (x_key, y_key)}
        return Batch(raw[x_key], raw[y_key] if y_key is not None else None, side)
    if isinstance(raw, (tuple, list)) and raw:
        x, *rest = raw
        if isinstance(x, list):
            x = tuple(x)
        y = rest[0] if rest else None
        side = {"extra": tuple(rest[1:])} if len(rest) > 1 else {}
        return Batch(x, y, side)
    raise DataError(
        f"cannot read a batch of type {type(raw).__name__}; a data set must yield a tensor, an "
        "(inputs, targets) tuple or a dict with an 'x' key, or fit needs an adapter: "
        "bd.fit(..., batch=lambda b: (inputs, targets))"
    )


def _adapted(adapter: Optional[BatchAdapter], raw: Any) -> Batch:
    if adapter is None:
        return default_batch(raw)
    out = adapter(raw)
    if isinstance(out, Batch):
        return out
    if isinstance(out, tuple) and len(out) in (2, 3):
        x, y, *side = out
        return Batch(tuple(x) if isinstance(x, list) else x, y, dict(side[0]) if side else {})
    raise DataError(
        f"the batch adapter returned a {type(out).__name__}; it must return a bd.infer.Batch, "
        "(inputs, targets) or (inputs, targets, side_dict)"
    )


class Batches:
    """Mini-batches on a device, reproducible per (seed, epoch).

    A ``TensorDataset``, a tensor or a tuple of tensors is moved to the device once and sliced
    with a per-epoch permutation (no per-example Python work); any other ``Dataset`` goes
    through a ``DataLoader`` whose shuffling generator is seeded per epoch; a ``DataLoader`` is
    used as given. ``adapter`` turns what the data yield into a :class:`Batch`
    (default :func:`default_batch`).
    """

    def __init__(self, data: Data, batch_size: int, device: torch.device, seed: int, shuffle: bool = True,
                 adapter: Optional[BatchAdapter] = None, what: str = "training data", rank: int = 0,
                 world_size: int = 1):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.device, self.seed, self.batch_size, self.shuffle = device, seed, batch_size, shuffle
        self.adapter, self.what = adapter, what
        self.rank, self.world_size = rank, world_size
        self.loader: Optional[DataLoader] = None
        self.dataset: Optional[Dataset] = None
        self.tensors: Optional[tuple[Tensor, ...]] = None
        #: names of the tensors after (x, y) of a TensorDataset that declares ``side_names``
        self.side_names: tuple[str, ...] = tuple(getattr(data, "side_names", None) or ())
        if torch.is_tensor(data):
            data = (data,)
        if isinstance(data, (tuple, list)) and data and all(torch.is_tensor(t) for t in data):
            if any(t.dim() == 0 for t in data):
                raise DataError(
                    f"{what}: tensors need a batch dimension (examples first); got shapes "
                    f"{[tuple(t.shape) for t in data]}"
                )
            if len({t.shape[:1] for t in data}) > 1:  # TensorDataset would raise a bare AssertionError
                raise DataError(
                    f"{what}: inputs and targets differ in length: the tensors have shapes "
                    f"{[tuple(t.shape) for t in data]}"
                )
            data = TensorDataset(*data)
        if isinstance(data, TensorDataset) and adapter is None:
            self.tensors = tuple(t.to(device) for t in data.tensors)
            for i, t in enumerate(self.tensors):
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    bad = int((~torch.isfinite(t.reshape(len(t), -1))).any(1).nonzero()[0])
                    part = "inputs" if i == 0 else "targets" if i == 1 else f"tensor {i}"
                    raise DataError(f"{what}: {part} contain NaN or inf (first in example {bad})")
        elif isinstance(data, DataLoader):
            self.loader = data
        elif isinstance(data, Dataset):
            self.dataset = data
        else:
            raise DataError(
                f"{what} must be a torch Dataset, a DataLoader, a tensor or an (x, y) tuple of tensors, "
                f"got {type(data).__name__}"
            )
        if self.num_examples == 0:
            raise DataError(f"the {what} are empty (0 examples)")
        if world_size > 1 and self.loader is not None:
            self._check_distributed_loader()

    def _check_distributed_loader(self) -> None:
        sampler = self.loader.sampler  # type: ignore[union-attr]
        if not isinstance(sampler, DistributedSampler):
            raise DataError(
                f"{self.what}: a DataLoader in a {self.world_size}-process run needs a "
                "torch.utils.data.DistributedSampler (otherwise every rank trains on all the data); "
                "or pass the Dataset itself and fit shards it"
            )
        n = self.num_examples
        if n % self.world_size and not sampler.drop_last:
            warnings.warn(
                f"{self.what}: the DistributedSampler pads {self.world_size - n % self.world_size} examples "
                f"(repeated) so that {n} examples split over {self.world_size} processes; pass the Dataset "
                "itself to fit for an exact split",
                stacklevel=4,
            )

    def __len__(self) -> int:
        if self.loader is not None:
            return len(self.loader)
        return steps_per_epoch(self.num_examples, self.batch_size, self.world_size)

    @property
    def num_examples(self) -> int:
        if self.tensors is not None:
            return len(self.tensors[0])
        source = self.loader.dataset if self.loader is not None else self.dataset
        try:
            return len(source)  # type: ignore[arg-type]
        except TypeError:  # an IterableDataset without __len__
            return -1

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of one epoch, in the order seeded by ``(seed, epoch)``."""
        if self.loader is not None:
            loader = self.loader
            if isinstance(loader.sampler, DistributedSampler):
                loader.sampler.set_epoch(epoch)
        else:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            n = self.num_examples
            order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
            local = global_batches(order, self.batch_size, self.rank, self.world_size)
            if self.tensors is not None:
                for idx in local:
                    idx = idx.to(self.device)
                    x, *rest = (t.index_select(0, idx) for t in self.tensors)
                    yield Batch(x, rest[0] if rest else None, self._side(rest[1:]))
                return
            loader = DataLoader(self.dataset, batch_sampler=[idx.tolist() for idx in local])
        for i, raw in enumerate(loader, start=1):
            batch = _adapted(self.adapter, raw)
            _check_finite(batch, i, epoch, self.what)  # on the host, before the copy: no device sync
            yield batch.to(self.device)

    def _side(self, extra: list[Tensor]) -> dict[str, Any]:
        """Side inputs of the fast tensor path: named by ``side_names`` when the data set declares
        them (one name per further tensor), else ``{"extra": (...)}``."""
        if not extra:
            return {}
        if len(self.side_names) == len(extra):
            return dict(zip(self.side_names, extra))
        return {"extra": tuple(extra)}

    def first(self) -> Batch:
        """The first batch of epoch 0."""
        return next(iter(self.epoch(0)))

    def head(self, n: int) -> Batch:
        """The first ``n`` examples (fewer if the data hold fewer) as one batch, in data order:
        for shape checks and for the terms' setup."""
        if self.tensors is not None:
            x, *rest = (t[:n] for t in self.tensors)
            return Batch(x, rest[0] if rest else None, self._side(rest[1:]))
        parts: list[Batch] = []
        count = 0
        source = self.epoch(0) if self.loader is not None else Batches(
            self.dataset, self.batch_size, self.device, 0, shuffle=False, adapter=self.adapter, what=self.what
        ).epoch(0)
        for batch in source:
            parts.append(batch)
            count += len(batch)
            if count >= n:
                break
        return _concat_batches(parts, n)

    def fingerprint(self) -> dict[str, Any]:
        """The number of examples and a digest of the data: what a resumed run compares.

        In-memory tensors are hashed whole (large ones every k-th element); for other data sets
        the first, middle and last examples (by index) are hashed.
        """
        h = hashlib.sha256()
        if self.tensors is not None:
            for t in self.tensors:
                _update(h, t)
        else:
            source = self.loader.dataset if self.loader is not None else self.dataset
            n = self.num_examples
            try:
                for i in sorted({0, n // 2, n - 1}) if n > 0 else ():
                    _update_any(h, source[i])  # type: ignore[index]
            except (TypeError, NotImplementedError, IndexError, KeyError):
                pass  # an iterable data set: its size is all a resume can compare
        return {"num_examples": self.num_examples, "digest": h.hexdigest()[:16]}


def _check_finite(batch: Batch, index: int, epoch: int, what: str) -> None:
    """A :class:`DataError` naming the batch when its inputs or float targets hold NaN/inf."""
    inputs = batch.x if isinstance(batch.x, tuple) else (batch.x,)
    for name, t in [("inputs", t) for t in inputs] + [("targets", batch.y)]:
        if torch.is_tensor(t) and t.is_floating_point() and t.device.type == "cpu" and not bool(torch.isfinite(t).all()):
            raise DataError(f"{what}: batch {index} of epoch {epoch} has {name} with NaN or inf")


def _cat(values: list[Any], n: int) -> Any:
    first = values[0]
    if first is None:
        return None
    if torch.is_tensor(first):
        return torch.cat(values)[:n]
    if isinstance(first, tuple):
        return tuple(_cat(list(parts), n) for parts in zip(*values))
    return first


def _concat_batches(parts: list[Batch], n: int) -> Batch:
    side = {k: _cat([p.side[k] for p in parts], n) for k in parts[0].side}
    return Batch(_cat([p.x for p in parts], n), _cat([p.y for p in parts], n), side)


def _update_any(h: "hashlib._Hash", value: Any) -> None:
    if torch.is_tensor(value):
        _update(h, value)
    elif isinstance(value, Mapping):
        for k in sorted(value, key=str):
            h.update(str(k).encode())
            _update_any(h, value[k])
    elif isinstance(value, (tuple, list)):
        for v in value:
            _update_any(h, v)
    else:
        h.update(repr(value).encode())


def _update(h: "hashlib._Hash", t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    flat = t.reshape(-1)
    if flat.numel() * flat.element_size() > (64 << 20):  # large: every k-th element suffices
        flat = flat[:: max(1, flat.numel() // (16 << 20))].contiguous()
    h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
