"""Graph rules for functions and tensor methods (``x + y``, ``flatten``, ``transpose``, ``mean``, ...).

Each rule maps the tags of an operation's inputs (see :mod:`.graph`) to the tag of its output.
An operation on tagged tensors without a rule raises :class:`~bayesdistill.UnsupportedLayerError`
naming it and the module it runs in; operations on untagged tensors only (shapes, ``arange``,
masks) give untagged outputs.
"""

from __future__ import annotations

import builtins
import math
import operator
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor

from ...errors import UnsupportedLayerError
from .graph import GraphBuilder, Tag, _scope

__all__ = ["op_tag", "flatten_tag", "reshape_tag", "softmax_tag"]

_ELEMENTWISE = {F.relu, torch.relu, F.relu6, F.gelu, F.silu, F.elu, F.leaky_relu, F.hardtanh, F.hardswish, F.mish,
                torch.sigmoid, torch.tanh, F.dropout, operator.neg, torch.neg, torch.abs, F.softplus}
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "float", "double", "half", "to",
                        "type_as", "detach", "neg", "abs", "exp", "log"}
_BINARY = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul, operator.truediv,
           operator.itruediv, torch.add, torch.sub, torch.mul, torch.div}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_POOLS = {F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
          F.avg_pool1d, F.avg_pool2d, F.max_pool1d, F.max_pool2d}
_SHAPES = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_SHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze"}
_REDUCE = {torch.mean, torch.sum, torch.amax}
_REDUCE_METHODS = {"mean", "sum", "amax"}
_SOFTMAX = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}
_NO_TENSOR_METHODS = {"size", "dim"}


def _tags(x: Any) -> list[Tag]:
    out: list[Tag] = []
    if isinstance(x, Tag):
        out.append(x)
    elif isinstance(x, (tuple, list)):
        for v in x:
            out += _tags(v)
    elif isinstance(x, dict):
        for v in x.values():
            out += _tags(v)
    return out


def _describe(n: fx.Node) -> str:
    target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
    what = f"method .{target}()" if n.op == "call_method" else f"{target}()"
    return f"{what} in module {_scope(n)!r}"


def _unsupported(n: fx.Node, why: str = "") -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"alignment cannot follow the channels through {_describe(n)}{': ' + why if why else ''}; "
        "supported: elementwise operations, additions (residual connections), pooling, flatten/reshape that "
        "keep a channel's entries together, transpose/permute, means over other axes"
    )


def op_tag(b: GraphBuilder, n: fx.Node, tags: tuple, vals: tuple, out: Any) -> Any:
    """The tag of the output of a ``call_function`` / ``call_method`` node."""
    (atags, ktags), (avals, kvals) = tags, vals
    target = n.target
    if target is operator.getitem and isinstance(atags[0], tuple):
        return atags[0][avals[1]]
    if not _tags((atags, ktags)):
        return None
    first = atags[0] if atags else None
    is_method = n.op == "call_method"
    if (not is_method and target in _ELEMENTWISE) or (is_method and target in _ELEMENTWISE_METHODS):
        if not isinstance(first, Tag):
            raise _unsupported(n, "the tagged tensor is not the first input")
        return first
    if (not is_method and target in _BINARY) or (is_method and target in _BINARY_METHODS):
        return _binary(b, n, atags, avals, out)
    if not is_method and target in _POOLS:
        if first.axis != 1:
            raise _unsupported(n, "it pools over the channels")
        return first
    if (not is_method and target in _SHAPES) or (is_method and target in _SHAPE_METHODS):
        return reshape_tag(first, avals[0], out, n)
    if target in ("transpose", "permute", "movedim") or target in (torch.transpose, torch.permute, torch.movedim):
        return _move(n, first, avals, kvals, out)
    if (not is_method and target in _REDUCE) or (is_method and target in _REDUCE_METHODS):
        return _reduce(n, first, avals, kvals, out)
    if target in _SOFTMAX or target in ("softmax", "log_softmax"):
        dim = avals[1] if len(avals) > 1 else kvals.get("dim")
        return softmax_tag(b, first, avals[0], dim, _describe(n))
    if target is operator.getitem:
        return _index(n, first, avals[0], avals[1], out)
    if target is builtins.getattr:
        if avals[1] in ("T", "mT"):
            return _move_axis(first, avals[0].dim(), out, lambda a, d: {d - 1: d - 2, d - 2: d - 1}.get(a, a))
        return None
    if is_method and target in _NO_TENSOR_METHODS:
        return None
    raise _unsupported(n)


def _binary(b: GraphBuilder, n: fx.Node, atags: tuple, avals: tuple, out: Tensor) -> Tag:
    """``x + y`` and friends: tagged operands are united (a residual connection); an untagged one
    must broadcast along the channels, or be a parameter of the network (then it joins the group)."""
    tagged = [(t, v) for t, v in zip(atags, avals) if isinstance(t, Tag)]
    t0, v0 = tagged[0]
    pos = v0.dim() - t0.axis  # the channel axis, counted from the end
    group = t0.group
    for t, v in tagged[1:]:
        if v.dim() - t.axis != pos or t.width != t0.width:
            raise _unsupported(n, "its operands hold the channels on different axes")
        group = b.union(group, t.group, _describe(n))
    for node, t, v in zip(n.args, atags, avals):
        if isinstance(t, Tag) or not torch.is_tensor(v) or v.dim() < pos or v.shape[v.dim() - pos] == 1:
            continue
        if isinstance(node, fx.Node) and node.op == "get_attr":
            b.member(group, str(node.target), v.dim() - pos, "own", t0.width)
            continue
        raise _unsupported(n, "an operand of unknown origin varies along the channels")
    return Tag(b.find(group), out.dim() - pos, t0.width)


