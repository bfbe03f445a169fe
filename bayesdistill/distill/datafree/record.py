r"""Activation records: the metadata a teacher ships instead of its training data.

Lopes, Fenu & Starner, "Data-Free Knowledge Distillation for Deep Neural Networks" (2017):
the teacher's activation statistics are recorded once, on its training data; later, inputs are
reconstructed from the record alone (:func:`~bayesdistill.distill.datafree.reconstruct`) and a
student is distilled on them. A record holds *blocks*, each a feature of the teacher's
activations with its per-class mean and covariance over the training examples of that class:

- ``kind="top"``: one block, the temperature-scaled output ``f(x) / T`` (the logits);
- ``kind="all"``: one block per recorded layer (by default every activation module, e.g. each
  ``ReLU``, and the output ``f(x) / T``), each layer's activations flattened;
- ``kind="spectral-all"``: one block, the spectral coefficients ``U^T a`` of all recorded
  layers' activations concatenated, ``U`` the smoothest eigenvectors of the layer graph's
  Laplacian (:mod:`~bayesdistill.distill.datafree.spectral`);
- ``kind="spectral-pairs"``: one block per pair of consecutive recorded layers, the spectral
  coefficients on that pair's graph.

The teacher runs as its posterior-mean network (for a :class:`~bayesdistill.BNN`), in eval
mode. Covariances are unbiased (``torch.cov``), accumulated in float64. A block whose recorded
values are all >= 0 (post-ReLU activations) is marked ``nonnegative``: targets sampled for it are
clipped at 0.

The record also holds the input shape, the scalar mean and standard deviation of the training
inputs (all entries pooled: the scale the reconstruction starts from), the number of examples per
class, and the teacher's fingerprint (a digest of its architecture and one of its weights), so
that a record is refused (:class:`~bayesdistill.errors.RecordMismatchError`) by any other
teacher. :meth:`ActivationRecord.save` / :meth:`ActivationRecord.load` write and read it with
``torch.save`` of tensors and plain data (loaded with ``weights_only=True``: no code runs).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..._checks import check_choice, check_int, check_number
from ..._io import atomic_write, read_torch_file
from ...bnn.network import BNN
from ...bnn.taps import ACTIVATIONS, FeatureTaps
from ...errors import DataError, FileFormatError, RecordMismatchError, UnsupportedLayerError
from ...infer.batches import Batches, Data
from .spectral import num_components, spectral_basis

__all__ = ["ActivationRecord", "Block", "record", "teacher_fingerprint", "RECORD_KINDS", "OUTPUT", "TeacherRunner"]

#: the kinds of record
RECORD_KINDS = ("top", "all", "spectral-all", "spectral-pairs")
#: the name of the teacher's (temperature-scaled) output among the recorded layers
OUTPUT = "output"
_FORMAT = "bayesdistill.activation_record"
_VERSION = 1


def block_features(layers: Sequence[str], basis: Optional[Tensor], acts: dict[str, Tensor]) -> Tensor:
    """The layers' activations flattened and concatenated ``[B, N]``, times ``basis`` (``[N, D]``) if any."""
    flat = torch.cat([acts[l].reshape(acts[l].shape[0], -1) for l in layers], 1)
    return flat @ basis.to(flat) if basis is not None else flat


@dataclass
class Block:
    """One recorded feature of the teacher's activations.

    Attributes:
        name: e.g. ``"output"``, ``"2"`` (a layer's path), ``"spectral"``, ``"spectral:2+4"``.
        layers: the recorded layers it reads, concatenated (flattened) in this order.
        mean: ``[C, D]`` per-class means; cov: ``[C, D, D]`` per-class (unbiased) covariances.
        basis: ``[sum of the layers' widths, D]`` spectral basis, or ``None`` (the activations
            themselves).
        nonnegative: every recorded value was >= 0 (targets are clipped at 0).
    """

    name: str
    layers: list[str]
    mean: Tensor
    cov: Tensor
    basis: Optional[Tensor] = None
    nonnegative: bool = False

    @property
    def dim(self) -> int:
        return int(self.mean.shape[1])

    def features(self, acts: dict[str, Tensor]) -> Tensor:
        """The block's feature ``[B, D]`` from the layers' activations ``{layer: [B, ...]}``."""
        return block_features(self.layers, self.basis, acts)

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "layers": list(self.layers), "mean": self.mean, "cov": self.cov,
                "basis": self.basis, "nonnegative": bool(self.nonnegative)}


