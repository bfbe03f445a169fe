r"""Least-squares compensation and reconstruction errors on the graph path.

:func:`refit_reader`: after a channel group lost units (or a stream lost a block), every
Linear/Conv layer that reads it gets new means for its kept input columns (and bias), one layer
after the other in the order the network runs them (:func:`to_refit`), each from the inputs the
edited teacher gives it with the earlier re-fits in place:

    W, b = argmin ||Y - X W - b||^2 + lambda ||W||^2,

with X the layer's inputs in the edited teacher and Y its pre-activations in the full teacher,
over the probe data (accumulated chunk by chunk as Gram matrices in float64; lambda = 1e-4 times
the mean diagonal of X^T X). Scales are left as they are; the re-fit is recorded as a
:class:`~.plan.RefitLayer` edit (not replayable on another posterior).

:func:`measure_errors`: relative errors ``||y - y_full||^2 / ||y_full - mean||^2`` of the edited
teacher's pre-activations at each group's readers (kept output units only) by the selections
alone and with the re-fits, and of the network output.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .editor import conv_design
from .graph import Consumer, GroupGeometry, Member
from .graph_editor import GraphEditor, unit_index
from .plan import RefitLayer

__all__ = ["to_refit", "refit_reader", "measure_errors", "readers_of", "units_of", "chunks", "CHUNK"]

#: Probe examples per forward pass.
CHUNK = 64


def chunks(x: Tensor) -> Iterator[Tensor]:
    for i in range(0, x.shape[0], CHUNK):
        yield x[i:i + CHUNK]


def readers_of(run: Any, g: GroupGeometry) -> list[Consumer]:
    """The layers with Bayesian weights, outside removed blocks, that read group ``g``."""
    ed = run.editor
    return [c for c in g.consumers if not ed.is_removed(c.path) and f"{c.path}.weight" in ed.locs]


def units_of(x: Tensor, c: Consumer, units: int, kept: list[int]) -> Tensor:
    """A reader's input as ``[N, kept units, ...]`` (a Linear reader: ``[N * positions, units, width]``)."""
    idx = unit_index(Member("", 0, "in", c.width), units, kept, x.device)
    x = x.index_select(c.axis % x.dim(), idx)
    return x.reshape(-1, len(kept), c.width) if c.axis == -1 else x


def _design(module: nn.Module, x: Tensor, target: Tensor, c: Consumer) -> tuple[Tensor, Tensor]:
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-2] * x.shape[-1]), target.reshape(-1, target.shape[-1])
    return conv_design(module, x, target)


class _Gram:
    """Running X^T X, X^T Y, sum Y^2, sum Y and the row count (X with a column of ones if biased)."""

    def __init__(self) -> None:
        self.xx = self.xy = self.ysum = None
        self.yy, self.rows = 0.0, 0

    def add(self, X: Tensor, Y: Tensor) -> None:
        X, Y = X.double(), Y.double()
        xx, xy = X.T @ X, X.T @ Y
        self.xx = xx if self.xx is None else self.xx + xx
        self.xy = xy if self.xy is None else self.xy + xy
        self.ysum = Y.sum(0) if self.ysum is None else self.ysum + Y.sum(0)
        self.yy += float(Y.square().sum())
        self.rows += Y.shape[0]

    def error(self, W: Tensor) -> float:
        """Relative error of ``X @ W`` (``W`` [features, outputs], float64)."""
        num = self.yy - 2 * float((W * self.xy).sum()) + float((W * (self.xx @ W)).sum())
        den = self.yy - float(self.ysum.square().sum()) / max(self.rows, 1)
        return max(num, 0.0) / max(den, 1e-12)


class _Stop(Exception):
    """Ends a forward pass once the hooked layer has been seen."""


def to_refit(run: Any, groups: list[GroupGeometry]) -> list[tuple[GroupGeometry, Consumer]]:
    """The (group, reader) pairs to re-fit, in the order the teacher runs the readers."""
    order = {p: i for i, p in enumerate(run.graph.readers)}
    pairs = [(g, c) for g in groups for c in readers_of(run, g) if _refittable(run.teacher.net.get_submodule(c.path))]
    return sorted(pairs, key=lambda gc: order.get(gc[1].path, len(order)))


def refit_reader(run: Any, g: GroupGeometry, c: Consumer, ridge: float = 1e-4) -> None:
    """Re-fit the means of reader ``c`` of group ``g`` (see the module docstring): one pass over the
    probe data, each forward pass stopped at the reader."""
    ed: GraphEditor = run.editor
    kept, gram = ed.kept[g.index], _Gram()
    biased = f"{c.path}.bias" in ed.locs
    module = run.teacher.net.get_submodule(c.path)
    got: dict[str, Tensor] = {}
    for chunk in chunks(run.x):
        with run.hooked(None, hooks=[(c.path, _store(got, "y", stop=True))]):
            _until_stop(run, chunk, run.q.locs)
        with run.hooked(ed, pre_hooks=[(c.path, _store_input(got, c, g.units, kept))]):
            _until_stop(run, chunk, ed.locs)
        X, Y = _design(module, got["x"], got["y"], c)
        if biased:
            X = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)], 1)
        gram.add(X, Y)
    _solve(run, g, c, gram, biased, ridge)


