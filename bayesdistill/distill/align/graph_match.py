"""Whether a student is reachable from a teacher on the graph path, and how they correspond.

The student defines the target. Alignment on graphs removes units of channel groups (phi) and
whole residual blocks (psi), nothing else, so the student must be the teacher with

- fewer blocks in some containers (``nn.Sequential`` / ``nn.ModuleList`` "stages"): the teacher
  stage ``layer1`` with children ``0 1 2`` and the student's with ``0 1``: one removable block of
  the teacher's goes, the others keep their order (teacher ``layer1.2`` becomes student ``layer1.1``
  if ``layer1.1`` was removed);
- the same layers otherwise (same module paths after that renumbering, same types, kernel sizes,
  strides, paddings, head sizes, normalization settings), executed in the same order;
- channel groups coupled the same way, each no wider than the teacher's, and the fixed ones
  (network input/output, LayerNorm-normalized, packed attention) exactly as wide.

:func:`stage_removals` counts the blocks each stage loses; :func:`match_graphs` checks the rest and
returns a :class:`GraphMatch` (the renaming and every group's student width). Both raise
:class:`~bayesdistill.ShapeMismatchError` naming the modules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ...errors import ShapeMismatchError
from ...models import SelfAttention
from .graph import GroupGeometry, NetworkGraph

__all__ = ["GraphMatch", "stage_removals", "match_graphs", "stage_sizes", "check_stage_blocks", "last_removable"]


def stage_sizes(net: nn.Module) -> dict[str, int]:
    """Container path -> number of children, for every ``nn.Sequential`` / ``nn.ModuleList``."""
    return {p: len(m) for p, m in net.named_modules() if isinstance(m, (nn.Sequential, nn.ModuleList))}


def stage_removals(teacher: nn.Module, student: nn.Module) -> dict[str, int]:
    """Per teacher container, how many children the student lacks (only the non-zero ones)."""
    t, s = stage_sizes(teacher), stage_sizes(student)
    out = {}
    for path, n in t.items():
        if path not in s:
            continue  # a container of a removed block, or a structure difference the leaves will name
        if s[path] > n:
            raise ShapeMismatchError(
                f"student container {path or '<root>'!r} has {s[path]} children but the teacher's only {n}: a student "
                "cannot be deeper"
            )
        if s[path] < n:
            out[path] = n - s[path]
    return out


def check_stage_blocks(g: NetworkGraph, needs: dict[str, int]) -> None:
    """Raise unless every stage has as many removable blocks as the student lacks there."""
    for stage, n in needs.items():
        removable = [b for b in g.blocks if b.stage == stage and b.removable is None]
        if len(removable) < n:
            why = "; ".join(f"{b.path!r}: {b.removable}" for b in g.blocks if b.stage == stage and b.removable)
            raise ShapeMismatchError(
                f"the student's {stage!r} has {n} fewer blocks than the teacher's, but only {len(removable)} of the "
                f"teacher's blocks there can be removed ({why or 'it holds no residual blocks'})"
            )


def last_removable(g: NetworkGraph, needs: dict[str, int]) -> list[str]:
    """The last ``needs[stage]`` removable blocks of each stage (the structure check's canonical choice)."""
    out = []
    for stage, n in needs.items():
        blocks = [b.path for b in g.blocks if b.stage == stage and b.removable is None]
        out += blocks[len(blocks) - n:]
    return out


@dataclass
class GraphMatch:
    """How teacher and student correspond: ``modules`` (teacher module path -> student's, for the
    modules kept), ``tensors`` (teacher tensor name -> student's), ``targets`` (teacher group index ->
    student units), ``student_group`` (teacher group index -> student group name)."""

    modules: dict[str, str]
    tensors: dict[str, str]
    targets: dict[int, int]
    student_group: dict[int, str]


def _renamer(removed: Iterable[str]) -> Any:
    """Teacher module path -> student module path after renumbering the stages of the removed blocks."""
    by_stage: dict[str, set[int]] = {}
    for path in removed:
        stage, _, index = path.rpartition(".")
        by_stage.setdefault(stage, set()).add(int(index))
    stages = sorted(by_stage, key=lambda s: -s.count("."))  # inner stages first (teacher coordinates)

    def rename(path: str) -> str:
        for stage in stages:
            prefix = f"{stage}." if stage else ""
            if not path.startswith(prefix):
                continue
            head, _, rest = path[len(prefix):].partition(".")
            if head.isdigit():
                new = int(head) - sum(1 for i in by_stage[stage] if i < int(head))
                path = f"{prefix}{new}" + (f".{rest}" if rest else "")
        return path

    return rename


def _inside(path: str, removed: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in removed)


def _signature(m: nn.Module) -> tuple:
    """What must agree between a teacher layer and its student layer (sizes aside)."""
    if isinstance(m, nn.modules.conv._ConvNd):
        depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        return (type(m).__name__, m.kernel_size, m.stride, m.padding, m.dilation, m.padding_mode, depthwise,
                m.bias is not None or "bias" in m._buffers)
    if isinstance(m, nn.Linear):
        return (type(m).__name__, m.bias is not None or "bias" in m._buffers)
    if isinstance(m, SelfAttention):
        return (type(m).__name__, m.head_dim)
    if isinstance(m, nn.MultiheadAttention):
        return (type(m).__name__, m.num_heads, m.batch_first)
    if isinstance(m, nn.TransformerEncoderLayer):
        return (type(m).__name__, m.norm_first, m.self_attn.num_heads, repr(m.activation))
    if isinstance(m, nn.Embedding):
        return (type(m).__name__, m.num_embeddings, m.padding_idx)
    if isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
        return (type(m).__name__, getattr(m, "affine", getattr(m, "elementwise_affine", None)))
    if isinstance(m, nn.TransformerEncoder):
        return (type(m).__name__, m.norm is not None)
    return (type(m).__name__, m.extra_repr())


def _match_modules(t: NetworkGraph, s: NetworkGraph, removed: list[str], rename: Any) -> dict[str, str]:
    kept = [p for p in t.leaves if not _inside(p, removed)]
    mapped = [rename(p) for p in kept]
    s_paths = list(s.leaves)
    missing = [p for p in s_paths if p not in set(mapped)]
    if missing:
        raise ShapeMismatchError(
            f"student module {missing[0]!r} ({type(s.leaves[missing[0]]).__name__}) has no counterpart in the teacher"
            + (f" with blocks {removed} removed" if removed else "") + "; alignment maps a student onto the teacher's "
            "module tree (same paths, fewer blocks per stage, fewer units)"
        )
    extra = [p for p, q in zip(kept, mapped) if q not in s.leaves]
    if extra:
        raise ShapeMismatchError(
            f"teacher module {extra[0]!r} ({type(t.leaves[extra[0]]).__name__}) is kept but the student has no "
            f"module {rename(extra[0])!r}"
        )
    if mapped != s_paths:
        first = next(i for i, (a, b) in enumerate(zip(mapped, s_paths)) if a != b)
        raise ShapeMismatchError(f"teacher and student run their modules in another order: {mapped[first]!r} vs {s_paths[first]!r}")
    for tp, sp in zip(kept, mapped):
        a, b = _signature(t.leaves[tp]), _signature(s.leaves[sp])
        if a != b:
            raise ShapeMismatchError(f"teacher module {tp!r} and student module {sp!r} differ: {a} vs {b}")
    return dict(zip(kept, mapped))


def _member_key(m: Any, tensors: dict[str, str]) -> tuple:
    return (tensors[m.tensor], m.dim, m.role, m.width, m.segments)


def _match_group(g: GroupGeometry, t: NetworkGraph, s: NetworkGraph, tensors: dict[str, str], removed: list[str]) -> Any:
    """The student group of teacher group ``g``, or ``None`` when ``g`` lies inside removed blocks."""
    members = {_member_key(m, tensors) for m in g.members if not _inside(m.tensor, removed)}
    if not members:
        return None
    first = next(iter(sorted(members)))
    index = s.group_of.get((first[0], first[1]))
    if index is None:
        raise ShapeMismatchError(f"the student has no tensor {first[0]!r} (dim {first[1]}) of the teacher group {g.name!r}")
    sg = s.groups[index]
    theirs = {(m.tensor, m.dim, m.role, m.width, m.segments) for m in sg.members}
    if theirs != members:
        diff = sorted(members ^ theirs)[:3]
        raise ShapeMismatchError(
            f"the student couples the channels of {sg.name!r} differently from the teacher's {g.name!r} "
            f"(differing slices: {diff})"
        )
    if sg.units > g.units:
        raise ShapeMismatchError(
            f"student {sg.kind} {sg.name!r} has {sg.units} units but the teacher's {g.name!r} has {g.units}: the student "
            "must not be wider than the teacher"
        )
    if sg.units != g.units and g.fixed:
        raise ShapeMismatchError(
            f"student {sg.kind} {sg.name!r} has {sg.units} units but the teacher's {g.name!r} has {g.units}, and they "
            f"cannot be narrowed: {g.fixed}"
        )
    return sg


def match_graphs(t: NetworkGraph, s: NetworkGraph, removed: list[str]) -> GraphMatch:
    """Check that ``s`` is ``t`` with the blocks ``removed`` and narrower groups; the correspondence."""
    rename = _renamer(removed)
    modules = _match_modules(t, s, removed, rename)
    tensors = {}
    for name in t.geometry.shapes:
        path, _, attr = name.rpartition(".")
        if not _inside(name, removed):
            tensors[name] = (rename(path) + "." if path else "") + attr
    absent = [n for n in tensors.values() if n not in s.geometry.shapes]
    if absent:
        raise ShapeMismatchError(f"the student has no tensor {absent[0]!r}, which the teacher's {next(k for k, v in tensors.items() if v == absent[0])!r} maps to")
    extra = sorted(set(s.geometry.shapes) - set(tensors.values()))
    if extra:
        raise ShapeMismatchError(f"the student tensor {extra[0]!r} has no counterpart in the teacher")
    targets, names, seen = {}, {}, set()
    for g in t.groups:
        sg = _match_group(g, t, s, tensors, removed)
        if sg is not None:
            targets[g.index], names[g.index] = sg.units, sg.name
            seen.add(sg.index)
    unmatched = [sg for sg in s.groups if sg.index not in seen]
    if unmatched:
        raise ShapeMismatchError(f"the student's {unmatched[0].kind} {unmatched[0].name!r} has no counterpart in the teacher")
    _check_free_dims(t, s, tensors, removed)
    return GraphMatch(modules, tensors, targets, names)


def _check_free_dims(t: NetworkGraph, s: NetworkGraph, tensors: dict[str, str], removed: list[str]) -> None:
    """Dimensions that belong to no group (kernels, vocabularies) must be the same."""
    for name, new in tensors.items():
        a, b = t.geometry.shapes[name], s.geometry.shapes[new]
        grouped = {d for (n, d) in t.group_of if n == name}
        if len(a) != len(b) or any(x != y for d, (x, y) in enumerate(zip(a, b)) if d not in grouped):
            raise ShapeMismatchError(
                f"teacher tensor {name!r} {tuple(a)} and student tensor {new!r} {tuple(b)} differ in a dimension "
                "alignment does not narrow"
            )