@dataclass
class ActivationRecord:
    """A teacher's activation statistics (see the module docstring); made by :func:`record`.

    Attributes:
        kind: one of :data:`RECORD_KINDS`.
        temperature: T of the recorded output ``f(x) / T``.
        layers: the recorded layers (module paths, and ``"output"``), in forward order.
        blocks: the recorded features (:class:`Block`).
        counts: ``[C]`` training examples per class.
        input_shape: the shape of one input.
        input_mean, input_std: mean and standard deviation of all input entries.
        fingerprint: ``{"architecture": ..., "weights": ...}`` digests of the teacher.
        metadata: free-form plain data (e.g. the data set's name).
    """

    kind: str
    temperature: float
    layers: list[str]
    blocks: list[Block]
    counts: Tensor
    input_shape: tuple[int, ...]
    input_mean: float
    input_std: float
    fingerprint: dict[str, str]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.counts.numel())

    def num_values(self) -> int:
        """The number of stored numbers (means, covariances, bases): the record's size."""
        return sum(b.mean.numel() + b.cov.numel() + (b.basis.numel() if b.basis is not None else 0)
                   for b in self.blocks)

    def block(self, name: str) -> Block:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"the record has no block {name!r}; its blocks: {[b.name for b in self.blocks]}")

    def marginal(self, name: str) -> tuple[Tensor, Tensor]:
        """The block's mean ``[D]`` and per-feature variance ``[D]`` over all classes (the mixture
        of the class statistics weighted by the class counts, with each class's unbiased
        covariance): what batch-statistics methods (DeepInversion) match."""
        b = self.block(name)
        w = (self.counts.to(torch.float64) / self.counts.sum()).unsqueeze(1)
        mean = b.mean.to(torch.float64)
        mu = (w * mean).sum(0)
        second = (w * (torch.diagonal(b.cov.to(torch.float64), dim1=1, dim2=2) + mean**2)).sum(0)
        return mu.float(), (second - mu**2).clamp_min(0).float()

    # -- the teacher ---------------------------------------------------------------------------
    def check_teacher(self, teacher: Union[BNN, nn.Module]) -> None:
        """Raise :class:`~bayesdistill.errors.RecordMismatchError` unless ``teacher`` is the
        network the record was made from (same architecture digest and weights digest)."""
        fp = teacher_fingerprint(teacher)
        if fp["architecture"] != self.fingerprint.get("architecture"):
            raise RecordMismatchError(
                f"the activation record was made from another teacher: its architecture digest is "
                f"{self.fingerprint.get('architecture')}, this teacher's is {fp['architecture']} "
                "(other layers or shapes); record this teacher with bd.distill.datafree.record(teacher, data)"
            )
        if fp["weights"] != self.fingerprint.get("weights"):
            raise RecordMismatchError(
                f"the activation record was made from a teacher of the same architecture but other weights "
                f"(weights digest {self.fingerprint.get('weights')}, this teacher's {fp['weights']}); "
                "a record describes one trained teacher: record this one"
            )

    # -- files ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"format": _FORMAT, "version": _VERSION, "kind": self.kind, "temperature": float(self.temperature),
                "layers": list(self.layers), "blocks": [b.state() for b in self.blocks], "counts": self.counts,
                "input_shape": list(self.input_shape), "input_mean": float(self.input_mean),
                "input_std": float(self.input_std), "fingerprint": dict(self.fingerprint),
                "metadata": dict(self.metadata)}

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the record to ``path`` atomically (``torch.save`` of tensors and plain data)."""
        state = self.state()
        return atomic_write(path, lambda fh: torch.save(state, fh))

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "ActivationRecord":
        """Read a record written by :meth:`save` (``weights_only``: no code from the file runs).

        Raises ``FileNotFoundError``, or :class:`~bayesdistill.errors.FileFormatError` for a file
        that is not a record of this format version or whose contents are inconsistent.
        """
        return cls.from_state(read_torch_file(path, "activation record"), str(path))

    @classmethod
    def from_state(cls, state: Any, where: str = "state") -> "ActivationRecord":
        def bad(why: str) -> FileFormatError:
            return FileFormatError(f"{where!r} is not a valid activation record: {why}")

        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise bad("it is not a bayesdistill activation record (no 'format' marker)")
        if state.get("version") != _VERSION:
            raise bad(f"format version {state.get('version')!r}; this bayesdistill reads version {_VERSION}")
        try:
            kind, counts = state["kind"], state["counts"]
            if kind not in RECORD_KINDS:
                raise bad(f"unknown kind {kind!r}")
            if not torch.is_tensor(counts) or counts.dim() != 1 or counts.numel() < 2 or (counts < 2).any():
                raise bad("'counts' must be a 1-d tensor of >= 2 examples per class for >= 2 classes")
            C = counts.numel()
            blocks = []
            for raw in state["blocks"]:
                mean, cov, basis = raw["mean"], raw["cov"], raw["basis"]
                if not (torch.is_tensor(mean) and torch.is_tensor(cov) and mean.dim() == 2 and mean.shape[0] == C
                        and tuple(cov.shape) == (C, mean.shape[1], mean.shape[1])):
                    raise bad(f"block {raw.get('name')!r}: means [C, D] and covariances [C, D, D] for C = {C}")
                if not (torch.isfinite(mean).all() and torch.isfinite(cov).all()):
                    raise bad(f"block {raw.get('name')!r} holds NaN or inf")
                if basis is not None and not (torch.is_tensor(basis) and basis.dim() == 2
                                              and basis.shape[1] == mean.shape[1]):
                    raise bad(f"block {raw.get('name')!r}: a basis [N, D] with D = {mean.shape[1]}")
                layers = [str(l) for l in raw["layers"]]
                blocks.append(Block(str(raw["name"]), layers, mean.float(), cov.float(),
                                    None if basis is None else basis.float(), bool(raw["nonnegative"])))
            if not blocks:
                raise bad("no blocks")
            std = float(state["input_std"])
            if not std > 0:
                raise bad("input_std must be > 0")
            fp = state["fingerprint"]
            if not (isinstance(fp, dict) and {"architecture", "weights"} <= set(fp)):
                raise bad("no teacher fingerprint")
            return cls(kind, float(state["temperature"]), [str(l) for l in state["layers"]], blocks, counts.long(),
                       tuple(int(d) for d in state["input_shape"]), float(state["input_mean"]), std,
                       {k: str(v) for k, v in fp.items()}, dict(state.get("metadata") or {}))
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, FileFormatError):
                raise
            raise bad(f"{type(err).__name__}: {err}") from err

    def __repr__(self) -> str:
        return (f"ActivationRecord(kind={self.kind!r}, T={self.temperature:g}, classes={self.num_classes}, "
                f"blocks={[f'{b.name}:{b.dim}' for b in self.blocks]}, values={self.num_values()})")


# ----------------------------------------------------------------------------- the teacher
def _digest(parts: Sequence[Any]) -> str:
    h = hashlib.sha256()
    for p in parts:
        if torch.is_tensor(p):
            t = p.detach().to("cpu", torch.float32).contiguous()
            h.update(str(tuple(t.shape)).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(p).encode())
    return h.hexdigest()[:16]


def teacher_fingerprint(teacher: Union[BNN, nn.Module]) -> dict[str, str]:
    """Digests of a teacher's architecture (module types by path, parameter names and shapes)
    and of its weights (a BNN's posterior means; a module's parameters and buffers)."""
    net = teacher.net if isinstance(teacher, BNN) else teacher
    if not isinstance(net, nn.Module):
        raise TypeError(f"the teacher must be a bd.BNN or an nn.Module, got {type(teacher).__name__}")
    modules = [(n, type(m).__name__) for n, m in net.named_modules()]
    if isinstance(teacher, BNN):
        q = teacher.posterior()
        shapes = [(k, tuple(v.shape)) for k, v in q.locs.items()]
        weights = [x for k, v in q.locs.items() for x in (k, v)]
    else:
        state = teacher.state_dict()
        shapes = [(k, tuple(v.shape)) for k, v in state.items()]
        weights = [x for k, v in state.items() if v.is_floating_point() for x in (k, v)]
    return {"architecture": _digest([modules, shapes]), "weights": _digest(weights)}


class TeacherRunner:
    """The teacher as a deterministic function of its input with taps on ``layers``: a BNN's
    posterior-mean network (weights detached), in eval mode. ``run(x)`` returns
    ``{layer: activation}`` with ``"output"`` = ``f(x) / T``; gradients flow to ``x`` only."""

    def __init__(self, teacher: Union[BNN, nn.Module], layers: Sequence[str], temperature: float):
        self.teacher = teacher
        self.net = teacher.net if isinstance(teacher, BNN) else teacher
        self.paths = [l for l in layers if l != OUTPUT]
        FeatureTaps(self.net, self.paths, "teacher")  # unknown paths raise KeyError listing the paths
        self.temperature = float(temperature)
        self.weights = ({k: v.detach() for k, v in teacher.posterior().locs.items()}
                        if isinstance(teacher, BNN) else None)

    def to(self, device: torch.device) -> "TeacherRunner":
        self.teacher.to(device)
        if self.weights is not None:
            self.weights = {k: v.to(device) for k, v in self.weights.items()}
        return self

    def run(self, x: Tensor) -> dict[str, Tensor]:
        was = self.teacher.training
        self.teacher.eval()
        try:
            with FeatureTaps(self.net, self.paths, "teacher") as taps:
                out = (self.teacher.forward_with(x, self.weights) if self.weights is not None else self.teacher(x))
            acts = dict(taps.features)
        finally:
            self.teacher.train(was)
        acts[OUTPUT] = out / self.temperature
        return acts


def default_layers(net: nn.Module) -> list[str]:
    """Every activation module (:data:`~bayesdistill.bnn.ACTIVATIONS`) in forward (definition)
    order, then ``"output"``."""
    return [n for n, m in net.named_modules() if n and type(m).__name__ in ACTIVATIONS] + [OUTPUT]


def _linear_between(teacher: Union[BNN, nn.Module], before: Optional[str], after: str) -> Tensor:
    """The weight ``[out, in]`` of the one Linear layer between two recorded layers of a chain
    (``after == "output"``: up to the end of the network); a BNN's posterior mean."""
    net = teacher.net if isinstance(teacher, BNN) else teacher
    leaves = [(n, m) for n, m in net.named_modules() if n and not any(True for _ in m.children())]
    names = [n for n, _ in leaves]
    start = names.index(before) + 1 if before is not None else 0
    end = names.index(after) + 1 if after != OUTPUT else len(leaves)
    between = [(n, m) for n, m in leaves[start:end] if isinstance(m, nn.Linear) or _has_weights(teacher, n, m)]
    if len(between) != 1 or not isinstance(between[0][1], nn.Linear):
        raise UnsupportedLayerError(
            f"spectral records need exactly one nn.Linear between consecutive recorded layers (a chain of "
            f"fully connected layers); between {before!r} and {after!r} the teacher has "
            f"{[f'{n} ({type(m).__name__})' for n, m in between] or 'no layer with weights'}"
        )
    name, module = between[0]
    if isinstance(teacher, BNN):
        return teacher.posterior().locs[f"{name}.weight"].detach()
    return module.weight.detach()


