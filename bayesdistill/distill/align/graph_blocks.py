"""Residual blocks in a traced graph: which children of a container are removable (psi).

A child ``B`` of an ``nn.Sequential`` / ``nn.ModuleList`` is a residual block when, walking back
from its output through additions, ReLUs, identities and dropouts only (no layer with weights),
one reaches its own input (the skip connection) and at least one other tensor (the residual
branch). With every branch tensor zero the block computes ``x`` (after a ReLU: ``relu(x) = x``
for ``x >= 0``, checked on the example input), so alignment removes it by replacing it with the
identity. Otherwise the block is recorded with the reason it is not removable.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .graph import GraphBuilder, _node_modules

__all__ = ["find_blocks"]

_ADDS = {operator.add, operator.iadd, torch.add}
_RELUS = {F.relu, torch.relu}
_THROUGH = (nn.Identity, nn.modules.dropout._DropoutNd)


def find_blocks(b: GraphBuilder, net: nn.Module, gm: fx.GraphModule, prop: Any) -> None:
    """Record every non-leaf child of a container of ``net`` (traced as ``gm``) as a block,
    removable or with the reason why not."""
    containers = {p for p, m in net.named_modules() if isinstance(m, (nn.Sequential, nn.ModuleList))}
    by_module: dict[str, set[fx.Node]] = defaultdict(set)
    for n in gm.graph.nodes:
        if n.op in ("call_module", "call_function", "call_method"):
            for p in _node_modules(n):
                by_module[p].add(n)
    for path, _ in net.named_modules():
        parent, _, name = path.rpartition(".")
        if not path or parent not in containers or not name.isdigit() or path in prop.leaves or path in b.blocks:
            continue
        nodes = by_module.get(path)
        if nodes:
            b.block(path, _why_not_removable(gm, nodes, prop))


def _why_not_removable(gm: fx.GraphModule, nodes: set[fx.Node], prop: Any) -> Optional[str]:
    inputs = {a for n in nodes for a in n.all_input_nodes
              if a not in nodes and a in prop.values and a.op != "get_attr"}
    if len(inputs) != 1:
        return f"it reads {len(inputs)} tensors from outside (a residual block reads one)"
    x = next(iter(inputs))
    outs = [n for n in nodes if any(u not in nodes for u in n.users)]
    if len(outs) != 1:
        return f"{len(outs)} of its tensors are read outside it"
    y = outs[0]
    terminals: list[fx.Node] = []
    relu = _walk(gm, y, x, nodes, terminals)
    if x not in terminals:
        names = ", ".join(sorted({_name(t) for t in terminals}))
        return f"its output reaches its input only through layers ({names}): the skip connection is not the identity"
    if len(terminals) == 1:
        return "it has no residual branch (its output is its input)"
    if prop.values[x].shape != prop.values[y].shape:
        return "its output has another shape than its input"
    if relu and bool((prop.values[x] < 0).any()):
        return "a ReLU follows the residual addition and the block's input takes negative values"
    return None


def _walk(gm: fx.GraphModule, n: fx.Node, x: fx.Node, nodes: set[fx.Node], out: list[fx.Node]) -> bool:
    """Collect the tensors reached from ``n`` through additions, ReLUs and identities; True if a ReLU was passed."""
    if n is x or n not in nodes:
        out.append(n)
        return False
    kind = _kind(gm, n)
    if kind is None:
        out.append(n)
        return False
    args = [a for a in n.args if isinstance(a, fx.Node)] if kind == "add" else [n.args[0]]
    relu = kind == "relu"
    for a in args:
        relu = _walk(gm, a, x, nodes, out) or relu
    return relu


def _kind(gm: fx.GraphModule, n: fx.Node) -> Optional[str]:
    if (n.op == "call_function" and n.target in _ADDS) or (n.op == "call_method" and n.target in ("add", "add_")):
        return "add"
    if (n.op == "call_function" and n.target in _RELUS) or (n.op == "call_method" and n.target in ("relu", "relu_")):
        return "relu"
    if n.op == "call_module":
        m = gm.get_submodule(str(n.target))
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, _THROUGH):
            return "through"
    if n.op == "call_function" and n.target is F.dropout:
        return "through"
    return None


def _name(n: fx.Node) -> str:
    return str(n.target) if n.op == "call_module" else n.name
