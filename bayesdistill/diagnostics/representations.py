"""Representations: cosine distances of same-class and different-class pairs, per model.

>>> res = bd.diagnostics.cosine_distances(
...     [("teacher", teacher, "8"), ("student", student, "4")], data.test)
>>> res["teacher"].separation_auc      # P(a dissimilar pair is farther apart than a similar one)
>>> bd.plots.cosine_distances(res)     # draws the result
>>> res.to_dict()                      # plain numbers per model, e.g. for metrics.json

For pairs of examples of the same class ("similar") and of different classes ("dissimilar"),
the cosine distance ``1 - cos(f(x_i), f(x_j))`` (dimensionless, in [0, 2]) between their
representations ``f``: the output of a named module (read with a forward hook,
:class:`~bayesdistill.bnn.FeatureTaps`; flattened per example) or the network output. A model
whose representations separate the classes puts the similar pairs near 0 and the dissimilar
ones far away; distillation should move a student's picture towards its teacher's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["CosineDistances", "ModelDistances", "cosine_distances", "separation_auc"]


def _finite_or_none(v: float) -> Optional[float]:
    return v if math.isfinite(v) else None


@dataclass
class ModelDistances:
    """The cosine distances of one model's representations.

    Attributes:
        name: the model's name.
        layer: the module path whose output is the representation (``None``: the network output).
        similar, dissimilar: float64 CPU tensors, the distances of the same-class and of the
            different-class pairs (in the order of :attr:`CosineDistances.pairs`).
        separation_auc: P(a dissimilar pair is farther apart than a similar one), ties counting
            1/2 (the Mann-Whitney AUC; 0.5 = no separation, NaN when a group is empty).
    """

    name: str
    layer: Optional[str]
    similar: Tensor
    dissimilar: Tensor
    separation_auc: float

    @property
    def num_similar(self) -> int:
        return int(self.similar.numel())

    @property
    def num_dissimilar(self) -> int:
        return int(self.dissimilar.numel())

    @property
    def mean_similar(self) -> float:
        return float(self.similar.mean()) if self.similar.numel() else float("nan")

    @property
    def mean_dissimilar(self) -> float:
        return float(self.dissimilar.mean()) if self.dissimilar.numel() else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """``layer``, ``mean_similar``, ``mean_dissimilar``, ``separation_auc``, ``num_similar``,
        ``num_dissimilar`` (NaN as ``None``)."""
        return {"layer": self.layer, "mean_similar": _finite_or_none(self.mean_similar),
                "mean_dissimilar": _finite_or_none(self.mean_dissimilar),
                "separation_auc": _finite_or_none(self.separation_auc),
                "num_similar": self.num_similar, "num_dissimilar": self.num_dissimilar}


@dataclass
class CosineDistances:
    """Cosine distances of the same pairs of examples under several models.

    Attributes:
        models: model name -> :class:`ModelDistances`, in the order given.
        pairs: ``(i, j)`` int64 index tensors of the pairs (``i < j``), the same for every model.
        same_class: bool tensor per pair, ``y[i] == y[j]``.
        num_examples: N, the labelled examples the pairs are drawn from.
        seed: seed of the pair draw (used when there were more than ``max_pairs`` pairs).
    """

    models: dict[str, ModelDistances]
    pairs: tuple[Tensor, Tensor]
    same_class: Tensor
    num_examples: int
    seed: int

    @property
    def num_pairs(self) -> int:
        return int(self.pairs[0].numel())

    def __getitem__(self, name: str) -> ModelDistances:
        return self.models[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    def to_dict(self) -> dict[str, Any]:
        """``num_examples``, ``num_pairs``, ``seed`` and ``models``: name -> that model's
        :meth:`ModelDistances.to_dict`."""
        return {"num_examples": self.num_examples, "num_pairs": self.num_pairs, "seed": self.seed,
                "models": {name: m.to_dict() for name, m in self.models.items()}}


# --------------------------------------------------------------------------- helpers
def _labelled_tensors(data: Any) -> tuple[Tensor, Tensor]:
    """``(x, y)`` tensors of a labelled ``(x, y)`` tuple, ``TensorDataset``, ``Dataset`` or ``DataLoader``."""
    from torch.utils.data import DataLoader, Dataset, TensorDataset

    if isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
        x, y = data
    elif isinstance(data, TensorDataset):
        if len(data.tensors) < 2:
            raise ValueError("cosine_distances() needs labelled data; the TensorDataset holds inputs only")
        x, y = data.tensors[:2]
    elif isinstance(data, (Dataset, DataLoader)):
        loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=1024, shuffle=False)
        xs, ys = [], []
        for batch in loader:
            if torch.is_tensor(batch) or len(batch) < 2:
                raise ValueError("cosine_distances() needs labelled data (batches of (inputs, labels))")
            xs.append(batch[0])
            ys.append(batch[1])
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise TypeError(
            f"cosine_distances() expects labelled data: an (x, y) tuple of tensors or a Dataset, got {type(data).__name__}"
        )
    y = torch.as_tensor(y)
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 1 or y.is_floating_point() and not bool((y == y.round()).all()):
        raise ValueError(
            f"cosine_distances() needs integer class labels (similar = same class); got labels of shape "
            f"{tuple(y.shape)} and dtype {y.dtype}"
        )
    if len(x) != len(y):
        raise ValueError(f"cosine_distances(): {len(x)} inputs but {len(y)} labels")
    return x, y.long().cpu()


@torch.no_grad()
def _representations(model: Any, x: Tensor, layer: Optional[str], batch_size: int = 1024) -> Tensor:
    """``[N, D]`` outputs of module ``layer`` (or of the network) of a BNN's posterior-mean network
    or an ``nn.Module``, in eval mode, on the model's device, flattened per example (float64, CPU)."""
    from ..bnn.network import BNN
    from ..bnn.taps import FeatureTaps

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"cosine_distances() expects bd.BNN or nn.Module models, got {type(model).__name__}")
    net = model.net if isinstance(model, BNN) else model
    taps = FeatureTaps(net, [layer], "model") if layer is not None else None  # a wrong path fails here
    try:
        device = next(iter(model.parameters())).device
    except StopIteration:
        device = x.device
    was = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start: start + batch_size].to(device)
            if taps is None:
                f = model(xb)
            else:
                with taps:
                    model(xb)
                f = taps.features[layer]
            out.append(f.detach().reshape(len(xb), -1).double().cpu())
    finally:
        model.train(was)
    return torch.cat(out)


