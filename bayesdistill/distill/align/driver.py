r"""``align``: map a trained teacher's posterior onto a smaller student's shapes.

Bayesian distillation (Grabovoy & Strijov, 2021, "Bayesian distillation of deep learning
models") gives the student the prior p(w_student) = q(w_teacher | alignment): the teacher's
mean-field posterior after the teacher has been reduced to the student's structure by removing
units (phi, :meth:`PosteriorEditor.restrict`) and layers (psi, :mod:`.removal`).

The steps of :func:`align`:

1. check the settings and that the student is reachable (:func:`.check_alignable`);
2. read the probe inputs and resolve the defaults that depend on them;
3. choose the teacher layers to remove (:func:`.choose_removals`);
4. per teacher layer: remove its excess units in rounds (score by the criterion, drop the worst
   ``step`` fraction of the excess, re-score), re-fitting the next layer after each round when
   compensating; then fold the layer away if it is removed;
5. with probe data: measure how well the aligned teacher reproduces the full teacher;
6. record everything in an :class:`AlignmentPlan`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ...bnn.network import BNN
from ...bnn.posterior import MeanFieldPosterior
from ...errors import DataError
from .chain import Chain, Layer, parse_chain
from .criteria import Criterion, UnitContext, criterion_needs_probe, resolve_block_criterion, resolve_criterion
from .editor import PosteriorEditor, relative_error
from .feasibility import _is_chain, check_alignable
from .graph_driver import GraphSettings, align_graph
from .plan import AlignmentPlan, Edit, Fold, Refit, Restrict, geometry_of
from .removal import Removal, choose_removals, embed_tap, relative_residual, resolve_removal

__all__ = ["align", "probe_inputs"]


def align(
    teacher: BNN,
    student: Union[nn.Module, BNN],
    *,
    criterion: Union[str, Criterion] = "snr",
    probe: Any = None,
    compensation: Optional[bool] = None,
    removal: Union[str, Removal] = "auto",
    remove: Optional[Sequence[str]] = None,
    step: float = 0.25,
    seed: int = 0,
    max_probe: int = 2048,
    example: Any = None,
    block_criterion: Union[str, Callable, None] = None,
    progress: bool = False,
) -> AlignmentPlan:
    """Align a trained teacher to a student architecture (Grabovoy & Strijov, 2021).

    Args:
        teacher: the trained :class:`~bayesdistill.BNN` (a chain: ``nn.Sequential`` of
            Linear/Conv1d/Conv2d, BatchNorm, activations, Flatten, pooling).
        student: the student network (``nn.Module`` or :class:`BNN`) with the same layer
            kinds in the same order, no wider and no deeper than the teacher, same input and
            output sizes.
        criterion: a registered criterion (``"snr"``, the default; ``"random"``; ``"data"``,
            which needs ``probe``; see :data:`CRITERIA` and :func:`register_criterion`) or a
            callable ``UnitContext -> scores [units]`` (higher = keep).
        probe: probe inputs of the teacher: a tensor, an ``(inputs, targets)`` tuple, a
            ``Dataset`` or ``DataLoader``. Needed by ``criterion="data"``, compensation and
            ``removal="refit"``; with probe data the plan also reports reconstruction errors.
        compensation: re-fit the next layer's means on the probe data after each removal.
        removal: how a removed layer is folded away: a registered rule (``"identity"``: the
            paper, condition on U_t = I; ``"permutation"``: closest scaled permutation P D;
            ``"refit"``: P D, then least squares of the next layer on the probe data; see
            :data:`REMOVALS` and :func:`register_removal`), a :class:`Removal`, or ``"auto"``.
        remove: teacher layer paths to remove (default: chosen by the smallest removal score).
        step: fraction of a layer's excess units removed per round before re-scoring
            (1.0 = one shot).
        seed: seeds the ``"random"`` criterion.
        max_probe: at most this many probe inputs are used (the first ones).
        example: one input batch of the teacher, for networks that are not chains when no
            ``probe`` is given (their computation graph is traced on it).
        block_criterion: on the graph path, how the residual blocks (Transformer layers) to
            remove are chosen: a name in :data:`BLOCK_CRITERIA` (default: the one named like
            ``criterion``, else ``"snr"``) or a callable ``BlockContext -> score`` (lowest goes).
        progress: show a progress bar over the steps of the graph path.

    Networks that are not chains (residual networks, Transformers, anything with a skip
    connection) are aligned on their computation graph (:mod:`.graph`, :mod:`.graph_driver`):
    the student then has the teacher's module tree with fewer blocks per stage and fewer
    channels, heads or feed-forward units (docs/real-networks.md says exactly which students
    are reachable). There ``removal`` is ``"auto"``, ``"identity"`` (a removed block becomes the
    identity) or ``"refit"`` (and the layers reading its stream are re-fitted on the probe data;
    ``"auto"`` with probe data), ``remove=`` names blocks, and compensation re-fits the layers
    that read each narrowed group, once, after all removals.

    Defaults that depend on the probe data (the only ones): with ``probe`` given,
    ``compensation=None`` means ``True`` and ``removal="auto"`` means ``"refit"``; without it,
    ``compensation`` is ``False`` and ``"auto"`` means ``"permutation"``. So passing probe data
    alone changes the plan (re-fitted means, not only the reported errors); pass
    ``compensation=False, removal="permutation"`` to use probe data only for the criterion and
    the errors. The criterion's default (``"snr"``) does not depend on the probe data.

    Returns:
        An :class:`AlignmentPlan`; ``plan.apply(teacher.posterior())`` is the aligned posterior
        (what :class:`~bayesdistill.priors.TeacherPosterior` ``(q, plan=plan)`` uses).

    Raises:
        ShapeMismatchError: the student is wider or deeper, or input/output sizes differ (names
            the layer); raised before the probe data are read.
        UnsupportedLayerError: a layer alignment cannot edit (names the module).
        DataError: a criterion or setting needs probe data that were not given, or the probe
            data do not fit the teacher.
    """
    score_fn, criterion_name = _check_settings(teacher, criterion, removal, step)
    student_net = student.net if isinstance(student, BNN) else student
    graph_example = _graph_example(teacher.net, student_net, probe, example)
    if graph_example is not None:
        return _align_graph(teacher, student, graph_example, probe, max_probe, score_fn, criterion_name,
                            block_criterion, compensation, removal, remove, step, seed, progress)
    check_alignable(teacher.net, student_net)
    x = _probe_batch(teacher, probe, max_probe)
    compensation = x is not None if compensation is None else bool(compensation)
    rule = resolve_removal(removal, x is not None)
    _check_probe_needs(x, criterion_name if criterion_needs_probe(score_fn) else None, compensation, rule)

    q = teacher.posterior()
    tchain = parse_chain(teacher.net, x, "teacher", run=teacher.forward if x is not None else None)
    schain = parse_chain(student_net, None, "student")
    removed = choose_removals(tchain, schain, q, remove, rule)
    run = _AlignmentRun(tchain, schain, q, removed, _Settings(score_fn, rule, compensation, step, seed), x)
    run.execute()
    output_error = run.measure_errors()
    plan = AlignmentPlan(
        layers=run.records, criterion=criterion_name, removal=rule.label, compensation=compensation, step=step,
        teacher_shapes={k: list(v.shape) for k, v in q.locs.items()},
        student_shapes=_student_shapes(student, schain), param_map=run.param_map(),
        edits=run.edits, geometry=geometry_of(tchain), output_error=output_error,
    )
    plan.aligned = run.editor.export(plan.param_map, plan.student_shapes)
    plan.source = MeanFieldPosterior({k: v.clone() for k, v in q.locs.items()}, {k: v.clone() for k, v in q.scales.items()})
    return plan


# ----------------------------------------------------------------------------- the graph path
def _graph_example(teacher: nn.Module, student: nn.Module, probe: Any, example: Any) -> Any:
    """One input batch when the networks are aligned on their graph (not both chains), else ``None``.

    Without probe data or ``example=`` the chain path runs (and names what is not a chain)."""
    if _is_chain(teacher) and _is_chain(student):
        return None
    if example is not None:
        return example
    x = probe_inputs(probe)
    return None if x is None else x[:2]


def _align_graph(teacher: BNN, student: Any, example: Any, probe: Any, max_probe: int, score_fn: Criterion,
                 criterion_name: str, block_criterion: Any, compensation: Optional[bool], removal: Any,
                 remove: Optional[Sequence[str]], step: float, seed: int, progress: bool) -> AlignmentPlan:
    block_fn, block_name = resolve_block_criterion(block_criterion, criterion_name)
    if not (removal in ("auto", "identity", "refit")):
        raise ValueError(
            f"removal={removal!r}: on networks that are not chains, residual blocks are removed as the identity; "
            "removal must be 'auto', 'identity' or 'refit' (re-fit the layers reading the block's stream)"
        )
    example = tuple(t.to(teacher.loc.device) for t in example) if isinstance(example, tuple) else example.to(teacher.loc.device)
    x = _probe_batch(teacher, probe, max_probe)
    compensation = x is not None if compensation is None else bool(compensation)
    refit_blocks = removal == "refit" or (removal == "auto" and x is not None and compensation)
    needs = [why for why, need in (
        (f"criterion={criterion_name!r}", criterion_needs_probe(score_fn)),
        (f"block_criterion={block_name!r}", bool(getattr(block_fn, "needs_probe", False))),
        ("compensation=True", compensation), ("removal='refit'", removal == "refit")) if need]
    if needs and x is None:
        raise DataError(f"{', '.join(needs)} needs probe data: pass probe= (teacher inputs) to bd.align")
    settings = GraphSettings(score_fn, criterion_name, block_fn, block_name, compensation, refit_blocks, step, seed,
                             tuple(remove) if remove is not None else None, progress)
    return align_graph(teacher, student, example, x, settings)


# ----------------------------------------------------------------------------- steps 1-2
def _check_settings(teacher: Any, criterion: Any, removal: Any, step: float) -> tuple[Criterion, str]:
    """Fail fast on settings: the teacher type, the criterion, the removal rule, the step."""
    if not isinstance(teacher, BNN):
        raise TypeError(f"align expects the teacher as a bd.BNN, got {type(teacher).__name__}")
    score_fn, name = resolve_criterion(criterion)
    resolve_removal(removal, True)  # an unknown rule raises here, before any work
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    return score_fn, name


def probe_inputs(probe: Any) -> Optional[Tensor]:
    """The input tensor of probe data (tensor, ``(inputs, targets)``, ``Dataset`` or ``DataLoader``)."""
    if probe is None:
        return None
    if torch.is_tensor(probe):
        return probe
    if isinstance(probe, (tuple, list)) and probe and torch.is_tensor(probe[0]):
        return probe[0]
    if isinstance(probe, torch.utils.data.TensorDataset):
        return probe.tensors[0]
    if isinstance(probe, (torch.utils.data.Dataset, torch.utils.data.DataLoader)):
        loader = probe if isinstance(probe, torch.utils.data.DataLoader) else torch.utils.data.DataLoader(probe, batch_size=512)
        return torch.cat([batch if torch.is_tensor(batch) else batch[0] for batch in loader])
    raise DataError(
        f"probe data must be a tensor of inputs, an (inputs, targets) tuple, a Dataset or a DataLoader; "
        f"got {type(probe).__name__}"
    )


def _probe_batch(teacher: BNN, probe: Any, max_probe: int) -> Optional[Tensor]:
    """At most ``max_probe`` probe inputs on the teacher's device, checked against the teacher."""
    x = probe_inputs(probe)
    if x is None:
        return None
    x = x[:max_probe].to(teacher.loc.device)
    try:
        teacher.check_data(x)
    except DataError as err:
        raise DataError(f"probe data do not fit the teacher: {err}") from err
    return x


