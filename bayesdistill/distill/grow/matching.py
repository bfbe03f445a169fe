"""Which layer of the large network continues which layer of the small one, and what is new.

Growth (:func:`~bayesdistill.distill.grow`) reads both networks as chains
(:func:`~bayesdistill.distill.parse_chain`: an ``nn.Sequential`` of Linear/Conv1d/Conv2d,
BatchNorm, activations, Flatten, pooling) and matches their layers in order:

- a *matched* layer of the large network continues a layer of the small one: same kind and
  convolution hyperparameters (kernel, stride, padding, dilation), the same modules after it
  (activation, normalization, flatten), and at least as many inputs and outputs;
- an *inserted* layer is new (Net2DeeperNet): it must be able to start as the identity: square
  (inputs = outputs), a Linear or a convolution with an odd kernel, stride 1 and "same"
  padding, with no normalization after it, followed by nothing or by a ReLU whose input is
  itself the output of a ReLU (``relu(I relu(h)) = relu(h)``), and strictly between matched
  layers (the first and last layers are always matched).

Growth never removes: fewer layers, fewer units or fewer inputs in the large network raise
:class:`~bayesdistill.ShapeMismatchError` naming the layer (use :func:`~bayesdistill.align`
to shrink).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from torch import nn

from ...errors import ShapeMismatchError, UnsupportedLayerError
from ..align.chain import NORMS, Chain, Layer, columns_per_unit

__all__ = ["LayerMatch", "match_layers", "signature", "positions_per_unit"]

#: Parameter-free modules an inserted (identity) layer may have after it.
_IDENTITY_SAFE = (nn.ReLU, nn.Dropout, nn.Identity)


def signature(layer: Layer) -> tuple:
    """What a matched pair must share: the layer type and its convolution hyperparameters."""
    m = layer.module
    if isinstance(m, nn.Linear):
        return ("Linear",)
    padding = m.padding if isinstance(m.padding, str) else tuple(m.padding)
    return (type(m).__name__, tuple(m.kernel_size), tuple(m.stride), padding, tuple(m.dilation))


def _after_types(layer: Layer) -> list[str]:
    return [type(m).__name__ for _, m in layer.after if not isinstance(m, nn.Dropout)]


def positions_per_unit(chain: Chain, index: int, what: str) -> int:
    """Input columns of layer ``index`` that one unit of the previous layer feeds (a Linear after a
    flattened convolution reads every position of each channel); 1 for the first layer."""
    if index == 0:
        return 1
    return columns_per_unit(chain.layers[index - 1], chain.layers[index], f"growth of the {what}")


@dataclass(frozen=True)
class LayerMatch:
    """Large layer ``large`` continues small layer ``small`` (``None``: an inserted layer)."""

    large: int
    small: Optional[int]


def _insertable(large: Chain, j: int) -> Optional[str]:
    """Why large layer ``j`` cannot start as the identity, or ``None`` if it can."""
    layer = large.layers[j]
    m = layer.module
    if layer.in_units != layer.out_units:
        return f"it is not square ({layer.in_units} inputs, {layer.out_units} outputs)"
    if layer.norms():
        return "it has a normalization layer after it (an identity start cannot be exact in training mode)"
    bad = [type(a).__name__ for _, a in layer.after if not isinstance(a, _IDENTITY_SAFE)]
    if bad:
        return f"it is followed by {bad}; an inserted layer may only be followed by ReLU or dropout"
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        for k, s, d in zip(m.kernel_size, m.stride, m.dilation):
            if k % 2 == 0 or s != 1:
                return f"an identity convolution needs odd kernels and stride 1, it has kernel {m.kernel_size}, stride {m.stride}"
        if m.padding != "same":
            want = tuple(d * (k // 2) for k, d in zip(m.kernel_size, m.dilation))
            if tuple(m.padding) != want:
                return f"an identity convolution needs 'same' padding {want}, it has {m.padding}"
    if any(isinstance(a, nn.ReLU) for _, a in layer.after):
        prev = [a for _, a in large.layers[j - 1].after if not isinstance(a, nn.Dropout)]
        if not (prev and isinstance(prev[-1], nn.ReLU)):
            return "it is followed by a ReLU but its input is not the output of a ReLU (relu(x) != x)"
    return None


def _check_pair(small: Chain, large: Chain, i: int, j: int) -> Optional[str]:
    """Why small layer i cannot continue as large layer j (kind, hyperparameters, modules after)."""
    s, lg = small.layers[i], large.layers[j]
    if signature(s) != signature(lg):
        return f"{s.describe()} vs {lg.describe()}: different kind or convolution hyperparameters"
    if _after_types(s) != _after_types(lg):
        return f"followed by {_after_types(s)} in the small network but by {_after_types(lg)} in the large one"
    return None


def _check_sizes(small: Chain, large: Chain, i: int, j: int) -> None:
    s, lg = small.layers[i], large.layers[j]
    if lg.out_units < s.out_units:
        raise ShapeMismatchError(
            f"a growth plan cannot shrink: layer {lg.path!r} of the large network has {lg.out_units} output "
            f"units, fewer than the {s.out_units} of layer {s.path!r} of the small network; use bd.align to shrink"
        )
    if lg.in_units < s.in_units:
        raise ShapeMismatchError(
            f"a growth plan cannot shrink: layer {lg.path!r} of the large network reads {lg.in_units} inputs, "
            f"fewer than the {s.in_units} of layer {s.path!r} of the small network; use bd.align to shrink"
        )


def match_layers(small: Chain, large: Chain, layer_map: Optional[Mapping[str, str]] = None) -> list[LayerMatch]:
    """The matching of the large network's layers to the small network's (one per large layer).

    Without ``layer_map`` the first valid monotone matching is taken (first and last layers
    matched, inserted layers as late as possible among equals); with ``layer_map`` (small layer
    path -> large layer path, every small layer named) that matching is checked and used.

    Raises:
        ShapeMismatchError: the large network has fewer layers, or a matched layer fewer units
            or inputs (names the layer); no valid matching exists.
        UnsupportedLayerError: a layer that cannot be inserted as the identity where one must be.
    """
    m, n = len(small.layers), len(large.layers)
    if n < m:
        raise ShapeMismatchError(
            f"a growth plan cannot remove layers: the small network has {m} Linear/Conv layers, the large "
            f"one {n}; use bd.align to shrink"
        )
    if layer_map is not None:
        chosen = _from_map(small, large, layer_map)
    else:
        chosen = _search(small, large)
    matched = dict(zip(chosen, range(m)))
    for j, i in matched.items():
        _check_sizes(small, large, i, j)
    for j in range(n):
        if j not in matched:
            why = _insertable(large, j)
            if why is not None:
                raise UnsupportedLayerError(f"large-network layer {large.layers[j].path!r} is new but cannot start as "
                                            f"the identity: {why}")
    return [LayerMatch(j, matched.get(j)) for j in range(n)]


def _from_map(small: Chain, large: Chain, layer_map: Mapping[str, str]) -> list[int]:
    spaths = [L.path for L in small.layers]
    lpaths = [L.path for L in large.layers]
    missing = [p for p in spaths if p not in layer_map]
    unknown = [p for p in layer_map if p not in spaths]
    if missing or unknown:
        raise ValueError(f"layer_map must name every layer of the small network {spaths}"
                         + (f"; missing {missing}" if missing else "") + (f"; not small layers: {unknown}" if unknown else ""))
    targets = [layer_map[p] for p in spaths]
    bad = [t for t in targets if t not in lpaths]
    if bad:
        raise ValueError(f"layer_map names {bad}, which are not layers of the large network {lpaths}")
    idx = [lpaths.index(t) for t in targets]
    if idx != sorted(set(idx)) or len(set(idx)) != len(idx):
        raise ValueError(f"layer_map must keep the order of the layers, got {dict(layer_map)}")
    if idx[0] != 0 or idx[-1] != len(lpaths) - 1:
        raise UnsupportedLayerError("the first and last layers of the large network must continue the small "
                                    "network's first and last layers (inserted layers go between)")
    for i, j in enumerate(idx):
        why = _check_pair(small, large, i, j)
        if why is not None:
            raise ShapeMismatchError(f"layer_map: small layer {spaths[i]!r} cannot continue as large layer "
                                     f"{lpaths[j]!r}: {why}")
    return idx


def _search(small: Chain, large: Chain) -> list[int]:
    m, n = len(small.layers), len(large.layers)
    if m == 1:
        candidates: Sequence[tuple[int, ...]] = [(0,)] if n == 1 else []
    else:
        candidates = [(0, *mid, n - 1) for mid in itertools.combinations(range(1, n - 1), m - 2)]
    first_error = None
    for combo in candidates:
        errors = [(i, j, _check_pair(small, large, i, j)) for i, j in enumerate(combo)]
        bad = [e for e in errors if e[2] is not None]
        if bad:
            first_error = first_error or bad[0]
            continue
        if all(_insertable(large, j) is None for j in range(n) if j not in combo):
            return list(combo)
    if n == m and first_error is not None:
        i, j, why = first_error
        raise ShapeMismatchError(f"small layer {small.layers[i].path!r} cannot continue as large layer "
                                 f"{large.layers[j].path!r}: {why}")
    raise ShapeMismatchError(
        "no layer of the large network continues the small network's layers in order with new layers that can "
        f"start as the identity (small: {[L.describe() for L in small.layers]}, large: "
        f"{[L.describe() for L in large.layers]}); name the correspondence with layer_map={{small_path: large_path}}"
    )


def norm_paths(layer: Layer) -> list[str]:
    """Module paths of the normalization layers after ``layer``, in order."""
    return [p for p, m in layer.after if isinstance(m, NORMS)]
