"""Unit-scoring criteria: which units of a layer alignment removes first.

A criterion is a function ``UnitContext -> scores [units]`` (higher = keep). Alignment removes
the lowest-scoring ``step`` fraction of a layer's excess units, re-scores the rest and repeats.
The built-in criteria are registered by name:

- ``"random"``: uniform random scores (the paper's experiments), seeded by ``bd.align(seed=)``;
- ``"snr"``: mean |mu| / sigma of the unit's incoming weights, bias and outgoing weights;
- ``"data"`` (needs probe data): the energy of the unit's contribution to the next layer's
  pre-activations on the probe inputs (centred when the next layer is re-fitted, since the
  re-fit absorbs a removed unit's mean into the next bias); on a graph, summed over every layer
  that reads the unit.

On the graph path (residual networks, Transformers) a "layer" is a channel group: all the
slices removed together (:mod:`.graph`); its context stacks the incoming weights of every layer
that computes the units and the outgoing weights of every layer that reads them.

Residual blocks (and Transformer layers) that alignment removes are chosen by a *block*
criterion (``BlockContext -> score``, lower goes first), registered the same way with
:func:`register_block_criterion` under the same names: ``"snr"`` (mean |mu| / sigma of the
block's weights), ``"data"`` (the energy of the block's residual branch relative to its input on
the probe data, ``||f(x) - x||^2 / ||x||^2``) and ``"random"``.

A new criterion is one function decorated with :func:`register_criterion`; ``bd.align`` then
accepts its name (a callable can also be passed directly as ``criterion=``)::

    @register_criterion("magnitude")
    def magnitude(ctx):
        return ctx.w_loc.reshape(ctx.units, -1).abs().mean(1)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import DataError

__all__ = ["UnitContext", "Criterion", "CRITERIA", "register_criterion", "resolve_criterion", "criterion_needs_probe",
           "BlockContext", "BlockCriterion", "BLOCK_CRITERIA", "register_block_criterion", "resolve_block_criterion"]


@dataclass
class UnitContext:
    """What a unit-scoring criterion sees for the units of one layer (current positions).

    Attributes:
        layer: teacher module path of the layer being pruned.
        round: pruning round (0-based) within this layer.
        w_loc, w_scale: incoming weights, ``[units, ...]`` (rows of U_t, kernels for convs).
        b_loc, b_scale: bias ``[units]`` or ``None``.
        out_loc, out_scale: outgoing weights of the next layer grouped per unit,
            ``[next_out, units, g]`` (g = positions per channel after a flatten, kernel size of a
            next convolution, 1 for Linear -> Linear).
        activations: the units' activations on the probe data ``[N, units, ...]`` (after the
            layer's activation/normalization), or ``None`` without probe data.
        next_layer: the next layer's module (for criteria that need its geometry).
        generator: a seeded ``torch.Generator`` for random criteria.
        compensated: whether the next layer is re-fitted after the removal (``compensation``
            with probe data): a removed unit's mean output is then absorbed by the next bias,
            otherwise its whole contribution is lost.
        consumers: on a graph, for a group read by several layers: one context per reading
            layer (its ``out_loc``, ``activations``, ``next_layer``); then ``out_loc`` stacks all
            of them as ``[1, units, ...]`` and ``activations`` / ``next_layer`` are the first's.
            Empty for a chain (and a group read by one layer). On a graph, ``activations`` are
            given only to criteria registered with ``needs_probe=True``.
    """

    layer: str
    round: int
    w_loc: Tensor
    w_scale: Tensor
    b_loc: Optional[Tensor]
    b_scale: Optional[Tensor]
    out_loc: Tensor
    out_scale: Tensor
    activations: Optional[Tensor]
    next_layer: Optional[nn.Module]
    generator: torch.Generator
    compensated: bool = True
    consumers: tuple["UnitContext", ...] = ()

    @property
    def units(self) -> int:
        return self.w_loc.shape[0]


Criterion = Callable[[UnitContext], Tensor]

#: Registered criteria: name -> function ``UnitContext -> scores [units]`` (higher = keep).
CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, *, needs_probe: bool = False) -> Callable[[Criterion], Criterion]:
    """Register a unit-scoring function under ``name`` (``bd.align(criterion=name)``).

    Args:
        name: the criterion's name; a name already taken by another function raises ``ValueError``.
        needs_probe: the criterion reads ``ctx.activations``; :func:`~bayesdistill.align` then
            refuses to run it without probe data (a ``DataError`` naming the criterion) instead
            of calling it with ``activations=None``. Stored as the function's ``needs_probe``
            attribute (a callable passed directly to ``align`` may set it too).

    Returns:
        A decorator that registers the function and returns it unchanged.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a criterion name must be a non-empty string, got {name!r}")

    def decorator(fn: Criterion) -> Criterion:
        if not callable(fn):
            raise TypeError(f"register_criterion({name!r}) decorates a callable, got {type(fn).__name__}")
        if name in CRITERIA and CRITERIA[name] is not fn:
            raise ValueError(f"criterion {name!r} is already registered ({CRITERIA[name]!r})")
        fn.needs_probe = bool(needs_probe)
        CRITERIA[name] = fn
        return fn

    return decorator


