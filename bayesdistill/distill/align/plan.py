"""The alignment plan: how a teacher posterior maps onto a student's shapes, as plain data.

An :class:`AlignmentPlan` records the typed edits alignment made, in order (:class:`Restrict`:
units kept; :class:`Fold`: a layer folded into the next by a channel map; :class:`Refit`: the
next layer's means re-fitted on probe data), the teacher's layer geometry
(:class:`LayerGeometry`, enough to replay the edits on another posterior of the teacher's shapes
without the teacher network), per-layer records for inspection and plots, and the aligned
posterior of the teacher it was built from. ``save`` / ``load`` write and read it
(``torch.save`` format, version 3; files of versions 1 and 2 are read too).

A plan of the graph path (residual networks, Transformers) holds the edits
:class:`RestrictGroup` (units of a channel group kept), :class:`RemoveBlock` (a residual block
replaced by the identity) and :class:`RefitLayer` (a layer's means re-fitted on probe data), and
the teacher's :class:`~.graph.GraphGeometry` (channel groups, blocks, tensor shapes) instead of
the layer geometry; ``param_map`` then maps every teacher tensor to the student's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import torch
from torch import Tensor, nn

from ...bnn.posterior import MeanFieldPosterior, atomic_save
from ..._io import atomic_write, read_torch_file
from ...errors import FileFormatError, ShapeMismatchError
from .chain import Chain, Layer
from .editor import PosteriorEditor
from .graph import GraphGeometry
from .graph_editor import GraphEditor

__all__ = ["AlignmentPlan", "Restrict", "Fold", "Refit", "RestrictGroup", "RemoveBlock", "RefitLayer", "Edit",
           "LayerGeometry", "PLAN_FORMAT", "PLAN_VERSION"]

PLAN_FORMAT = "bayesdistill.AlignmentPlan"
PLAN_VERSION = 3
_READABLE_VERSIONS = (1, 2, 3)


# ----------------------------------------------------------------------------- typed edits
@dataclass(frozen=True)
class Restrict:
    """phi: keep units ``keep`` (current positions) of teacher layer ``layer`` (an index)."""

    layer: int
    keep: tuple[int, ...]
    kind: ClassVar[str] = "restrict"
    replayable: ClassVar[bool] = True

    def replay(self, editor: PosteriorEditor) -> None:
        editor.restrict(self.layer, list(self.keep))

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "layer": self.layer, "keep": list(self.keep)}


@dataclass(frozen=True, eq=False)
class Fold:
    """psi: teacher layer ``layer`` removed, replaced by the channel map ``mix`` [units, inputs]."""

    layer: int
    mix: Tensor
    kind: ClassVar[str] = "fold"
    replayable: ClassVar[bool] = True

    def replay(self, editor: PosteriorEditor) -> None:
        editor.fold(self.layer, self.mix.to(editor.Wm[self.layer + 1]))

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "layer": self.layer, "mix": self.mix.detach().cpu()}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Fold):
            return NotImplemented
        return self.layer == other.layer and torch.equal(self.mix.cpu(), other.mix.cpu())

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Refit:
    """Compensation: teacher layer ``layer``'s means re-fitted by least squares on the probe data.

    Not replayable: the re-fitted means belong to the posterior the plan was built from.
    """

    layer: int
    kind: ClassVar[str] = "refit"
    replayable: ClassVar[bool] = False

    def replay(self, editor: PosteriorEditor) -> None:
        raise ValueError("a re-fit on probe data cannot be replayed on another posterior; run bd.align again")

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "layer": self.layer}


@dataclass(frozen=True)
class RestrictGroup:
    """phi on a graph: keep units ``keep`` (current positions) of teacher channel group ``group``."""

    group: int
    keep: tuple[int, ...]
    kind: ClassVar[str] = "restrict-group"
    replayable: ClassVar[bool] = True

    def replay(self, editor: GraphEditor) -> None:
        editor.restrict(self.group, list(self.keep))

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "group": self.group, "keep": list(self.keep)}


@dataclass(frozen=True)
class RemoveBlock:
    """psi on a graph: the teacher's residual block ``path`` replaced by the identity (zero branch)."""

    path: str
    kind: ClassVar[str] = "remove-block"
    replayable: ClassVar[bool] = True

    def replay(self, editor: GraphEditor) -> None:
        editor.remove_block(self.path)

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path}


