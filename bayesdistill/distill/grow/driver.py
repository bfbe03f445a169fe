r"""``grow``: a plan that embeds a small trained network into a larger one.

The reverse of :func:`~bayesdistill.align` ("anti-distillation", Petrushina, Grabovoy, Bakhteev
& Strijov 2022: the data get more classes or features, and a larger model starts from a smaller
pre-trained one, w_large = (u*, w')). The large network may have more outputs (classes), more
inputs (features or channels), wider hidden layers and more layers. The modes say what the new
weights w' start at:

=============  ==================================================  =====================
mode           new weights                                          small function kept
=============  ==================================================  =====================
``net2net``    new hidden units copy random old units (incoming     exactly
               weights and bias copied, the outgoing weights of
               each copied unit divided by its number of copies:
               Net2WiderNet); new inputs/outputs as ``embed``
``embed``      outgoing weights of new units 0, incoming weights    exactly
               and biases U[-1/sqrt(n), 1/sqrt(n)] (n = fan-in)
``zero``       every new weight 0 (the pitfall: under ReLU a new    exactly
               hidden unit has zero activation and zero gradient)
``uniform``    every new weight U[-1/sqrt(n), 1/sqrt(n)] (the       no: new units feed
               paper's second variant)                              old ones at random
=============  ==================================================  =====================

Inserted layers (more depth) start as the identity (Net2DeeperNet) in every mode but
``uniform``, where they are uniform draws too. "Exactly" means: at the posterior means, the large
network's outputs at the old output positions equal the small network's outputs for the old
inputs, whatever the new inputs are (up to floating-point summation order), in training and
evaluation mode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional, Union

import torch
from torch import Tensor, nn

from ..._checks import check_int, check_number
from ...bnn.network import BNN
from ...errors import ShapeMismatchError
from ..align.chain import Chain, Layer, parse_chain
from .matching import LayerMatch, match_layers, norm_paths, positions_per_unit
from .plan import GROWTH_MODES, GrownLayer, GrowthPlan, UnitMap, uniform_bound

__all__ = ["grow"]


def grow(
    small: BNN,
    large: Union[nn.Module, BNN],
    *,
    mode: str = "net2net",
    inputs: Optional[Sequence[int]] = None,
    outputs: Optional[Sequence[int]] = None,
    layer_map: Optional[Mapping[str, str]] = None,
    seed: int = 0,
    new_scale: float = 1e-2,
) -> GrowthPlan:
    """A growth plan from a trained small network to a larger architecture.

    Args:
        small: the trained small network, a :class:`~bayesdistill.BNN` whose network is a chain
            (``nn.Sequential`` of Linear/Conv1d/Conv2d, BatchNorm1d/2d, activations, Flatten,
            pooling).
        large: the large network (``nn.Module`` or :class:`BNN`): the same layer kinds in the same
            order, each with at least as many inputs and outputs, possibly with more layers.
        mode: ``"net2net"`` (default), ``"embed"``, ``"zero"`` or ``"uniform"`` (module docstring).
        inputs: where the small network's inputs (features of a Linear first layer, channels of a
            convolution) sit among the large one's, e.g. ``range(0, 40, 2)`` when the old data
            held every other feature; default the first ones.
        outputs: where the small network's outputs (classes) sit among the large one's; default
            the first ones.
        layer_map: small layer path -> large layer path, to fix the correspondence of layers
            (default: found in order, see :func:`~bayesdistill.distill.grow.match_layers`).
        seed: seeds the draws of the mode (uniform weights, the units Net2Net copies).
        new_scale: the posterior scale :meth:`GrowthPlan.apply` gives new entries.

    Returns:
        A :class:`GrowthPlan`; ``plan.apply(small.posterior())`` is the grown posterior, and
        :func:`~bayesdistill.distill.student_from_small` builds the large BNN from it.

    Raises:
        TypeError: ``small`` is not a BNN.
        ValueError: an unknown mode, bad ``inputs``/``outputs``/``layer_map``.
        ShapeMismatchError: the large network would shrink the small one (fewer layers, units or
            inputs: names the layer), or the layers do not correspond.
        UnsupportedLayerError: a module growth cannot handle (names it).
    """
    if not isinstance(small, BNN):
        raise TypeError(f"grow expects the small network as a trained bd.BNN, got {type(small).__name__}")
    if mode not in GROWTH_MODES:
        raise ValueError(f"mode must be one of {', '.join(GROWTH_MODES)}, got {mode!r}")
    seed = check_int("seed", seed)
    new_scale = check_number("new_scale", new_scale, minimum=0.0, exclusive_minimum=True)
    large_net = large.net if isinstance(large, BNN) else large
    if not isinstance(large_net, nn.Module):
        raise TypeError(f"grow expects the large network as an nn.Module or bd.BNN, got {type(large).__name__}")
    schain = parse_chain(small.net, None, "small network")
    lchain = parse_chain(large_net, None, "large network")
    matches = match_layers(schain, lchain, layer_map)
    gen = torch.Generator().manual_seed(seed)
    unit_maps, layers = _unit_maps(schain, lchain, matches, mode, inputs, outputs, gen)
    large_shapes = _large_shapes(large, lchain)
    small_shapes = {k: list(v) for k, v in small.shapes.items()}
    _check_bayesian(schain, small_shapes, "small")
    dtype = small.loc.dtype
    fresh = {}
    for L, match in zip(layers, matches):
        layer = lchain.layers[match.large]
        fresh.update(_fresh(L, layer, unit_maps, mode, large_shapes, gen, dtype))
    records = [{"large": L.path, "small": L.source, "inserted": L.inserted} for L in layers]
    return GrowthPlan(mode=mode, layers=layers, unit_maps=unit_maps, fresh=fresh, small_shapes=small_shapes,
                      large_shapes=large_shapes, new_scale=new_scale, seed=seed, records=records)


def _index_list(name: str, given: Optional[Sequence[int]], small_n: int, large_n: int) -> tuple[int, ...]:
    if given is None:
        return tuple(range(small_n))
    try:
        idx = tuple(int(i) for i in given)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of ints (positions in the large network), got {given!r}") from None
    if len(idx) != small_n:
        raise ValueError(f"{name} must give a position for each of the small network's {small_n} {name}, got {len(idx)}")
    if len(set(idx)) != len(idx) or any(not 0 <= i < large_n for i in idx):
        raise ValueError(f"{name} must be distinct positions in [0, {large_n}), got {list(idx)}")
    return idx


def _unit_maps(schain: Chain, lchain: Chain, matches: list[LayerMatch], mode: str, inputs, outputs,
               gen: torch.Generator) -> tuple[list[UnitMap], list[GrownLayer]]:
    first_s, first_l = schain.layers[0], lchain.layers[0]
    if first_l.in_units < first_s.in_units:  # also checked per layer; here before the index checks
        raise ShapeMismatchError(f"a growth plan cannot shrink: the large network's first layer {first_l.path!r} reads "
                                 f"{first_l.in_units} inputs, the small one's {first_s.in_units}")
    old_in = _index_list("inputs", inputs, first_s.in_units, first_l.in_units)
    maps = [_fixed_map(old_in, first_l.in_units)]
    layers: list[GrownLayer] = []
    last = len(matches) - 1
    for j, match in enumerate(matches):
        layer = lchain.layers[j]
        in_idx = len(maps) - 1
        if match.small is None:
            out_idx = in_idx  # an identity layer: its outputs are its inputs
            layers.append(GrownLayer(layer.path, None, layer.kind, in_idx, out_idx,
                                     positions_per_unit(lchain, j, "large network")))
            continue
        s = schain.layers[match.small]
        group_l = positions_per_unit(lchain, j, "large network")
        group_s = positions_per_unit(schain, match.small, "small network")
        if group_l != group_s:
            raise ShapeMismatchError(
                f"layer {layer.path!r} reads {group_l} positions per channel in the large network but {group_s} in the "
                "small one; growth keeps the positions (the same input length and strides)")
        if j == last:
            old_out = _index_list("outputs", outputs, s.out_units, layer.out_units)
            maps.append(_fixed_map(old_out, layer.out_units))
        else:
            maps.append(_hidden_map(s.out_units, layer.out_units, mode == "net2net", gen))
        out_idx = len(maps) - 1
        snorms, lnorms = norm_paths(s), norm_paths(layer)
        if len(snorms) != len(lnorms):
            raise ShapeMismatchError(f"layer {layer.path!r} has {len(lnorms)} normalization layers after it in the large "
                                     f"network, {len(snorms)} in the small one")
        layers.append(GrownLayer(layer.path, s.path, layer.kind, in_idx, out_idx, group_l, tuple(zip(snorms, lnorms))))
    return maps, layers


def _fixed_map(old: tuple[int, ...], size: int) -> UnitMap:
    source = [-1] * size
    for i, pos in enumerate(old):
        source[pos] = i
    return UnitMap(old, tuple(source))


def _hidden_map(small_n: int, large_n: int, copy: bool, gen: torch.Generator) -> UnitMap:
    """Old units first; new units copy a random old unit (Net2WiderNet's g(j)) or are new."""
    extra = large_n - small_n
    if copy and extra > 0:
        picks = torch.randint(0, small_n, (extra,), generator=gen).tolist()
    else:
        picks = [-1] * extra
    return UnitMap(tuple(range(small_n)), tuple(range(small_n)) + tuple(picks))


def _large_shapes(large: Union[nn.Module, BNN], lchain: Chain) -> dict[str, list[int]]:
    if isinstance(large, BNN):
        return {k: list(v) for k, v in large.shapes.items()}
    shapes = {}
    for layer in lchain.layers:
        for attr in ("weight", "bias"):
            t = getattr(layer.module, attr, None)
            if t is not None:
                shapes[f"{layer.path}.{attr}"] = list(t.shape)
    return shapes


def _check_bayesian(chain: Chain, shapes: dict[str, list[int]], what: str) -> None:
    for layer in chain.layers:
        if f"{layer.path}.weight" not in shapes:
            raise ShapeMismatchError(f"the {what} network's layer {layer.path!r} is not Bayesian (kept deterministic?); "
                                     "growth maps the posterior of every Linear/Conv layer")


def _fresh(L: GrownLayer, layer: Layer, maps: list[UnitMap], mode: str, shapes: dict[str, list[int]],
           gen: torch.Generator, dtype: torch.dtype) -> dict[str, Tensor]:
    """The mode's values for every entry of a large layer (entries that continue the small network
    are overwritten by :meth:`GrowthPlan.apply`)."""
    out = {}
    wname, bname = f"{L.path}.weight", f"{L.path}.bias"
    wshape = torch.Size(shapes[wname])
    fan_in = int(wshape[1:].numel())
    bound = uniform_bound(fan_in)

    def uniform(shape: torch.Size) -> Tensor:
        return (torch.rand(shape, generator=gen, dtype=dtype) * 2 - 1) * bound

    if L.inserted:
        if mode == "uniform":
            out[wname] = uniform(wshape)
            if bname in shapes:
                out[bname] = uniform(torch.Size(shapes[bname]))
        else:
            w = torch.zeros(wshape, dtype=dtype)
            centre = tuple(k // 2 for k in wshape[2:])
            idx = torch.arange(wshape[0])
            w[(idx, idx, *centre)] = 1.0
            out[wname] = w
            if bname in shapes:
                out[bname] = torch.zeros(torch.Size(shapes[bname]), dtype=dtype)
        return out
    rows = torch.tensor(maps[L.outputs].source) >= 0  # rows that continue (or copy) a small unit
    draw = uniform(wshape)
    if mode == "uniform":
        out[wname] = draw
    elif mode == "zero":
        out[wname] = torch.zeros(wshape, dtype=dtype)
    else:  # embed, net2net: new rows random, outgoing weights of new inputs into continuing rows 0
        keep = (~rows).reshape(-1, *([1] * (len(wshape) - 1)))
        out[wname] = torch.where(keep, draw, torch.zeros((), dtype=dtype))
    if bname in shapes:
        bdraw = uniform(torch.Size(shapes[bname]))
        out[bname] = torch.zeros_like(bdraw) if mode == "zero" else bdraw
    return out
