r"""The posterior editor of the graph path: a teacher posterior, its kept units per channel group,
its removed blocks.

:class:`GraphEditor` keeps every tensor in the teacher's shapes and records, per channel group
(:class:`~.graph.GroupGeometry`), the original indices of the units still kept, and the residual
blocks removed. Removing units (phi) and blocks (psi) is bookkeeping; :meth:`~GraphEditor.current`
slices a tensor along every group it belongs to, and :meth:`~GraphEditor.export` returns the
sliced, renamed result as a :class:`MeanFieldPosterior` over the student's parameter names. The
editor needs no network, so a plan replays on another posterior of the teacher from its geometry.

:func:`masked` evaluates the edited teacher with the teacher's own modules: forward pre-hooks
zero the removed units at the input of every layer that reads them (which is the same function
as the network without those units: they reach nothing else) and forward hooks replace every
removed block by the identity. Compensation re-fits change the editor's means (columns of
removed units are zero), which ``masked`` uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ...bnn.posterior import MeanFieldPosterior, ParamInfo
from ...errors import ShapeMismatchError
from .graph import GraphGeometry, GroupGeometry, Member, no_mha_fastpath

__all__ = ["GraphEditor", "masked", "unit_index"]


def unit_index(member: Member, units: int, kept: list[int], device: Any = None) -> Tensor:
    """Indices along ``member.dim`` of the entries of units ``kept`` (of ``units``), every segment."""
    span = units * member.width
    idx = [s * span + u * member.width + j for s in range(member.segments) for u in kept for j in range(member.width)]
    return torch.tensor(idx, dtype=torch.long, device=device)


class GraphEditor:
    """A teacher posterior being aligned on its computation graph (see the module docstring).

    Attributes:
        geometry: the teacher's :class:`~.graph.GraphGeometry`.
        locs, scales: the Bayesian tensors in teacher shapes (``locs`` change with re-fits).
        points: point estimates of the network (``"net."`` stripped), teacher shapes.
        kept: per group index, the original indices of the units kept.
        removed: paths of the blocks removed.
    """

    def __init__(self, geometry: GraphGeometry, q: MeanFieldPosterior):
        self.geometry = geometry
        self.locs = {k: v.detach().clone() for k, v in q.locs.items()}
        self.scales = {k: v.detach().clone() for k, v in q.scales.items()}
        self.points = {k[4:]: v.detach().clone() for k, v in q.point_estimates.items() if k.startswith("net.")}
        self.likelihood_points = {k: v.detach().clone() for k, v in q.point_estimates.items()
                                  if k.startswith("likelihood.")}
        self.info = dict(q.info)
        self.kept: list[list[int]] = [list(range(g.units)) for g in geometry.groups]
        self.removed: list[str] = []
        self._members: dict[str, list[tuple[GroupGeometry, Member]]] = {}
        for g in geometry.groups:
            for m in g.members:
                self._members.setdefault(m.tensor, []).append((g, m))

    # -- edits ------------------------------------------------------------------------------------
    def restrict(self, group: int, keep: list[int]) -> None:
        """phi: keep the units at positions ``keep`` (of the currently kept ones) of ``group``."""
        current = self.kept[group]
        if any(not 0 <= i < len(current) for i in keep) or len(set(keep)) != len(keep):
            raise ValueError(f"restrict: positions {keep} are not distinct positions among {len(current)} units")
        self.kept[group] = [current[i] for i in keep]

    def remove_block(self, path: str) -> None:
        """psi: the block ``path`` becomes the identity (its residual branch is zero)."""
        if path not in self.removed:
            self.removed.append(path)

    def set_means(self, name: str, value: Tensor) -> None:
        """Replace the means of Bayesian tensor ``name`` (teacher shape)."""
        if value.shape != self.locs[name].shape:
            raise ShapeMismatchError(f"set_means: {name!r} has shape {tuple(self.locs[name].shape)}, got {tuple(value.shape)}")
        self.locs[name] = value.detach().clone()

    def is_removed(self, name: str) -> bool:
        """Whether tensor or module ``name`` lies inside a removed block."""
        return any(name == p or name.startswith(p + ".") for p in self.removed)

    # -- views ------------------------------------------------------------------------------------
    def tensor(self, name: str, which: str = "loc") -> Tensor:
        """The teacher-shaped tensor ``name``: ``"loc"``, ``"scale"`` or ``"point"``."""
        return {"loc": self.locs, "scale": self.scales, "point": self.points}[which][name]

    def current(self, name: str, which: str = "loc", skip: Optional[int] = None) -> Tensor:
        """Tensor ``name`` sliced to the kept units of every group it belongs to (except ``skip``)."""
        t = self.tensor(name, which)
        for g, m in self._members.get(name, ()):
            if g.index != skip and len(self.kept[g.index]) != g.units:
                t = t.index_select(m.dim, unit_index(m, g.units, self.kept[g.index], t.device))
        return t

    def unit_rows(self, name: str, member: Member, group: GroupGeometry, which: str = "loc") -> Tensor:
        """``[units, rest...]``: the tensor sliced by the other groups, with this group's units in front
        (a unit's ``segments x width`` entries of ``member.dim`` flattened into its row)."""
        t = self.current(name, which, skip=group.index)
        t = t.index_select(member.dim, unit_index(member, group.units, self.kept[group.index], t.device))
        t = t.movedim(member.dim, 0)
        n = len(self.kept[group.index])
        t = t.reshape(member.segments, n, member.width, *t.shape[1:]).transpose(0, 1)
        return t.reshape(n, -1) if member.segments > 1 or member.width > 1 else t.reshape(n, *t.shape[3:])

    def masks(self) -> dict[int, Tensor]:
        """Per narrowed group, a 0/1 mask over its (teacher) units."""
        out = {}
        for g in self.geometry.groups:
            if len(self.kept[g.index]) != g.units:
                mask = torch.zeros(g.units)
                mask[self.kept[g.index]] = 1.0
                out[g.index] = mask
        return out

    # -- result -----------------------------------------------------------------------------------
    def export(self, rename: Mapping[str, str], student_shapes: Mapping[str, Any]) -> MeanFieldPosterior:
        """The edited posterior over the student's names (``rename``: teacher tensor -> student tensor).

        ``student_shapes``: every tensor of the student network (name -> shape); an exported tensor
        of another shape raises :class:`ShapeMismatchError` naming it.
        """
        locs, scales, info, points = {}, {}, {}, {}
        for name in self.locs:
            if self.is_removed(name):
                continue
            new = _renamed(rename, name)
            locs[new], scales[new] = self.current(name, "loc"), self.current(name, "scale")
            old = self.info.get(name)
            module, _, attr = new.rpartition(".")
            info[new] = ParamInfo(module, old.module_type if old else "", attr)
        for name in self.points:
            if not self.is_removed(name):
                points["net." + _renamed(rename, name)] = self.current(name, "point")
        points.update({k: v.clone() for k, v in self.likelihood_points.items()})
        for name, t in list(locs.items()) + [(k[4:], v) for k, v in points.items() if k.startswith("net.")]:
            want = student_shapes.get(name)
            if want is not None and tuple(t.shape) != tuple(want):
                raise ShapeMismatchError(
                    f"aligned tensor {name!r} has shape {tuple(t.shape)} but the student's is {tuple(want)}"
                )
        return MeanFieldPosterior(locs, scales, info, points, {"aligned_from": "teacher"})


def _renamed(rename: Mapping[str, str], name: str) -> str:
    try:
        return rename[name]
    except KeyError:
        raise ShapeMismatchError(f"the alignment plan has no student name for the teacher tensor {name!r}") from None


@contextmanager
def masked(net: nn.Module, editor: GraphEditor) -> Iterator[None]:
    """Inside: ``net`` (the teacher's network) computes the edited teacher, given the editor's means."""
    hooks = []
    try:
        for index, mask in editor.masks().items():
            for c in editor.geometry.groups[index].consumers:
                if not editor.is_removed(c.path):
                    hooks.append(net.get_submodule(c.path).register_forward_pre_hook(_zero_units(mask, c.axis, c.width)))
        for path in editor.removed:
            hooks.append(net.get_submodule(path).register_forward_hook(_identity))
        with no_mha_fastpath():
            yield
    finally:
        for h in hooks:
            h.remove()


def _identity(module: nn.Module, args: tuple, out: Any) -> Any:
    return args[0]


def _zero_units(mask: Tensor, axis: int, width: int):
    full = mask.repeat_interleave(width)

    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        shape = [1] * x.dim()
        shape[axis % x.dim()] = -1
        return (x * full.to(x).view(shape),) + tuple(args[1:])

    return hook