def _has_weights(teacher: Union[BNN, nn.Module], name: str, module: nn.Module) -> bool:
    if isinstance(teacher, BNN):
        return any(s.startswith(name + ".") for s in teacher.site_names) or any(True for _ in module.parameters(False))
    return any(True for _ in module.parameters(False))


def _input_of(batch_x: Any) -> Tensor:
    if not torch.is_tensor(batch_x):
        raise DataError("record: the teacher's inputs must be one tensor per batch (multi-input networks are "
                        "not supported)")
    return batch_x


@torch.no_grad()
def _block_specs(kind: str, chosen: list[str], teacher: Union[BNN, nn.Module], runner: "TeacherRunner",
                 batches: Batches, spectral_fraction: float) -> list[tuple[str, list[str], Optional[Tensor]]]:
    """The record's blocks ``(name, layers, basis)``: one per layer (``top``, ``all``), or the
    spectral projections of all layers together / of each pair of consecutive layers."""
    if kind in ("top", "all"):
        return [(l, [l], None) for l in chosen]
    if len(chosen) < 2:
        raise ValueError(f"a {kind} record needs at least two recorded layers, got {chosen}")
    probe = runner.run(_input_of(batches.head(2).x))
    widths = {l: int(probe[l][0].numel()) for l in chosen}
    weights = [_linear_between(teacher, a, b) for a, b in zip(chosen[:-1], chosen[1:])]
    if kind == "spectral-all":
        sizes = [widths[l] for l in chosen]
        return [("spectral", list(chosen), spectral_basis(sizes, weights, num_components(sum(sizes), spectral_fraction)))]
    specs = []
    for i, (a, b) in enumerate(zip(chosen[:-1], chosen[1:])):
        sizes = [widths[a], widths[b]]
        specs.append((f"spectral:{a}+{b}", [a, b],
                      spectral_basis(sizes, [weights[i]], num_components(sum(sizes), spectral_fraction))))
    return specs