def resolve_criterion(criterion: Union[str, Criterion]) -> tuple[Criterion, str]:
    """The scoring function and the name the plan records for ``criterion`` (a name or a callable)."""
    if isinstance(criterion, str):
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {sorted(CRITERIA)} or a callable, got {criterion!r}")
        return CRITERIA[criterion], criterion
    if callable(criterion):
        return criterion, getattr(criterion, "__name__", "callable")
    raise TypeError(f"criterion must be a name in {sorted(CRITERIA)} or a callable, got {type(criterion).__name__}")


def criterion_needs_probe(criterion: Any) -> bool:
    """Whether a criterion (a registered name or a callable) needs probe data."""
    fn = CRITERIA.get(criterion) if isinstance(criterion, str) else criterion
    return bool(getattr(fn, "needs_probe", False))


# ----------------------------------------------------------------------------- built-in criteria
@register_criterion("random")
def random_scores(ctx: UnitContext) -> Tensor:
    """Uniform random scores (the paper's experiments), from ``ctx.generator``."""
    return torch.rand(ctx.units, generator=ctx.generator).to(ctx.w_loc.device)


@register_criterion("snr")
def snr_scores(ctx: UnitContext) -> Tensor:
    """Mean |mu| / sigma over the unit's incoming weights, its bias and its outgoing weights."""
    parts = [(ctx.w_loc.abs() / ctx.w_scale).reshape(ctx.units, -1)]
    if ctx.b_loc is not None:
        parts.append((ctx.b_loc.abs() / ctx.b_scale).reshape(ctx.units, -1))
    out = (ctx.out_loc.abs() / ctx.out_scale).transpose(0, 1).reshape(ctx.units, -1)
    parts.append(out)
    return torch.cat(parts, dim=1).mean(dim=1)


@register_criterion("data", needs_probe=True)
def data_scores(ctx: UnitContext) -> Tensor:
    """The energy of each unit's (centred, when compensated) contribution to the next layer on the probe data."""
    if ctx.consumers:
        return sum(data_scores(c) for c in ctx.consumers)
    if ctx.activations is None:
        raise DataError('criterion "data" needs probe data: pass probe= to bd.align (inputs of the teacher)')
    a = ctx.activations
    if ctx.compensated:  # the re-fit absorbs a removed unit's mean into the next bias
        a = a - a.mean(dim=0, keepdim=True)
    energies = [_block_energy(ctx, a, slice(start, start + 16)) for start in range(0, ctx.units, 16)]
    return torch.cat(energies)


