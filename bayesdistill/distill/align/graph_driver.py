r"""``align`` on computation graphs: residual networks and Transformers.

The steps (called by :func:`~bayesdistill.align` for networks that are not chains):

1. trace teacher and student (:func:`.graph.trace_network`) on one example input; count the
   blocks each stage loses and check the student against the teacher with the last removable
   blocks removed (:mod:`.graph_match`), before any long computation;
2. choose the blocks to remove per stage by the block criterion (``"snr"``, ``"data"``, ...), or
   take ``remove=``; check the match again for that choice;
3. remove the blocks (each becomes the identity), then narrow every channel group to the
   student's width in rounds (score by the unit criterion, drop the lowest ``step`` fraction of
   the excess, re-score);
4. with probe data and compensation: per narrowed group (and per stream that lost a block),
   re-fit the means of the Linear/Conv layers that read it by ridge least squares, so that
   they reproduce the full teacher's pre-activations from the edited teacher's inputs;
5. with probe data: relative errors of the edited teacher (per group, at its readers'
   pre-activations, and at the output) against the full teacher.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ...bnn.network import BNN
from ...bnn.posterior import MeanFieldPosterior
from ...errors import ShapeMismatchError
from .criteria import BlockContext, Criterion, UnitContext, criterion_needs_probe
from .graph import GroupGeometry, Member, NetworkGraph, materialize, no_mha_fastpath, trace_network
from .graph_editor import GraphEditor, masked, unit_index
from .graph_match import GraphMatch, check_stage_blocks, last_removable, match_graphs, stage_removals
from .graph_refit import chunks as _chunks
from .graph_refit import measure_errors, readers_of, refit_reader, to_refit, units_of
from .plan import AlignmentPlan, Edit, RemoveBlock, RestrictGroup

__all__ = ["align_graph", "GraphSettings"]

_CHUNK = 64  # probe examples per forward pass


@dataclass(frozen=True)
class GraphSettings:
    score: Criterion
    criterion: str
    block_score: Any
    block_criterion: str
    compensation: bool
    refit_blocks: bool
    step: float
    seed: int
    remove: Optional[tuple[str, ...]]
    progress: bool


def _student_network(student: Union[nn.Module, BNN]) -> nn.Module:
    if isinstance(student, BNN):
        return materialize(student.net, student.posterior().locs)
    return student


def align_graph(teacher: BNN, student: Union[nn.Module, BNN], example: Any, x: Optional[Tensor],
                s: GraphSettings) -> AlignmentPlan:
    """The graph path of :func:`~bayesdistill.align` (see the module docstring)."""
    q = teacher.posterior()
    tgraph = trace_network(materialize(teacher.net, q.locs), example, "teacher")
    snet = _student_network(student)
    sgraph = trace_network(snet, example, "student")
    needs = stage_removals(teacher.net, snet)
    check_stage_blocks(tgraph, needs)
    match_graphs(tgraph, sgraph, last_removable(tgraph, needs))  # fail fast, before any probe pass
    run = _GraphRun(teacher, q, tgraph, s, x)
    removed = run.choose_blocks(needs)
    match = match_graphs(tgraph, sgraph, removed)
    run.execute(removed, match)
    output_error = run.measure_errors()
    shapes = sgraph.geometry.shapes
    locs_names = [match.tensors[k] for k in q.locs if k in match.tensors]
    student_shapes = ({k: list(v) for k, v in student.shapes.items()} if isinstance(student, BNN)
                      else {k: list(shapes[k]) for k in locs_names})
    points = {k: list(v) for k, v in shapes.items() if k not in student_shapes}
    plan = AlignmentPlan(
        layers=run.records, criterion=s.criterion, removal="refit" if s.refit_blocks else "identity",
        compensation=s.compensation, step=s.step, teacher_shapes={k: list(v.shape) for k, v in q.locs.items()},
        student_shapes=student_shapes, param_map=dict(match.tensors), edits=run.edits, geometry=tgraph.geometry,
        output_error=output_error, student_points=points,
    )
    plan.aligned = run.editor.export(plan.param_map, {**student_shapes, **points})
    plan.source = MeanFieldPosterior({k: v.clone() for k, v in q.locs.items()}, {k: v.clone() for k, v in q.scales.items()})
    return plan


class _GraphRun:
    """One graph alignment: the editor, the probe passes, and the edits and records they produce."""

    def __init__(self, teacher: BNN, q: MeanFieldPosterior, tgraph: NetworkGraph, s: GraphSettings, x: Optional[Tensor]):
        self.teacher, self.q, self.graph, self.s, self.x = teacher, q, tgraph, s, x
        self.editor = GraphEditor(tgraph.geometry, q)
        self.generator = torch.Generator().manual_seed(s.seed)
        self.edits: list[Edit] = []
        self.records: list[dict[str, Any]] = []
        self.group_records: dict[int, dict[str, Any]] = {}

    # -- step 2: blocks ---------------------------------------------------------------------------
    def choose_blocks(self, needs: dict[str, int]) -> list[str]:
        """Per stage, the ``needs[stage]`` removable blocks with the lowest block scores (or ``remove=``)."""
        removed: list[str] = []
        blocks = {b.path: b for b in self.graph.blocks}
        if self.s.remove is not None:
            return self._named_blocks(needs, blocks)
        cands_of = {stage: [b for b in self.graph.blocks if b.stage == stage and b.removable is None] for stage in needs}
        contributions = self._contributions([b.path for cands in cands_of.values() for b in cands])
        for stage, n in needs.items():
            cands = cands_of[stage]
            scores = [(float(self.s.block_score(self._block_context(b.path, contributions))), i, b.path)
                      for i, b in enumerate(cands)]
            removed += [p for _, _, p in sorted(scores)[:n]]
        return [p for p in blocks if p in removed]

    def _named_blocks(self, needs: dict[str, int], blocks: dict[str, Any]) -> list[str]:
        unknown = [p for p in self.s.remove if p not in blocks]
        if unknown:
            raise KeyError(f"remove={unknown}: no such teacher block; blocks: {list(blocks)}")
        for p in self.s.remove:
            if blocks[p].removable:
                raise ShapeMismatchError(f"teacher block {p!r} cannot be removed: {blocks[p].removable}")
        for stage, n in needs.items():
            got = sum(1 for p in self.s.remove if blocks[p].stage == stage)
            if got != n:
                raise ShapeMismatchError(f"remove= names {got} blocks of {stage!r}, but the student has {n} fewer there")
        extra = [p for p in self.s.remove if blocks[p].stage not in needs]
        if extra:
            raise ShapeMismatchError(f"remove= names {extra}, but the student has as many blocks there as the teacher")
        return list(self.s.remove)

    def _block_context(self, path: str, contributions: dict[str, float]) -> BlockContext:
        names = [k for k in self.q.locs if k.startswith(path + ".")]
        stage = path.rpartition(".")[0]
        return BlockContext(path, stage, {k: self.q.locs[k] for k in names}, {k: self.q.scales[k] for k in names},
                            contributions.get(path), self.generator)

    def _contributions(self, paths: list[str]) -> dict[str, float]:
        """``||f(x) - x||^2 / ||x||^2`` of each block on the probe data (when the block criterion needs it)."""
        if self.x is None or not paths or not getattr(self.s.block_score, "needs_probe", False):
            return {}
        num, den = dict.fromkeys(paths, 0.0), dict.fromkeys(paths, 0.0)

        def hook(path: str):
            def fn(module: nn.Module, args: tuple, out: Tensor) -> None:
                num[path] += float((out - args[0]).square().sum())
                den[path] += float(args[0].square().sum())
            return fn

        with self.hooked(None, hooks=[(p, hook(p)) for p in paths]):
            for chunk in _chunks(self.x):
                self.forward(chunk, self.q.locs)
        return {p: num[p] / max(den[p], 1e-30) for p in paths}

    # -- step 3 -----------------------------------------------------------------------------------
    def execute(self, removed: list[str], match: GraphMatch) -> None:
        for path in removed:
            self.editor.remove_block(path)
            self.edits.append(RemoveBlock(path))
        for g in self.graph.groups:
            if g.index in match.targets:
                self.group_records[g.index] = self._record(g, match)
        narrow = [g for g in self.graph.groups if g.index in match.targets and match.targets[g.index] < g.units]
        groups = self._refit_groups(narrow, removed, match) if self.s.compensation or self.s.refit_blocks else []
        refit = to_refit(self, groups)
        with _progress(self.s.progress, len(narrow) + len(refit)) as bar:
            for g in narrow:
                bar.set_postfix_str(f"narrow {g.name}")
                self._narrow(g, match.targets[g.index])
                bar.update(1)
            for g, c in refit:
                bar.set_postfix_str(f"re-fit {c.path}")
                refit_reader(self, g, c)
                bar.update(1)
        self.records = list(self.group_records.values()) + [self._block_record(p) for p in removed]
        for index, rec in self.group_records.items():
            rec["kept"] = list(self.editor.kept[index])

    def _refit_groups(self, narrow: list[GroupGeometry], removed: list[str], match: GraphMatch) -> list[GroupGeometry]:
        """Groups whose readers are re-fitted: the narrowed ones (compensation) and the streams that
        lost a block (compensation or ``removal="refit"``)."""
        if self.x is None:
            return []
        touched = {g.index for g in narrow} if self.s.compensation else set()
        inside = lambda name: any(name.startswith(p + ".") for p in removed)  # noqa: E731
        touched |= {g.index for g in self.graph.groups if any(inside(m.tensor) for m in g.members)}
        return [g for g in self.graph.groups if g.index in touched and g.index in match.targets]

    def _record(self, g: GroupGeometry, match: GraphMatch) -> dict[str, Any]:
        return {"teacher": g.name, "student": match.student_group[g.index], "kind": g.kind, "group": g.index,
                "teacher_units": g.units, "student_units": match.targets[g.index], "removed": False, "residual": None,
                "fixed": g.fixed, "reconstruction": [], "trace": [], "kept": None, "error": None}

    def _block_record(self, path: str) -> dict[str, Any]:
        return {"teacher": path, "student": None, "kind": "block", "teacher_units": 1, "student_units": None,
                "removed": True, "residual": None, "reconstruction": [], "trace": [], "kept": [], "error": None}

    def _narrow(self, g: GroupGeometry, target: int) -> None:
        rnd = 0
        while len(self.editor.kept[g.index]) > target:
            units = len(self.editor.kept[g.index])
            scores = torch.as_tensor(self.s.score(self._context(g, rnd))).reshape(-1).to(torch.float64).cpu()
            if scores.numel() != units:
                raise ValueError(f"criterion returned {scores.numel()} scores for {units} units of {g.name!r}")
            n_remove = max(1, math.ceil(self.s.step * (units - target)))
            drop = torch.argsort(scores, stable=True)[:n_remove].tolist()
            rec = self.group_records[g.index]
            for pos in drop:
                rec["trace"].append([rnd, self.editor.kept[g.index][pos], float(scores[pos])])
            keep = [i for i in range(units) if i not in set(drop)]
            self.editor.restrict(g.index, keep)
            self.edits.append(RestrictGroup(g.index, tuple(keep)))
            rnd += 1

    # -- unit contexts ----------------------------------------------------------------------------
    def _context(self, g: GroupGeometry, rnd: int) -> UnitContext:
        ed = self.editor
        live = [m for m in g.members if m.tensor in ed.locs and not ed.is_removed(m.tensor)]
        weights = [m for m in live if m.role == "out" and not m.tensor.endswith("bias")]
        biases = [m for m in live if m.role == "out" and m.tensor.endswith("bias")]
        w_loc, w_scale = _stack(ed, g, weights)
        b_loc, b_scale = _stack(ed, g, biases) if biases else (None, None)
        readers = readers_of(self, g)
        acts = self._activations(g, readers) if self.x is not None and criterion_needs_probe(self.s.score) else {}
        per = [self._reader_context(g, c, acts.get(c.path), rnd, w_loc, w_scale, b_loc, b_scale) for c in readers]
        if len(per) == 1:
            return per[0]
        n = len(ed.kept[g.index])
        out_loc = torch.cat([c.out_loc.transpose(0, 1).reshape(n, -1) for c in per], 1).unsqueeze(0) if per else w_loc.new_zeros(1, n, 0)
        out_scale = torch.cat([c.out_scale.transpose(0, 1).reshape(n, -1) for c in per], 1).unsqueeze(0) if per else w_loc.new_ones(1, n, 0)
        return UnitContext(g.name, rnd, w_loc, w_scale, b_loc, b_scale, out_loc, out_scale,
                           per[0].activations if per else None, per[0].next_layer if per else None, self.generator,
                           compensated=self.s.compensation, consumers=tuple(per))

    def _reader_context(self, g: GroupGeometry, c: Any, acts: Optional[Tensor], rnd: int, w_loc: Tensor,
                        w_scale: Tensor, b_loc: Optional[Tensor], b_scale: Optional[Tensor]) -> UnitContext:
        ed, n = self.editor, len(self.editor.kept[g.index])
        member = next(m for m in g.members if m.tensor == f"{c.path}.weight" and m.role == "in")
        out = [ed.current(member.tensor, w, skip=g.index) for w in ("loc", "scale")]
        idx = unit_index(member, g.units, ed.kept[g.index], out[0].device)
        out = [t.index_select(1, idx) for t in out]
        out_loc, out_scale = (t.reshape(t.shape[0], n, -1) for t in out)
        return UnitContext(c.path, rnd, w_loc, w_scale, b_loc, b_scale, out_loc, out_scale, acts,
                           self.teacher.net.get_submodule(c.path), self.generator, compensated=self.s.compensation)

    def _activations(self, g: GroupGeometry, readers: list[Any]) -> dict[str, Tensor]:
        """Each reader's input on the probe data, restricted to the kept units: ``[N, units, ...]``."""
        got: dict[str, list[Tensor]] = {c.path: [] for c in readers}
        kept = self.editor.kept[g.index]

        def capture(c: Any):
            def fn(module: nn.Module, args: tuple) -> None:
                got[c.path].append(units_of(args[0], c, g.units, kept))
            return fn

        with self.hooked(self.editor, pre_hooks=[(c.path, capture(c)) for c in readers]):
            for chunk in _chunks(self.x):
                self.forward(chunk, self.editor.locs)
        return {p: torch.cat(v) for p, v in got.items()}

    # -- forward passes ---------------------------------------------------------------------------
    def forward(self, x: Tensor, weights: dict[str, Tensor]) -> Tensor:
        """The teacher's network on ``x`` with ``weights`` (eval mode, no gradients)."""
        t = self.teacher
        was = t.training
        t.eval()
        try:
            with torch.no_grad(), no_mha_fastpath():
                return t.forward_with(x, weights)
        finally:
            t.train(was)

    @contextmanager
    def hooked(self, editor: Optional[GraphEditor], pre_hooks: Sequence[tuple[str, Any]] = (),
               hooks: Sequence[tuple[str, Any]] = ()) -> Iterator[None]:
        """The teacher's network edited by ``editor`` (``None``: the full teacher), with forward
        pre-hooks and hooks on its modules, registered after the edits' (so they see edited inputs)."""
        net = self.teacher.net
        with (masked(net, editor) if editor is not None else no_mha_fastpath()):
            handles = [net.get_submodule(p).register_forward_pre_hook(fn) for p, fn in pre_hooks]
            handles += [net.get_submodule(p).register_forward_hook(fn) for p, fn in hooks]
            try:
                yield
            finally:
                for h in handles:
                    h.remove()

    # -- step 5 -----------------------------------------------------------------------------------
    def measure_errors(self) -> Optional[float]:
        return measure_errors(self) if self.x is not None else None


def _stack(ed: GraphEditor, g: GroupGeometry, members: list[Member]) -> tuple[Tensor, Tensor]:
    """The members' unit rows: one tensor as it is (``[units, ...]``), several side by side (``[units, -1]``)."""
    n = len(ed.kept[g.index])
    if not members:
        device = next(iter(ed.locs.values())).device
        return torch.zeros(n, 0, device=device), torch.ones(n, 0, device=device)
    locs = [ed.unit_rows(m.tensor, m, g, "loc") for m in members]
    scales = [ed.unit_rows(m.tensor, m, g, "scale") for m in members]
    if len(members) == 1:
        return locs[0], scales[0]
    return torch.cat([t.reshape(n, -1) for t in locs], 1), torch.cat([t.reshape(n, -1) for t in scales], 1)


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="bd.align", disable=not enabled, leave=False)
    try:
        yield bar
    finally:
        bar.close()