@dataclass(frozen=True)
class RefitLayer:
    """Compensation on a graph: the means of teacher layer ``path`` re-fitted on the probe data (not replayable)."""

    path: str
    kind: ClassVar[str] = "refit-layer"
    replayable: ClassVar[bool] = False

    def replay(self, editor: GraphEditor) -> None:
        raise ValueError("a re-fit on probe data cannot be replayed on another posterior; run bd.align again")

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path}


Edit = Union[Restrict, Fold, Refit, RestrictGroup, RemoveBlock, RefitLayer]


def _edit_from_state(d: dict[str, Any]) -> Edit:
    kind = d.get("kind")
    if kind == "restrict":
        return Restrict(int(d["layer"]), tuple(int(i) for i in d["keep"]))
    if kind == "fold":
        return Fold(int(d["layer"]), d["mix"])
    if kind == "refit":
        return Refit(int(d["layer"]))
    if kind == "restrict-group":
        return RestrictGroup(int(d["group"]), tuple(int(i) for i in d["keep"]))
    if kind == "remove-block":
        return RemoveBlock(str(d["path"]))
    if kind == "refit-layer":
        return RefitLayer(str(d["path"]))
    raise ValueError(f"alignment plan: unknown edit kind {kind!r}")


def _edit_from_v1(op: Any) -> Edit:
    """An edit of a version-1 plan: ``["restrict", t, keep]``, ``["fold", t, mix]`` or ``["set", t]``."""
    kind, layer = op[0], int(op[1])
    if kind == "restrict":
        return Restrict(layer, tuple(int(i) for i in op[2]))
    if kind == "fold":
        return Fold(layer, op[2])
    if kind == "set":
        return Refit(layer)
    raise ValueError(f"alignment plan (version 1): unknown op {kind!r}")


# ----------------------------------------------------------------------------- layer geometry
@dataclass(frozen=True)
class LayerGeometry:
    """What replaying edits needs of one teacher layer: its kind, sizes and hyperparameters.

    Attributes:
        path: the layer's module path in the teacher.
        kind: ``"linear"``, ``"conv1d"`` or ``"conv2d"``.
        in_units, out_units: input features/channels and output units/channels.
        bias: whether the layer has a bias.
        kernel, stride, padding, dilation: convolution hyperparameters (empty for Linear;
            ``padding`` may be a string such as ``"same"``).
        norms: ``(path, num_features, eps)`` of the normalization layers after it.
    """

    path: str
    kind: str
    in_units: int
    out_units: int
    bias: bool
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: Union[str, tuple[int, ...]] = ()
    dilation: tuple[int, ...] = ()
    norms: tuple[tuple[str, int, float], ...] = ()

    @classmethod
    def from_layer(cls, layer: Layer) -> "LayerGeometry":
        m = layer.module
        norms = tuple((p, int(n.num_features), float(n.eps)) for p, n in layer.norms())
        base = dict(path=layer.path, in_units=layer.in_units, out_units=layer.out_units, bias=layer.has_bias, norms=norms)
        if isinstance(m, nn.Linear):
            return cls(kind="linear", **base)
        padding = m.padding if isinstance(m.padding, str) else tuple(m.padding)
        return cls(kind="conv1d" if isinstance(m, nn.Conv1d) else "conv2d", kernel=tuple(m.kernel_size),
                   stride=tuple(m.stride), padding=padding, dilation=tuple(m.dilation), **base)

    def to_layer(self, index: int) -> Layer:
        """A :class:`Layer` with modules on the meta device (shapes and hyperparameters only)."""
        if self.kind == "linear":
            m: nn.Module = nn.Linear(self.in_units, self.out_units, bias=self.bias, device="meta")
        else:
            conv = nn.Conv1d if self.kind == "conv1d" else nn.Conv2d
            m = conv(self.in_units, self.out_units, self.kernel, stride=self.stride, padding=self.padding,
                     dilation=self.dilation, bias=self.bias, device="meta")
        norm_type = nn.BatchNorm2d if self.kind == "conv2d" else nn.BatchNorm1d
        after = [(p, norm_type(nf, eps=eps, device="meta")) for p, nf, eps in self.norms]
        return Layer(index, self.path, m, after)

    def state(self) -> dict[str, Any]:
        """Plain data (the same dict layout as a version-1 plan's ``chain`` entries)."""
        d: dict[str, Any] = {"path": self.path, "kind": self.kind, "in": self.in_units, "out": self.out_units,
                             "bias": self.bias, "norms": [list(n) for n in self.norms]}
        if self.kind != "linear":
            d.update(kernel=list(self.kernel), stride=list(self.stride), dilation=list(self.dilation),
                     padding=self.padding if isinstance(self.padding, str) else list(self.padding))
        return d

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> "LayerGeometry":
        conv = {}
        if d["kind"] != "linear":
            padding = d["padding"] if isinstance(d["padding"], str) else tuple(d["padding"])
            conv = dict(kernel=tuple(d["kernel"]), stride=tuple(d["stride"]), padding=padding,
                        dilation=tuple(d["dilation"]))
        norms = tuple((str(p), int(nf), float(eps)) for p, nf, eps in d["norms"])
        return cls(path=d["path"], kind=d["kind"], in_units=int(d["in"]), out_units=int(d["out"]),
                   bias=bool(d["bias"]), norms=norms, **conv)