def flatten_tag(tag: Tag, value: Tensor, start: int, end: int, where: Any) -> Tag:
    """``flatten(start, end)``: the entries after the channel axis join each unit's run."""
    d = value.dim()
    start, end = start % d, end % d
    shape = list(value.shape[:start]) + [math.prod(value.shape[start:end + 1])] + list(value.shape[end + 1:])
    return reshape_tag(tag, value, torch.empty(shape, device="meta"), where)


def reshape_tag(tag: Optional[Tag], value: Tensor, out: Tensor, where: Any) -> Optional[Tag]:
    """A reshape keeps the channels when every unit's entries stay together in one output axis."""
    if tag is None:
        return None
    units = value.shape[tag.axis] // tag.width
    run = tag.width * math.prod(value.shape[tag.axis + 1:])  # entries of one unit (per outer index)
    total = units * run
    for axis in range(out.dim()):
        size = out.shape[axis]
        if math.prod(out.shape[axis:]) == total and size % units == 0 and (size > 1 or units == 1):
            inner = math.prod(out.shape[axis + 1:])
            if run % inner == 0:
                return Tag(tag.group, axis, run // inner)
    place = _describe(where) if isinstance(where, fx.Node) else f"module {where!r}"
    raise UnsupportedLayerError(
        f"alignment cannot follow the channels through the reshape {tuple(value.shape)} -> {tuple(out.shape)} "
        f"({place}): it splits or mixes the entries of a channel"
    )


def softmax_tag(b: GraphBuilder, tag: Tag, value: Tensor, dim: Optional[int], where: str) -> Tag:
    """A softmax over the channels mixes them: the group becomes fixed; over another axis it is kept."""
    if dim is None or dim % value.dim() == tag.axis:
        b.fix(tag.group, f"a softmax over them ({where})")
    return tag


def _move_axis(tag: Tag, ndim: int, out: Tensor, new_axis) -> Tag:
    return Tag(tag.group, new_axis(tag.axis, ndim), tag.width)


def _move(n: fx.Node, tag: Tag, avals: tuple, kvals: dict, out: Tensor) -> Tag:
    d = avals[0].dim()
    target = n.target if isinstance(n.target, str) else n.target.__name__
    if target == "transpose":
        a, c = avals[1] % d, avals[2] % d
        return Tag(tag.group, {a: c, c: a}.get(tag.axis, tag.axis), tag.width)
    if target == "permute":
        dims = avals[1] if len(avals) == 2 and isinstance(avals[1], (tuple, list)) else avals[1:]
        dims = kvals.get("dims", dims)
        return Tag(tag.group, [x % d for x in dims].index(tag.axis), tag.width)
    src, dst = avals[1] % d, avals[2] % d
    order = [i for i in range(d) if i != src]
    order.insert(dst, src)
    return Tag(tag.group, order.index(tag.axis), tag.width)


def _reduce(n: fx.Node, tag: Tag, avals: tuple, kvals: dict, out: Tensor) -> Tag:
    d = avals[0].dim()
    dims = avals[1] if len(avals) > 1 else kvals.get("dim")
    if dims is None:
        raise _unsupported(n, "it reduces every axis, the channels included")
    dims = {x % d for x in ((dims,) if isinstance(dims, int) else dims)}
    if tag.axis in dims:
        raise _unsupported(n, "it reduces over the channels")
    keep = kvals.get("keepdim", avals[2] if len(avals) > 2 else False)
    return Tag(tag.group, tag.axis if keep else tag.axis - sum(1 for x in dims if x < tag.axis), tag.width)


def _index(n: fx.Node, tag: Tag, value: Tensor, index: Any, out: Tensor) -> Tag:
    """``x[:, 0]``, ``x[..., :k]`` on other axes: the channel axis must be taken whole."""
    index = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in index):
        k = index.index(Ellipsis)
        fill = value.dim() - (len(index) - 1 - sum(1 for i in index if i is None))
        index = index[:k] + (slice(None),) * fill + index[k + 1:]
    axis_in, axis_out = 0, 0
    for i in index:
        if i is None:
            axis_out += 1
            continue
        if axis_in == tag.axis:
            if not (isinstance(i, slice) and i == slice(None)):
                raise _unsupported(n, "it selects some of the channels")
            return Tag(tag.group, axis_out, tag.width)
        if isinstance(i, slice):
            axis_out += 1
        elif not isinstance(i, int):
            raise _unsupported(n, "advanced indexing")
        axis_in += 1
    return Tag(tag.group, axis_out + (tag.axis - axis_in), tag.width)