def _until_stop(run: Any, x: Tensor, weights: dict[str, Tensor]) -> None:
    try:
        run.forward(x, weights)
    except _Stop:
        pass


def _refittable(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups == 1)


def _store(out: dict[str, Tensor], key: str, stop: bool = False):
    def fn(module: nn.Module, args: tuple, y: Tensor) -> None:
        out[key] = y
        if stop:
            raise _Stop
    return fn


def _store_input(out: dict[str, Tensor], c: Consumer, units: int, kept: list[int]):
    def fn(module: nn.Module, args: tuple) -> None:
        x = units_of(args[0], c, units, kept)
        out["x"] = x.reshape(x.shape[0], -1, x.shape[-1]) if c.axis == -1 else x
        raise _Stop
    return fn


def _solve(run: Any, g: GroupGeometry, c: Consumer, gram: _Gram, biased: bool, ridge: float) -> None:
    ed: GraphEditor = run.editor
    name = f"{c.path}.weight"
    member = next(m for m in g.members if m.tensor == name and m.role == "in")
    W = ed.locs[name]
    idx = unit_index(member, g.units, ed.kept[g.index], W.device)
    old = W.index_select(1, idx).reshape(W.shape[0], -1).T.double()
    if biased:
        old = torch.cat([old, ed.locs[f"{c.path}.bias"].double().unsqueeze(0)], 0)
    lam = ridge * gram.xx.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(gram.xx.shape[0], dtype=gram.xx.dtype, device=gram.xx.device)
    sol = torch.linalg.solve(gram.xx + lam * eye, gram.xy)
    before, after = gram.error(old), gram.error(sol)
    new = W.clone()
    weights = (sol[:-1] if biased else sol).T.to(W.dtype)
    new[:, idx] = weights.reshape(W.shape[0], len(idx), *W.shape[2:])
    ed.set_means(name, new)
    if biased:
        ed.set_means(f"{c.path}.bias", sol[-1].to(W.dtype))
    run.edits.append(RefitLayer(c.path))
    run.group_records[g.index]["reconstruction"].append({"step": c.path, "before": before, "after": after})


# ----------------------------------------------------------------------------- errors
class _Err:
    def __init__(self) -> None:
        self.num = {"restricted": 0.0, "compensated": 0.0}
        self.ysum, self.yy, self.rows = None, 0.0, 0

    def add(self, full: Tensor, plain: Tensor, comp: Tensor) -> None:
        f = full.double().reshape(full.shape[0], -1)
        self.num["restricted"] += float((plain.double().reshape(f.shape) - f).square().sum())
        self.num["compensated"] += float((comp.double().reshape(f.shape) - f).square().sum())
        self.ysum = f.sum(0) if self.ysum is None else self.ysum + f.sum(0)
        self.yy += float(f.square().sum())
        self.rows += f.shape[0]

    def result(self) -> dict[str, float]:
        den = max(self.yy - float(self.ysum.square().sum()) / max(self.rows, 1), 1e-12)
        return {k: v / den for k, v in self.num.items()}


def measure_errors(run: Any) -> float:
    """Per group record ``error`` and the relative output error (see the module docstring)."""
    ed: GraphEditor = run.editor
    plain = GraphEditor(ed.geometry, run.q)
    for edit in run.edits:
        if edit.replayable:
            edit.replay(plain)
    groups = [g for g in ed.geometry.groups if g.index in run.group_records and len(ed.kept[g.index]) < g.units]
    paths = sorted({c.path for g in groups for c in readers_of(run, g)})
    errs = {p: _Err() for p in paths}
    out_err = _Err()
    for chunk in chunks(run.x):
        runs = []
        for editor, weights in ((None, run.q.locs), (plain, run.q.locs), (ed, ed.locs)):
            got: dict[str, Tensor] = {}
            with run.hooked(editor, hooks=[(p, _store(got, p)) for p in paths]):
                got["<output>"] = run.forward(chunk, weights)
            runs.append(got)
        for p in paths:
            errs[p].add(*(_kept_outputs(ed, p, r[p]) for r in runs))
        out_err.add(*(r["<output>"] for r in runs))
    for g in groups:
        total = _Err()
        for c in readers_of(run, g):
            e = errs[c.path]
            total.num = {k: total.num[k] + e.num[k] for k in total.num}
            total.yy += e.yy - float(e.ysum.square().sum()) / max(e.rows, 1)
        total.ysum, total.rows = torch.zeros(1, dtype=torch.float64), 1
        run.group_records[g.index]["error"] = total.result() if readers_of(run, g) else None
    return out_err.result()["compensated"]


def _kept_outputs(ed: GraphEditor, path: str, y: Tensor) -> Tensor:
    """A reader's pre-activations restricted to its output group's kept units."""
    for grp, m in ed.geometry.members_of(f"{path}.weight"):
        if m.role == "out" and len(ed.kept[grp.index]) < grp.units:
            axis = 1 if y.dim() > 2 and not _is_linear_output(path, ed) else y.dim() - 1
            return y.index_select(axis, unit_index(m, grp.units, ed.kept[grp.index], y.device))
    return y


def _is_linear_output(path: str, ed: GraphEditor) -> bool:
    return ed.locs[f"{path}.weight"].dim() == 2