def geometry_of(chain: Chain) -> tuple[LayerGeometry, ...]:
    """The layer geometry of a parsed chain."""
    return tuple(LayerGeometry.from_layer(L) for L in chain.layers)


# ----------------------------------------------------------------------------- the plan
@dataclass
class AlignmentPlan:
    """How a teacher posterior maps onto a student's shapes (plain, inspectable data).

    Attributes:
        layers: one dict per teacher layer: ``teacher`` (module path), ``student`` (module path
            or ``None`` if the layer was removed), ``kind``, ``teacher_units``, ``student_units``,
            ``kept`` (original indices of the kept units), ``removed`` (bool), ``residual``
            (removal residual ||U - M|| / ||U|| of the map M that replaced a removed layer, or
            ``None``), ``reconstruction`` (list of ``{"step", "before", "after"}`` relative
            errors of the re-fits of this layer), ``trace`` (list of ``[round, unit, score]`` for
            every removed unit, in order), and ``error`` (with probe data: relative
            reconstruction error of the layer's pre-activations against the full teacher's,
            ``{"restricted": ..., "compensated": ...}``: by the unit selections alone, and with
            the compensating re-fits).
        criterion, removal, compensation, step: the settings that produced the plan.
        teacher_shapes, student_shapes: parameter name -> shape.
        param_map: teacher parameter name -> student parameter name.
        edits: the typed edits in order (:class:`Restrict`, :class:`Fold`, :class:`Refit`; on the
            graph path :class:`RestrictGroup`, :class:`RemoveBlock`, :class:`RefitLayer`),
            replayed by :meth:`apply` on another posterior.
        geometry: the teacher's layers (:class:`LayerGeometry`), or on the graph path its
            :class:`~.graph.GraphGeometry`, for the replay.
        aligned: the aligned posterior (student names) of the posterior the plan was built from;
            ``source`` that posterior.
        output_error: relative error of the pruned teacher's outputs vs the full teacher's on the
            probe data (``None`` without probe data).
        student_points: on the graph path, the shapes of the student's other tensors
            (normalization statistics, point estimates), name -> shape, checked on replay.
    """

    layers: list[dict[str, Any]]
    criterion: str
    removal: str
    compensation: bool
    step: float
    teacher_shapes: dict[str, list[int]]
    student_shapes: dict[str, list[int]]
    param_map: dict[str, str]
    edits: list[Edit] = field(default_factory=list)
    geometry: Union[tuple[LayerGeometry, ...], GraphGeometry, None] = None
    aligned: Optional[MeanFieldPosterior] = None
    source: Optional[MeanFieldPosterior] = None
    output_error: Optional[float] = None
    student_points: dict[str, list[int]] = field(default_factory=dict)

    # -- inspection ---------------------------------------------------------------------------
    @property
    def is_identity(self) -> bool:
        return not self.edits

    def summary(self) -> str:
        """A table: per teacher layer, width teacher -> student, removal, reconstruction error."""
        lines = [f"AlignmentPlan (criterion={self.criterion}, removal={self.removal}, compensation={self.compensation})"]
        w = max([14] + [len(str(L[k])) + 2 for L in self.layers for k in ("teacher", "student")])
        lines.append(f"{'teacher':<{w}}{'student':<{w}}{'kind':<9}{'units':>14}  {'removed':<8}{'residual':>10}{'recon':>16}")
        for L in self.layers:
            err = L.get("error")
            recon = f"{err['restricted']:.3f}->{err['compensated']:.3f}" if err else "-"
            res = f"{L['residual']:.3f}" if L["residual"] is not None else "-"
            units = f"{L['teacher_units']} -> {L['student_units'] if not L['removed'] else 0}"
            lines.append(
                f"{L['teacher']:<{w}}{str(L['student']):<{w}}{L['kind']:<9}{units:>14}  "
                f"{'yes' if L['removed'] else 'no':<8}{res:>10}{recon:>16}"
            )
        if self.output_error is not None:
            lines.append(f"relative output error of the aligned teacher on the probe data: {self.output_error:.4f}")
        return "\n".join(lines)

    def overview(self) -> dict[str, Any]:
        """The settings and a per-layer summary as JSON-able data (unit counts, no unit lists or traces)."""
        keys = ("teacher", "student", "kind", "teacher_units", "student_units")
        layers = [{**{k: L[k] for k in keys},
                   "kept": len(L["kept"]) if L.get("kept") is not None else None, "removed": L["removed"],
                   "residual": L["residual"], "error": L.get("error")} for L in self.layers]
        return {"criterion": self.criterion, "removal": self.removal, "compensation": self.compensation,
                "step": self.step, "output_error": self.output_error, "layers": layers}

    def __repr__(self) -> str:
        return self.summary()

    # -- applying --------------------------------------------------------------------------
    def apply(self, q: MeanFieldPosterior) -> MeanFieldPosterior:
        """The posterior ``q`` (teacher shapes) mapped to the student's parameter names and shapes.

        For the posterior the plan was built from, this returns the aligned posterior exactly
        (including compensated means). For another posterior with the teacher's shapes, the
        recorded unit selections and layer foldings are replayed; compensated means were fitted
        to the original teacher's function, so a plan with re-fits refuses other posteriors
        (re-run :func:`~bayesdistill.align` on them).
        """
        self._check_shapes(q)
        if self.aligned is not None and self.source is not None and same_posterior(q, self.source):
            return self.aligned.to(q.device).clone()
        if any(not e.replayable for e in self.edits):
            raise ValueError(
                "this plan re-fitted means on probe data (compensation) for another teacher posterior; "
                "run bd.align again for this posterior, or build the plan with compensation=False"
            )
        if self.geometry is None:
            raise ValueError("this plan does not carry its teacher's geometry; rebuild it with bd.align")
        if isinstance(self.geometry, GraphGeometry):
            graph = GraphEditor(self.geometry, q)
            for edit in self.edits:
                edit.replay(graph)
            return graph.export(self.param_map, {**self.student_shapes, **self.student_points})
        editor = PosteriorEditor(Chain([], [g.to_layer(i) for i, g in enumerate(self.geometry)]), q)
        for edit in self.edits:
            edit.replay(editor)
        return editor.export(self.param_map, self.student_shapes)

    def _check_shapes(self, q: MeanFieldPosterior) -> None:
        missing = [k for k in self.teacher_shapes if k not in q.locs]
        if missing:
            raise ShapeMismatchError(f"this plan needs teacher parameters {missing}, which the posterior lacks")
        for k, shape in self.teacher_shapes.items():
            if tuple(q.locs[k].shape) != tuple(shape):
                raise ShapeMismatchError(
                    f"plan applied to the wrong posterior: parameter {k!r} has shape "
                    f"{tuple(q.locs[k].shape)}, the plan was built for {tuple(shape)}"
                )

    # -- persistence -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Plain data (tensors only inside ``edits`` and the posteriors): ``torch.save``-able."""
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "layers": self.layers,
            "criterion": self.criterion,
            "removal": self.removal,
            "compensation": self.compensation,
            "step": self.step,
            "teacher_shapes": self.teacher_shapes,
            "student_shapes": self.student_shapes,
            "param_map": self.param_map,
            "edits": [e.state() for e in self.edits],
            "geometry": _geometry_state(self.geometry),
            "student_points": self.student_points,
            "aligned": self.aligned.state() if self.aligned is not None else None,
            "source": self.source.state() if self.source is not None else None,
            "output_error": self.output_error,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "AlignmentPlan":
        """A plan from :meth:`state` (format version 2) or a version-1 plan's state."""
        if not isinstance(state, dict) or state.get("format") != PLAN_FORMAT:
            raise FileFormatError("not an alignment plan (missing format tag)")
        version = state.get("version")
        if version not in _READABLE_VERSIONS:
            raise FileFormatError(
                f"alignment plan format version {version!r} is not supported (this bayesdistill reads "
                f"versions {', '.join(map(str, _READABLE_VERSIONS))}); rebuild the plan with bd.align"
            )
        if version == 1:
            edits = [_edit_from_v1(op) for op in state["ops"]]
            geometry = state.get("chain")
        else:
            edits = [_edit_from_state(d) for d in state["edits"]]
            geometry = state.get("geometry")
        return cls(
            layers=state["layers"], criterion=state["criterion"], removal=state["removal"],
            compensation=state["compensation"], step=state["step"], teacher_shapes=state["teacher_shapes"],
            student_shapes=state["student_shapes"], param_map=state["param_map"], edits=edits,
            geometry=_geometry_from_state(geometry),
            aligned=MeanFieldPosterior.from_state(state["aligned"]) if state["aligned"] is not None else None,
            source=MeanFieldPosterior.from_state(state["source"]) if state.get("source") is not None else None,
            output_error=state["output_error"], student_points=dict(state.get("student_points") or {}),
        )

    def save(self, path: Union[str, Path]) -> Path:
        """Write the plan atomically (``torch.save`` format)."""
        return atomic_save(self.state(), path)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "AlignmentPlan":
        """Read a plan written by :meth:`save` (``weights_only``: no code from the file runs);
        :class:`~bayesdistill.errors.FileFormatError` for a damaged or foreign file."""
        state = read_torch_file(path, "alignment plan")
        try:
            return cls.from_state(state)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as err:
            if isinstance(err, FileFormatError):
                raise
            raise FileFormatError(f"{str(path)!r} is not a readable alignment plan ({err})") from err

    def to_json(self, path: Union[str, Path, None] = None) -> str:
        """The inspectable part (layers, settings, shapes, mapping) as JSON; written to ``path`` if given."""
        data = {k: v for k, v in self.state().items() if k not in ("edits", "aligned", "geometry", "source")}
        text = json.dumps(data, indent=2)
        if path is not None:
            atomic_write(path, lambda fh: fh.write(text), binary=False)
        return text


def _geometry_state(geometry: Any) -> Any:
    if geometry is None:
        return None
    if isinstance(geometry, GraphGeometry):
        return geometry.state()
    return [g.state() for g in geometry]


def _geometry_from_state(state: Any) -> Any:
    if state is None:
        return None
    if isinstance(state, dict) and state.get("kind") == "graph":
        return GraphGeometry.from_state(state)
    return tuple(LayerGeometry.from_state(d) for d in state)


def same_posterior(q: MeanFieldPosterior, source: MeanFieldPosterior, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """Whether ``q`` is the posterior a plan was built from (up to save/load rounding).

    Element-wise closeness, not a hash: reloading a posterior into a BNN moves scales by ~1e-7
    (softplus round trip), while a permutation of units, which alignment is all about, moves
    them by far more.
    """
    if list(q.locs) != list(source.locs):
        return False
    for k in q.locs:
        a, b = q.locs[k], source.locs[k].to(q.locs[k].device)
        sa, sb = q.scales[k], source.scales[k].to(q.scales[k].device)
        if a.shape != b.shape or not torch.allclose(a, b, rtol=rtol, atol=atol) or not torch.allclose(sa, sb, rtol=rtol, atol=atol):
            return False
    return True