def _pair_indices(n: int, max_pairs: int, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (i < j) of all pairs of ``n`` examples, or of ``max_pairs`` distinct random ones."""
    total = n * (n - 1) // 2
    if total <= max_pairs:
        iu = torch.triu_indices(n, n, 1)
        return iu[0], iu[1]
    g = torch.Generator().manual_seed(seed)
    codes = torch.empty(0, dtype=torch.long)  # pair (i < j) -> i * n + j
    while codes.numel() < max_pairs:
        k = 2 * (max_pairs - codes.numel()) + 16
        i, j = torch.randint(n, (k,), generator=g), torch.randint(n, (k,), generator=g)
        keep = i != j
        codes = torch.unique(torch.cat([codes, torch.minimum(i, j)[keep] * n + torch.maximum(i, j)[keep]]))
    picked = codes[torch.randperm(codes.numel(), generator=g)[:max_pairs]].sort().values
    return picked // n, picked % n


def separation_auc(similar: Tensor, dissimilar: Tensor) -> float:
    """P(a dissimilar pair is farther apart than a similar pair), ties counting 1/2: the
    Mann-Whitney U statistic of the dissimilar distances over ``n_similar * n_dissimilar``
    (the ROC AUC of "distance" as a score of "dissimilar"). NaN when a group is empty."""
    similar, dissimilar = similar.reshape(-1).double().cpu(), dissimilar.reshape(-1).double().cpu()
    if similar.numel() == 0 or dissimilar.numel() == 0:
        return float("nan")
    both = torch.cat([similar, dissimilar])
    order = both.argsort()
    ranks = torch.empty_like(both)
    ranks[order] = torch.arange(1, len(both) + 1, dtype=both.dtype)
    # average ranks of ties
    values, inverse, counts = torch.unique(both, return_inverse=True, return_counts=True)
    if len(values) < len(both):
        sums = torch.zeros(len(values), dtype=both.dtype).index_add_(0, inverse, ranks)
        ranks = (sums / counts)[inverse]
    n_s, n_d = similar.numel(), dissimilar.numel()
    u = float(ranks[n_s:].sum()) - n_d * (n_d + 1) / 2
    return u / (n_s * n_d)


def _model_entries(models: Any) -> list[tuple[str, Any, Optional[str]]]:
    if isinstance(models, (str, torch.nn.Module)) or not isinstance(models, Sequence):
        raise TypeError("cosine_distances(models, data): models must be a list of (name, model) or "
                        f"(name, model, layer) tuples, got {type(models).__name__}")
    entries = []
    for entry in models:
        if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3) or not isinstance(entry[0], str):
            raise TypeError("cosine_distances(): models must be (name, model) or (name, model, layer) tuples")
        layer = entry[2] if len(entry) == 3 else None
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"cosine_distances(): the layer of {entry[0]!r} must be a module path (str) or None")
        entries.append((entry[0], entry[1], layer))
    if not entries:
        raise ValueError("cosine_distances(): no models given")
    names = [e[0] for e in entries]
    if len(set(names)) < len(names):
        raise ValueError(f"cosine_distances(): model names must differ, got {names}")
    return entries


def cosine_distances(models: Sequence[tuple], data: Any, *, max_pairs: int = 20000, seed: int = 0) -> CosineDistances:
    """Cosine distances of similar (same-class) and dissimilar pairs of ``data`` under each model.

    Args:
        models: a list of ``(name, model)`` or ``(name, model, layer)`` tuples: ``model`` a
            :class:`~bayesdistill.BNN` (its posterior-mean network is used) or an ``nn.Module``
            (in eval mode); ``layer`` a module path (``dict(net.named_modules())`` key) whose
            output is the representation, or ``None`` (the default) for the network output.
            :func:`~bayesdistill.bnn.last_hidden_layer` gives a network's last hidden layer.
        data: labelled data: an ``(x, y)`` tuple of tensors or a ``Dataset`` of ``(x, y)`` with
            integer class labels.
        max_pairs: use all pairs when there are at most this many, else this many distinct pairs
            drawn at random (seeded; the same pairs for every model).
        seed: seed of the pair draw.

    Returns:
        A :class:`CosineDistances`.

    Raises:
        TypeError: malformed model tuples, a model that is not an ``nn.Module``, unlabelled data.
        ValueError: no models, repeated names, ``max_pairs < 1``, fewer than 2 examples,
            labels that are not class indices.
        KeyError: a layer that names no module of its model.
    """
    entries = _model_entries(models)
    if isinstance(max_pairs, bool) or not (isinstance(max_pairs, int) and max_pairs >= 1):
        raise ValueError(f"cosine_distances(): max_pairs must be a positive int, got {max_pairs!r}")
    x, y = _labelled_tensors(data)
    if len(x) < 2:
        raise ValueError(f"cosine_distances() needs at least 2 examples, got {len(x)}")
    i, j = _pair_indices(len(x), max_pairs, seed)
    same = y[i] == y[j]
    results: dict[str, ModelDistances] = {}
    for name, model, layer in entries:
        f = torch.nn.functional.normalize(_representations(model, x, layer), dim=1)
        d = (1.0 - (f[i] * f[j]).sum(1)).clamp(0.0, 2.0)
        results[name] = ModelDistances(name=name, layer=layer, similar=d[same], dissimilar=d[~same],
                                       separation_auc=separation_auc(d[same], d[~same]))
    return CosineDistances(models=results, pairs=(i, j), same_class=same, num_examples=len(x), seed=seed)