def _block_energy(ctx: UnitContext, a: Tensor, sl: slice, max_elements: int = 1 << 24) -> Tensor:
    """Mean squared contribution to the next layer's pre-activations of the units ``sl``.

    For a convolution the per-unit outputs ``[n, units, next_out, positions]`` are computed for
    as many examples at a time as keep them under ``max_elements`` entries (memory)."""
    nxt = ctx.next_layer
    if isinstance(nxt, nn.Linear):
        # contribution of unit j: A_j [N, g] @ W[:, j, :]^T
        contrib = torch.einsum("njg,ojg->njo", a[:, sl].reshape(a.shape[0], -1, ctx.out_loc.shape[2]), ctx.out_loc[:, sl])
        return contrib.square().sum(-1).mean(0)
    w = ctx.out_loc[:, sl]  # [O, c, k...] flattened to [O, c, g]
    c = w.shape[1]
    kernel = nxt.kernel_size
    wk = w.reshape(w.shape[0], c, *kernel).transpose(0, 1).reshape(c * w.shape[0], 1, *kernel)
    conv = F.conv1d if isinstance(nxt, nn.Conv1d) else F.conv2d
    per_example = c * w.shape[0] * max(1, a[0, 0].numel())
    step = max(1, max_elements // per_example)
    total = torch.zeros(c, dtype=a.dtype, device=a.device)
    for i in range(0, a.shape[0], step):
        out = conv(a[i:i + step, sl], wk, None, nxt.stride, nxt.padding, nxt.dilation, groups=c)
        total += out.reshape(out.shape[0], c, w.shape[0], -1).square().sum((0, 2, 3))
    return total / a.shape[0]


# ----------------------------------------------------------------------------- block criteria
@dataclass
class BlockContext:
    """What a block criterion sees of one removable residual block (or Transformer layer).

    Attributes:
        path: the block's module path in the teacher; ``stage``: its container's.
        locs, scales: the posterior means and standard deviations of the block's Bayesian
            tensors, name -> tensor.
        contribution: with probe data, ``||f(x) - x||^2 / ||x||^2`` over the probe inputs: how much
            the block changes its input (0 for a block with a zero branch); else ``None``.
        generator: a seeded ``torch.Generator`` for random criteria.
    """

    path: str
    stage: str
    locs: dict[str, Tensor]
    scales: dict[str, Tensor]
    contribution: Optional[float]
    generator: torch.Generator


BlockCriterion = Callable[[BlockContext], float]

#: Registered block criteria: name -> function ``BlockContext -> score`` (lower = removed first).
BLOCK_CRITERIA: dict[str, BlockCriterion] = {}


def register_block_criterion(name: str, *, needs_probe: bool = False) -> Callable[[BlockCriterion], BlockCriterion]:
    """Register a block-scoring function under ``name`` (``bd.align(block_criterion=name)``; by
    default ``bd.align`` uses the block criterion named like its unit ``criterion``, else ``"snr"``).
    ``needs_probe``: it reads ``ctx.contribution``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a block criterion name must be a non-empty string, got {name!r}")

    def decorator(fn: BlockCriterion) -> BlockCriterion:
        if not callable(fn):
            raise TypeError(f"register_block_criterion({name!r}) decorates a callable, got {type(fn).__name__}")
        if name in BLOCK_CRITERIA and BLOCK_CRITERIA[name] is not fn:
            raise ValueError(f"block criterion {name!r} is already registered ({BLOCK_CRITERIA[name]!r})")
        fn.needs_probe = bool(needs_probe)
        BLOCK_CRITERIA[name] = fn
        return fn

    return decorator


def resolve_block_criterion(block_criterion: Any, criterion_name: str) -> tuple[BlockCriterion, str]:
    """The block criterion for ``block_criterion`` (a name, a callable, or ``None``: the one named like
    the unit criterion, else ``"snr"``)."""
    if block_criterion is None:
        block_criterion = criterion_name if criterion_name in BLOCK_CRITERIA else "snr"
    if isinstance(block_criterion, str):
        if block_criterion not in BLOCK_CRITERIA:
            raise ValueError(f"block_criterion must be one of {sorted(BLOCK_CRITERIA)} or a callable, got {block_criterion!r}")
        return BLOCK_CRITERIA[block_criterion], block_criterion
    if callable(block_criterion):
        return block_criterion, getattr(block_criterion, "__name__", "callable")
    raise TypeError(f"block_criterion must be a name in {sorted(BLOCK_CRITERIA)} or a callable, got {type(block_criterion).__name__}")


@register_block_criterion("random")
def random_block(ctx: BlockContext) -> float:
    """A uniform random score from ``ctx.generator``."""
    return float(torch.rand((), generator=ctx.generator))


@register_block_criterion("snr")
def snr_block(ctx: BlockContext) -> float:
    """Mean |mu| / sigma over all Bayesian weights of the block."""
    ratios = [(ctx.locs[k].abs() / ctx.scales[k]).reshape(-1) for k in ctx.locs]
    return float(torch.cat(ratios).mean()) if ratios else 0.0


@register_block_criterion("data", needs_probe=True)
def data_block(ctx: BlockContext) -> float:
    """``||f(x) - x||^2 / ||x||^2`` of the block on the probe data."""
    if ctx.contribution is None:
        raise DataError('block criterion "data" needs probe data: pass probe= to bd.align (inputs of the teacher)')
    return float(ctx.contribution)
