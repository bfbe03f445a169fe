r"""Networks as computation graphs: which weight slices are coupled, and which blocks are residual.

Alignment on a chain knows that unit j of layer t is row j of U_t and column j of U_{t+1}. In
a network with skip connections one channel is written by several layers (the stem and every
residual block of a stage add into the same tensor) and read by several (the next blocks and
the projection shortcut), so removing it must slice all of them at once. :func:`trace_network`
derives these *channel groups* from the computation graph: the network is traced with
``torch.fx`` (Bayesian layers, normalization layers and the known composite modules are
leaves) and run once on an example input with an interpreter that gives every tensor a tag
(which group its channel axis belongs to, on which axis, and how many consecutive entries one
unit spans after a flatten). Each operation has a rule:

- a Linear/Conv reads its input group (columns of its weight: role ``"in"``) and starts a new
  group (its rows and bias: role ``"out"``); a depthwise convolution, BatchNorm and other
  per-channel layers carry the group on (role ``"own"``);
- ``x + y`` (and ``*``, ``-``, ``/``) between two tagged tensors *unites* their groups: that is
  a residual connection coupling the stream with every block's last layer and the shortcut;
- activations, dropout, pooling, flatten, transpose, mean over positions keep the group (a
  flatten multiplies the entries per unit by the positions per channel);
- LayerNorm, GroupNorm and a softmax over the channels mix all units of a group: the group is
  kept but marked *fixed* (it cannot be narrowed);
- the attention of :class:`~bayesdistill.models.SelfAttention` starts a *heads* group (rows
  ``h*d .. (h+1)*d`` of q, k, v and the same columns of the output projection);
- anything else on a tagged tensor (``torch.cat``, a reshape that moves channels, a matmul)
  raises :class:`~bayesdistill.UnsupportedLayerError` naming the operation and its module.

Module handlers are registered per type (:func:`register_layer_handler`), like the criteria and
removal rules. The same pass finds the *residual blocks* (psi for residual networks): a child
``B`` of an ``nn.Sequential`` / ``nn.ModuleList`` whose output, walking back through additions
and ReLUs only, reaches its own input (the skip connection) and other tensors (the residual
branch). Replacing such a block by the identity is the block with a zero branch (for a ReLU after
the addition: on inputs >= 0, checked on the example).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.fx as fx
from torch import Tensor, nn

from ...errors import UnsupportedLayerError

__all__ = [
    "Member", "Consumer", "GroupGeometry", "BlockGeometry", "GraphGeometry", "NetworkGraph", "trace_network",
    "materialize", "LAYER_HANDLERS", "register_layer_handler", "GraphBuilder", "Tag",
]


# ----------------------------------------------------------------------------- plain data
@dataclass(frozen=True)
class Member:
    """A slice of one tensor that belongs to a channel group.

    Along ``dim`` the tensor is ``segments`` equal parts (3 for a packed q/k/v projection); in
    each part, unit u owns the ``width`` consecutive entries ``u*width .. (u+1)*width`` (a head's
    ``head_dim`` rows, a channel's positions after a flatten). ``tensor`` is the name relative to
    the network (``"layer1.0.conv1.weight"``, ``"layer1.0.bn1.running_mean"``). ``role``:
    ``"out"`` (the unit's own output: rows and bias of the layer that computes it), ``"in"``
    (columns of a layer that reads it), ``"own"`` (per-unit entries of a layer that carries it:
    normalization, depthwise kernels).
    """

    tensor: str
    dim: int
    role: str
    width: int = 1
    segments: int = 1

    def state(self) -> list[Any]:
        return [self.tensor, self.dim, self.role, self.width, self.segments]

    @classmethod
    def from_state(cls, s: list[Any]) -> "Member":
        return cls(str(s[0]), int(s[1]), str(s[2]), int(s[3]), int(s[4]))


@dataclass(frozen=True)
class Consumer:
    """A layer that reads a group: its module ``path``, the ``axis`` of its input holding the
    units (``-1`` for Linear, ``1`` for convolutions) and the entries per unit (``width``)."""

    path: str
    axis: int
    width: int = 1


@dataclass(frozen=True)
class GroupGeometry:
    """One channel group: ``units`` units whose slices ``members`` are removed together.

    ``fixed``: why the group cannot be narrowed (``None`` if it can); ``kind``: ``"channels"``,
    ``"features"`` or ``"heads"``; ``name``: the module that first computes the units.
    """

    index: int
    name: str
    kind: str
    units: int
    members: tuple[Member, ...]
    consumers: tuple[Consumer, ...] = ()
    fixed: Optional[str] = None

    def state(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "kind": self.kind, "units": self.units,
                "members": [m.state() for m in self.members],
                "consumers": [[c.path, c.axis, c.width] for c in self.consumers], "fixed": self.fixed}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> "GroupGeometry":
        return cls(int(d["index"]), str(d["name"]), str(d["kind"]), int(d["units"]),
                   tuple(Member.from_state(m) for m in d["members"]),
                   tuple(Consumer(str(p), int(a), int(w)) for p, a, w in d["consumers"]), d.get("fixed"))


@dataclass(frozen=True)
class BlockGeometry:
    """A child ``path`` (position ``index``) of the container ``stage``; ``removable`` is ``None``
    when the block with a zero residual branch is the identity, else the reason it is not."""

    path: str
    stage: str
    index: int
    removable: Optional[str] = None

    def state(self) -> list[Any]:
        return [self.path, self.stage, self.index, self.removable]


@dataclass(frozen=True)
class GraphGeometry:
    """What replaying a graph plan needs of the teacher: its channel groups, residual blocks and
    tensor shapes (no network)."""

    groups: tuple[GroupGeometry, ...]
    blocks: tuple[BlockGeometry, ...]
    shapes: Mapping[str, tuple[int, ...]]

    kind = "graph"

    def state(self) -> dict[str, Any]:
        return {"kind": "graph", "groups": [g.state() for g in self.groups],
                "blocks": [b.state() for b in self.blocks], "shapes": {k: list(v) for k, v in self.shapes.items()}}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> "GraphGeometry":
        return cls(tuple(GroupGeometry.from_state(g) for g in d["groups"]),
                   tuple(BlockGeometry(str(p), str(s), int(i), r) for p, s, i, r in d["blocks"]),
                   {k: tuple(int(n) for n in v) for k, v in d["shapes"].items()})

    def members_of(self, tensor: str) -> list[tuple[GroupGeometry, Member]]:
        return [(g, m) for g in self.groups for m in g.members if m.tensor == tensor]


@dataclass
class NetworkGraph:
    """The result of :func:`trace_network`: geometry plus what matching a student needs.

    ``leaves``: module path -> module, in order of first execution (the layers alignment edits
    and the parameter-free modules); ``group_of``: ``(tensor, dim)`` -> group index;
    ``readers``: the paths of the layers that read a group, in the order the network runs them.
    """

    geometry: GraphGeometry
    leaves: dict[str, nn.Module]
    group_of: dict[tuple[str, int], int]
    readers: list[str] = field(default_factory=list)

    @property
    def groups(self) -> tuple[GroupGeometry, ...]:
        return self.geometry.groups

    @property
    def blocks(self) -> tuple[BlockGeometry, ...]:
        return self.geometry.blocks


# ----------------------------------------------------------------------------- tags
@dataclass(frozen=True)
class Tag:
    """The channel axis of a tensor: its group (an id of the builder), axis and entries per unit."""

    group: int
    axis: int
    width: int = 1


@dataclass
class _Group:
    units: int
    kind: str
    name: str
    members: list[Member] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)


#: Module handlers: type -> ``fn(builder, path, module, in_tags, in_values, out_value) -> out tag``.
LayerHandler = Callable[["GraphBuilder", str, nn.Module, tuple, tuple, Any], Any]
LAYER_HANDLERS: dict[type, LayerHandler] = {}


def register_layer_handler(*types: type) -> Callable[[LayerHandler], LayerHandler]:
    """Register how alignment's graph tracing treats modules of ``types`` (a leaf of the trace).

    The handler receives the :class:`GraphBuilder`, the module path, the module, the tags and
    values of its inputs and its output value, declares groups, members, consumers and blocks on
    the builder, and returns the output's tag (``None`` for an untagged tensor).
    """

    def decorator(fn: LayerHandler) -> LayerHandler:
        for t in types:
            LAYER_HANDLERS[t] = fn
        return fn

    return decorator


def handler_for(module: nn.Module) -> Optional[LayerHandler]:
    for t in type(module).__mro__:
        if t in LAYER_HANDLERS:
            return LAYER_HANDLERS[t]
    return None


class GraphBuilder:
    """Collects groups (with a union-find for residual connections), members, consumers, blocks."""

    def __init__(self) -> None:
        self.groups: list[_Group] = []
        self.parent: list[int] = []
        self.blocks: dict[str, Optional[str]] = {}
        self.readers: dict[str, None] = {}

    # -- groups --------------------------------------------------------------------------------
    def new_group(self, units: int, kind: str, name: str) -> int:
        self.groups.append(_Group(int(units), kind, name))
        self.parent.append(len(self.parent))
        return len(self.groups) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.groups[ra].units != self.groups[rb].units:
            raise UnsupportedLayerError(
                f"{where} combines {self.groups[ra].units} units of {self.groups[ra].name!r} with "
                f"{self.groups[rb].units} of {self.groups[rb].name!r}; alignment cannot relate them"
            )
        keep, drop = min(ra, rb), max(ra, rb)
        self.parent[drop] = keep
        k, d = self.groups[keep], self.groups[drop]
        k.members += d.members
        k.consumers += d.consumers
        k.fixed += d.fixed
        return keep

    def member(self, g: int, tensor: str, dim: int, role: str, width: int = 1, segments: int = 1) -> None:
        self.groups[self.find(g)].members.append(Member(tensor, dim, role, width, segments))

    def consumer(self, g: int, path: str, axis: int, width: int = 1) -> None:
        self.groups[self.find(g)].consumers.append(Consumer(path, axis, width))
        self.readers.setdefault(path, None)

    def fix(self, g: int, reason: str) -> None:
        self.groups[self.find(g)].fixed.append(reason)

    def units(self, g: int) -> int:
        return self.groups[self.find(g)].units

    def block(self, path: str, removable: Optional[str]) -> None:
        self.blocks[path] = removable

    # -- composite modules --------------------------------------------------------------------
    def call(self, path: str, module: nn.Module, tag: Any, value: Any, out: Any) -> Any:
        """Apply the handler of a child module (for handlers of composite modules)."""
        return apply_handler(self, path, module, (tag,), (value,), out)


def apply_handler(b: GraphBuilder, path: str, module: nn.Module, tags: tuple, values: tuple, out: Any) -> Any:
    fn = handler_for(module)
    if fn is None:
        if _has_tensors(module):
            raise UnsupportedLayerError(
                f"alignment cannot edit module {path!r} ({type(module).__name__}): it has parameters and no "
                "graph rule (bayesdistill.distill.align.graph.register_layer_handler adds one)"
            )
        return _parameter_free(b, path, module, tags, values, out)
    return fn(b, path, module, tags, values, out)


def _has_tensors(module: nn.Module) -> bool:
    return bool(module._parameters) or any(k in module._buffers for k in ("weight", "bias"))


# ----------------------------------------------------------------------------- tracing
_KEEP_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Hardswish,
                 nn.Hardtanh, nn.Mish, nn.Softplus, nn.Identity, nn.modules.dropout._DropoutNd)
_POOL_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                 nn.AvgPool1d, nn.AvgPool2d, nn.MaxPool1d, nn.MaxPool2d)


class _Tracer(fx.Tracer):
    """Leaves: modules with a handler, with their own parameters, or torch's own modules."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return False
        if handler_for(m) is not None or _has_tensors(m):
            return True
        return super().is_leaf_module(m, qualname)


def materialize(net: nn.Module, tensors: Mapping[str, Tensor]) -> nn.Module:
    """A deep copy of ``net`` with the tensors ``name -> value`` written into its modules (the
    Bayesian weights of a :class:`~bayesdistill.BNN`'s network are empty slots until then)."""
    out = copy.deepcopy(net)
    for name, value in tensors.items():
        path, _, attr = name.rpartition(".")
        m = out.get_submodule(path) if path else out
        if attr in m._parameters:
            m._parameters[attr] = nn.Parameter(value.detach().clone(), requires_grad=False)
        else:
            m._buffers[attr] = value.detach().clone()
    return out


def _scope(node: fx.Node) -> str:
    """The module a node runs in (its own target for a module call), for messages."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return re.sub(r"@\d+$", "", list(stack)[-1]) if stack else "<root>"


def _node_modules(node: fx.Node) -> set[str]:
    stack = node.meta.get("nn_module_stack") or {}
    out = {re.sub(r"@\d+$", "", k) for k in stack}
    if node.op == "call_module":
        path = str(node.target)
        out |= {".".join(path.split(".")[: i + 1]) for i in range(path.count(".") + 1)}
    return out


class _Propagation(fx.Interpreter):
    """Runs the traced network on the example and tags every tensor (see the module docstring)."""

    def __init__(self, gm: fx.GraphModule, builder: GraphBuilder):
        super().__init__(gm)
        self.b, self.tags, self.values = builder, {}, {}
        self.leaves: dict[str, nn.Module] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        tags = fx.node.map_arg((n.args, n.kwargs), lambda a: self.tags.get(a))
        vals = fx.node.map_arg((n.args, n.kwargs), lambda a: self.env[a])
        if n.op == "call_module":
            module = self.module.get_submodule(str(n.target))
            self.leaves.setdefault(str(n.target), module)
            self.tags[n] = apply_handler(self.b, str(n.target), module, tags[0], vals[0], out)
        elif n.op in ("call_function", "call_method"):
            self.tags[n] = op_tag(self.b, n, tags, vals, out)
        else:
            self.tags[n] = None
        if torch.is_tensor(out):
            self.values[n] = out
        return out


def trace_network(net: nn.Module, example: Any, what: str = "network") -> NetworkGraph:
    """The channel groups and residual blocks of ``net`` (a runnable module: weights filled in,
    see :func:`materialize`), from one forward pass on ``example`` (an input batch, or a tuple).

    Raises :class:`~bayesdistill.UnsupportedLayerError` naming the module or operation that the
    graph rules do not cover, or when ``net`` cannot be traced by ``torch.fx``.
    """
    try:
        graph = _Tracer().trace(net)
    except Exception as err:  # fx raises many types for untraceable control flow
        raise UnsupportedLayerError(
            f"the {what} ({type(net).__name__}) cannot be traced by torch.fx for alignment "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); control flow that depends "
            "on the inputs must live in a module with a graph rule (register_layer_handler)"
        ) from err
    gm = fx.GraphModule(net, graph)
    builder = GraphBuilder()
    prop = _Propagation(gm, builder)
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        with torch.no_grad(), _no_mha_fastpath():
            prop.run(*(example if isinstance(example, tuple) else (example,)))
    finally:
        for m, mode in modes:
            m.training = mode
    output = next(n for n in gm.graph.nodes if n.op == "output")
    for tag in _flat_tags(fx.node.map_arg(output.args, lambda a: prop.tags.get(a))):
        builder.fix(tag.group, "they are the network output")
    find_blocks(builder, net, gm, prop)
    return _finish(builder, net, prop.leaves, what)


def _flat_tags(x: Any) -> list[Tag]:
    if isinstance(x, Tag):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _flat_tags(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _flat_tags(v)]
    return []


class _no_mha_fastpath:
    """Run torch's Transformer layers on their ordinary path (hooks on their children fire)."""

    def __enter__(self):
        mha = getattr(torch.backends, "mha", None)
        self.prev = mha.get_fastpath_enabled() if mha is not None else None
        if mha is not None:
            mha.set_fastpath_enabled(False)
        return self

    def __exit__(self, *exc):
        if self.prev is not None:
            torch.backends.mha.set_fastpath_enabled(self.prev)


no_mha_fastpath = _no_mha_fastpath


def _finish(b: GraphBuilder, net: nn.Module, leaves: dict[str, nn.Module], what: str) -> NetworkGraph:
    """Resolve the union-find into numbered groups and check every member against its tensor."""
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    shapes.update({f"{p}.{a}" if p else a: tuple(t.shape) for p, m in net.named_modules()
                   for a, t in m._buffers.items() if t is not None})
    roots = sorted({b.find(i) for i in range(len(b.groups))})
    groups, group_of = [], {}
    for root in roots:
        g = b.groups[root]
        members = tuple(dict.fromkeys(g.members))
        if not members:
            continue
        index = len(groups)
        for m in members:
            _check_member(m, g, shapes, what)
            if group_of.setdefault((m.tensor, m.dim), index) != index:
                raise UnsupportedLayerError(
                    f"{what} tensor {m.tensor!r} (dim {m.dim}) belongs to two channel groups; alignment cannot slice it"
                )
        fixed = "; ".join(dict.fromkeys(g.fixed)) or None
        groups.append(GroupGeometry(index, g.name, g.kind, g.units, members, tuple(dict.fromkeys(g.consumers)), fixed))
    blocks = tuple(_block_geometry(p, r) for p, r in b.blocks.items())
    return NetworkGraph(GraphGeometry(tuple(groups), blocks, shapes), leaves, group_of, list(b.readers))


def _check_member(m: Member, g: _Group, shapes: Mapping[str, tuple[int, ...]], what: str) -> None:
    shape = shapes.get(m.tensor)
    if shape is None:
        raise UnsupportedLayerError(f"{what}: the graph rules name a tensor {m.tensor!r} the network does not have")
    if shape[m.dim] != m.segments * g.units * m.width:
        raise UnsupportedLayerError(
            f"{what} tensor {m.tensor!r} has {shape[m.dim]} entries along dim {m.dim}, but the channel group "
            f"{g.name!r} implies {m.segments} x {g.units} units x {m.width}; alignment cannot slice it"
        )


def _block_geometry(path: str, removable: Optional[str]) -> BlockGeometry:
    stage, _, index = path.rpartition(".")
    return BlockGeometry(path, stage, int(index), removable)


# ----------------------------------------------------------------------------- parameter-free leaves
def _parameter_free(b: GraphBuilder, path: str, module: nn.Module, tags: tuple, values: tuple, out: Any) -> Any:
    tag = tags[0] if tags else None
    if tag is None or isinstance(module, _KEEP_MODULES):
        return tag
    if isinstance(module, _POOL_MODULES):
        if tag.axis != 1:
            raise UnsupportedLayerError(f"pooling {path!r} ({type(module).__name__}) pools over the channels")
        return tag
    if isinstance(module, nn.Flatten):
        return flatten_tag(tag, values[0], module.start_dim, module.end_dim, path)
    if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
        return softmax_tag(b, tag, values[0], module.dim, path)
    raise UnsupportedLayerError(
        f"alignment has no graph rule for module {path!r} ({type(module).__name__}) on a tensor whose "
        "channels it edits; register one with bayesdistill.distill.align.graph.register_layer_handler"
    )


# the rules for functions and layers and the block finder use the types above
from . import graph_layers  # noqa: E402,F401  (registers the layer handlers)
from .graph_blocks import find_blocks  # noqa: E402
from .graph_ops import flatten_tag, op_tag, softmax_tag  # noqa: E402