def _check_probe_needs(x: Optional[Tensor], criterion: Optional[str], compensation: bool, rule: Removal) -> None:
    """``criterion``: the name of a criterion that needs probe data, else ``None``."""
    needs = [why for why, need in (
        (f"criterion={criterion!r}", criterion is not None),
        ("compensation=True", compensation),
        (f"removal={rule.label!r}", rule.needs_probe or rule.refits_next),
    ) if need]
    if needs and x is None:
        raise DataError(f"{', '.join(needs)} needs probe data: pass probe= (teacher inputs) to bd.align")


def _student_shapes(student: Union[nn.Module, BNN], schain: Chain) -> dict[str, list[int]]:
    if isinstance(student, BNN):
        return {k: list(v) for k, v in student.shapes.items()}
    shapes: dict[str, list[int]] = {}
    for sl in schain.layers:
        m = sl.module
        w = m.weight if m.weight is not None else m._buffers.get("weight")
        shapes[f"{sl.path}.weight"] = list(w.shape) if w is not None else []
        if sl.has_bias:
            shapes[f"{sl.path}.bias"] = [sl.out_units]
    return shapes


# ----------------------------------------------------------------------------- steps 4-5
@dataclass(frozen=True)
class _Settings:
    score: Criterion
    rule: Removal
    compensation: bool
    step: float
    seed: int