def record(
    teacher: Union[BNN, nn.Module],
    data: Data,
    *,
    kind: str = "all",
    layers: Optional[Sequence[str]] = None,
    temperature: float = 8.0,
    spectral_fraction: float = 0.3,
    batch_size: int = 512,
    device: Union[str, torch.device, None] = None,
    metadata: Optional[dict[str, Any]] = None,
) -> ActivationRecord:
    """Record the teacher's activation statistics per class on its labelled training data.

    Args:
        teacher: the trained teacher (a BNN: its posterior-mean network).
        data: labelled data ``(x, y)`` (a tuple, ``TensorDataset``, ``Dataset`` or ``DataLoader``),
            ``y`` int64 class indices: the classes whose statistics are kept.
        kind: ``"top"``, ``"all"``, ``"spectral-all"`` or ``"spectral-pairs"`` (module docstring).
        layers: the recorded layers (module paths; ``"output"`` is always added last);
            default: every activation module. Ignored for ``"top"``.
        temperature: T of the recorded output ``f(x) / T`` (Lopes et al.: 8).
        spectral_fraction: spectral kinds: the fraction of each graph's eigenvectors kept
            (``max(1, round(fraction * nodes))``).
        batch_size: examples per forward pass; device: where the teacher runs (it is moved
            there); metadata: plain data stored with the record.

    Raises:
        DataError: unlabelled data, or a class with fewer than 2 examples.
        UnsupportedLayerError: a spectral kind on a teacher that is not a chain of Linear layers
            between the recorded layers.
        KeyError: a layer path the teacher does not have.
    """
    check_choice("kind", kind, RECORD_KINDS)
    temperature = check_number("temperature", temperature, minimum=0.0, exclusive_minimum=True)
    spectral_fraction = check_number("spectral_fraction", spectral_fraction, minimum=0.0, maximum=1.0,
                                     exclusive_minimum=True)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    net = teacher.net if isinstance(teacher, BNN) else teacher
    if kind == "top":
        chosen = [OUTPUT]
    else:
        chosen = [l for l in (layers if layers is not None else default_layers(net)) if l != OUTPUT] + [OUTPUT]
    dev = torch.device(device) if device is not None else (
        teacher.loc.device if isinstance(teacher, BNN) else next(iter(teacher.parameters()), torch.empty(0)).device)
    runner = TeacherRunner(teacher, chosen, temperature).to(dev)
    batches = Batches(data, batch_size, dev, 0, shuffle=False, what="record data")

    specs = _block_specs(kind, chosen, teacher, runner, batches, spectral_fraction)

    s1: list[dict[int, Tensor]] = [{} for _ in specs]
    s2: list[dict[int, Tensor]] = [{} for _ in specs]
    mins = [float("inf")] * len(specs)
    counts: dict[int, int] = {}
    x_sum = x_sq = 0.0
    x_n = 0
    input_shape: Optional[tuple[int, ...]] = None
    out_width: list[Optional[int]] = [None]
    for batch in batches.epoch(0):
        if batch.y is None:
            raise DataError("record needs labelled data (inputs and class labels): the statistics are per class")
        x, y = _input_of(batch.x), batch.y
        if y.dtype != torch.long or y.dim() != 1:
            raise DataError(f"record: labels must be int64 class indices [N], got {y.dtype} {tuple(y.shape)}")
        input_shape = tuple(x.shape[1:])
        xd = x.detach().double()
        x_sum += float(xd.sum())
        x_sq += float((xd**2).sum())
        x_n += xd.numel()
        with torch.no_grad():  # statistics only: no autograd graph
            acts = runner.run(x)
        out_width[0] = int(acts[OUTPUT].reshape(len(x), -1).shape[1])
        for i, (name, ls, basis) in enumerate(specs):
            f = block_features(ls, basis, acts).double()
            mins[i] = min(mins[i], float(f.min()))
            for c in y.unique().tolist():
                fc = f[y == c]
                s1[i][c] = s1[i].get(c, 0) + fc.sum(0)
                s2[i][c] = s2[i].get(c, 0) + fc.T @ fc
        for c, k in zip(*y.unique(return_counts=True)):
            counts[int(c)] = counts.get(int(c), 0) + int(k)
    if not counts:
        raise DataError("record: the data hold no examples")
    num_classes = max(counts) + 1
    width = out_width[0]
    if width is not None and num_classes > width:
        raise DataError(f"record: labels up to {num_classes - 1} but the teacher has {width} outputs")
    num_classes = width if width is not None else num_classes  # every output class needs its statistics
    few = [c for c in range(num_classes) if counts.get(c, 0) < 2]
    if few:
        raise DataError(f"record: classes {few} have fewer than 2 examples; a covariance per class needs at least 2")
    blocks = []
    for i, (name, ls, basis) in enumerate(specs):
        means, covs = [], []
        for c in range(num_classes):
            n = counts[c]
            mu = s1[i][c] / n
            cov = (s2[i][c] - n * torch.outer(mu, mu)) / (n - 1)
            means.append(mu)
            covs.append((cov + cov.T) / 2)
        blocks.append(Block(name, ls, torch.stack(means).float().cpu(), torch.stack(covs).float().cpu(),
                            None if basis is None else basis.cpu(), basis is None and mins[i] >= 0))
    mean = x_sum / x_n
    std = max((x_sq / x_n - mean**2), 0.0) ** 0.5
    return ActivationRecord(
        kind=kind, temperature=temperature, layers=chosen, blocks=blocks,
        counts=torch.tensor([counts[c] for c in range(num_classes)]), input_shape=input_shape or (),
        input_mean=mean, input_std=std if std > 0 else 1.0, fingerprint=teacher_fingerprint(teacher),
        metadata=dict(metadata or {}),
    )