class _AlignmentRun:
    """One alignment: the editor, the probe activations, and the edits and records it produces."""

    def __init__(self, tchain: Chain, schain: Chain, q: MeanFieldPosterior, removed: list[int],
                 settings: _Settings, x: Optional[Tensor]):
        self.tchain, self.q, self.removed, self.s, self.x = tchain, q, set(removed), settings, x
        kept = [t for t in range(len(tchain)) if t not in self.removed]
        self.student_of: dict[int, Layer] = dict(zip(kept, schain.layers))
        self.editor = PosteriorEditor(tchain, q)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.original = self.editor.run(x) if x is not None else None
        self.edits: list[Edit] = []
        self.records = [self._record(t, L) for t, L in enumerate(tchain.layers)]

    def _record(self, t: int, tl: Layer) -> dict[str, Any]:
        sl = self.student_of.get(t)
        return {
            "teacher": tl.path, "student": sl.path if sl is not None else None, "kind": tl.kind,
            "teacher_units": tl.out_units, "student_units": sl.out_units if sl is not None else None,
            "removed": t in self.removed, "residual": None, "reconstruction": [], "trace": [], "kept": None,
        }

    def param_map(self) -> dict[str, str]:
        """Teacher parameter and normalization-module names -> the student's."""
        out: dict[str, str] = {}
        for t, sl in self.student_of.items():
            tl = self.tchain.layers[t]
            for attr in ("weight", "bias"):
                out[f"{tl.path}.{attr}"] = f"{sl.path}.{attr}"
            for (tn, _), (sn, _) in zip(tl.norms(), sl.norms()):
                out[tn] = sn
        return out

    def execute(self) -> None:
        last = len(self.tchain) - 1
        for t in range(len(self.tchain)):
            if t < last:
                self._narrow(t)
                if t in self.removed:
                    self._remove(t)
            self.records[t]["kept"] = list(self.editor.kept[t])

    # -- phi --------------------------------------------------------------------------------
    def _narrow(self, t: int) -> None:
        """Remove layer t's excess units in rounds (a removed layer shrinks to as many units as inputs)."""
        target = self.editor.Wm[t].shape[1] if t in self.removed else self.student_of[t].out_units
        rnd = 0
        while len(self.editor.kept[t]) > target:
            self._prune_round(t, rnd, target)
            if self.s.compensation:
                self._refit(t + 1, self.editor.run(self.x)[0][t + 1], rnd)
            rnd += 1

    def _prune_round(self, t: int, rnd: int, target: int) -> None:
        units = len(self.editor.kept[t])
        scores = torch.as_tensor(self.s.score(self._context(t, rnd))).reshape(-1).to(torch.float64).cpu()
        if scores.numel() != units:
            raise ValueError(f"criterion returned {scores.numel()} scores for {units} units of layer "
                             f"{self.tchain.layers[t].path!r}")
        n_remove = max(1, math.ceil(self.s.step * (units - target)))
        drop = torch.argsort(scores, stable=True)[:n_remove].tolist()
        for pos in drop:
            self.records[t]["trace"].append([rnd, self.editor.kept[t][pos], float(scores[pos])])
        dropped = set(drop)
        keep = [i for i in range(units) if i not in dropped]
        self.editor.restrict(t, keep)
        self.edits.append(Restrict(t, tuple(keep)))

    def _context(self, t: int, rnd: int) -> UnitContext:
        ed, acts = self.editor, None
        if self.x is not None:
            a = ed.run(self.x)[2][t]
            # [N, units, g] for vectors (g = positions per channel after a flatten), maps as they are
            acts = a.reshape(a.shape[0], len(ed.kept[t]), -1) if a.dim() == 2 else a
        return UnitContext(
            self.tchain.layers[t].path, rnd, ed.Wm[t], ed.Ws[t], ed.bm[t], ed.bs[t],
            ed.out_grouped(t, "m"), ed.out_grouped(t, "s"), acts, self.tchain.layers[t + 1].module,
            self.generator, compensated=self.s.compensation,
        )

    def _refit(self, u: int, inputs: Tensor, step: Union[int, str]) -> None:
        """Re-fit layer u's means to the full teacher's pre-activations; recorded on layer u."""
        before, after = self.editor.refit(u, inputs, self.original[1][u])
        self.records[u]["reconstruction"].append({"step": step, "before": before, "after": after})
        self.edits.append(Refit(u))

    # -- psi --------------------------------------------------------------------------------
    def _remove(self, t: int) -> None:
        """Fold the (now square) layer t into the next one by the removal rule's map."""
        w = self.editor.Wm[t]
        mix = self.s.rule.mix(w)
        self.records[t]["residual"] = relative_residual(w, embed_tap(mix, w))
        inputs = self.editor.run(self.x)[0][t] if self.x is not None else None
        self.editor.fold(t, mix)
        self.edits.append(Fold(t, mix.detach().cpu()))
        if self.s.rule.refits_next or self.s.compensation:
            self._refit(t + 1, inputs, "removal")

    # -- step 5 -----------------------------------------------------------------------------
    def measure_errors(self) -> Optional[float]:
        """With probe data: per layer, the relative error of the aligned teacher's pre-activations
        against the full teacher's (by the recorded selections/foldings alone, and with the
        compensating re-fits) into the records; returns the relative output error."""
        if self.x is None:
            return None
        plain = PosteriorEditor(self.tchain, self.q)
        for edit in self.edits:
            if edit.replayable:
                edit.replay(plain)
        _, plain_pres, _, _ = plain.run(self.x)
        _, comp_pres, _, comp_out = self.editor.run(self.x)
        orig_pres, orig_out = self.original[1], self.original[3]
        for t, rec in enumerate(self.records):
            if t not in comp_pres:
                rec["error"] = None
                continue
            # the kept units' pre-activations against the full teacher's
            ref = orig_pres[t].index_select(1, torch.tensor(self.editor.kept[t], device=orig_pres[t].device))
            rec["error"] = {"restricted": relative_error(plain_pres[t], ref),
                            "compensated": relative_error(comp_pres[t], ref)}
        return relative_error(comp_out, orig_out)
