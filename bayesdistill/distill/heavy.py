"""Two-step transfer through a heavy (auxiliary) student (Passalis, Tzelepi & Tefas, CVPR 2020).

When teacher and student are heterogeneous, first distil the teacher into an auxiliary
student that has the student's layout but a capacity close to the teacher's (matching only the
final representation), then distil the auxiliary student into the student, matching several
layer pairs. Following the paper's "critical period" observation, the intermediate pairs start
with a high weight that decays geometrically each epoch (x ``decay``, the :class:`DecayWeights`
callback), while the final pair keeps its weight. Both stages are Bayesian SVI fits
(:func:`bayesdistill.fit`) with PKT terms (the paper's probabilistic transfer) in the student's
Pyro objective.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from torch import nn

from .._checks import check_number
from ..bnn.network import BNN
from ..infer.callbacks import Callback
from ..infer.fit import FitResult, fit
from ..infer.objective import Term
from .terms.base import default_pairs
from .terms.pkt import PKT

if TYPE_CHECKING:
    from ..infer.engine import SVIEngine

__all__ = ["heavy_student", "HeavyStudentResult", "DecayWeights"]


class DecayWeights(Callback):
    """Multiply the weights of ``terms`` by ``factor`` after every epoch (the heavy student's
    critical period), and record the weight after that epoch's decay in the history column
    ``column`` (the first term's; 0.0 without terms).

    The weights are the terms' state (:class:`~bayesdistill.infer.Term` extra state), so a
    checkpoint holds the decayed weights and a resumed run continues the decay exactly.
    """

    def __init__(self, terms: Sequence[Term], factor: float, column: str = "intermediate_weight"):
        self.terms = list(terms)
        bad = [type(t).__name__ for t in self.terms if not isinstance(t, Term)]
        if bad:
            raise TypeError(f"DecayWeights decays bd.infer.Term weights, got {bad}")
        self.factor = check_number("factor", factor, minimum=0.0, maximum=1.0, exclusive_minimum=True)
        self.column = column

    def settings(self) -> dict[str, Any]:
        return {f"{self.column}_decay": self.factor}

    def on_epoch_end(self, engine: "SVIEngine", record: dict[str, Any]) -> None:
        for t in self.terms:
            t.weight *= self.factor
        record[self.column] = self.terms[0].weight if self.terms else 0.0


@dataclass
class HeavyStudentResult:
    """The two fits: ``auxiliary`` (teacher -> auxiliary) and ``student`` (auxiliary -> student)."""

    auxiliary: FitResult
    student: FitResult


def _pairs(name: str, pairs: Any) -> dict[str, str]:
    if not isinstance(pairs, Mapping):
        raise TypeError(f"heavy_student: {name} must be a mapping {{from_path: to_path}}, got {pairs!r}"
                        + (" (teacher_pair=(t, a) is now teacher_pairs={t: a})" if isinstance(pairs, tuple) else ""))
    if not pairs:
        raise ValueError(f"heavy_student: {name} must name at least one pair")
    return dict(pairs)


def heavy_student(
    teacher: Union[BNN, nn.Module],
    auxiliary: BNN,
    student: BNN,
    data: Any,
    *,
    teacher_pairs: Optional[Mapping[str, str]] = None,
    pairs: Optional[Mapping[str, str]] = None,
    epochs: Union[int, tuple[int, int]] = 30,
    weight: float = 1.0,
    intermediate_weight: float = 10.0,
    decay: float = 0.7,
    normalize: str = "uniform",
    transfer: Any = None,
    **fit_kwargs: Any,
) -> HeavyStudentResult:
    """Teacher -> auxiliary student -> student, in one call.

    Args:
        teacher: the trained teacher (BNN or nn.Module).
        auxiliary: the heavy student: the student's layout with teacher-like capacity (a BNN).
        student: the student (a BNN).
        data: labelled training data for both stages.
        teacher_pairs: teacher path -> auxiliary path of the final representations matched in
            stage 1 (one PKT term, ``weight``); default: the teacher's last hidden layer -> the
            auxiliary's (:func:`~bayesdistill.distill.default_pairs`).
        pairs: auxiliary path -> student path for stage 2; the *last* pair is the final one
            (the term ``pkt``, constant ``weight``), the others are intermediate (the term
            ``pkt_intermediate``, ``intermediate_weight``, decaying); default: the auxiliary's
            last hidden layer -> the student's (one final pair, no intermediate ones).
        epochs: epochs of both stages, or ``(stage1, stage2)``.
        weight: PKT weight of the final pairs.
        intermediate_weight: initial PKT weight of the intermediate pairs (high: the critical period).
        decay: per-epoch multiplier of the intermediate weights (0.7 in the paper), in (0, 1].
        normalize: the PKT terms' ``normalize`` (:class:`~bayesdistill.distill.PKT`): ``"uniform"``
            (default: each KL in units of the teacher's KL from uniform, so ``weight=1`` is about
            one label's worth) or ``"none"`` (nats, the paper's and this function's before).
        transfer: optional unlabelled inputs used by both stages.
        **fit_kwargs: passed to both :func:`bayesdistill.fit` calls (lr, batch_size, seed, ...).

    Stage 2's history has an ``intermediate_weight`` column (the weight after that epoch's
    decay, :class:`DecayWeights`). With ``checkpoint_dir=D`` the stages checkpoint into
    ``D/auxiliary`` and ``D/student``; ``resume=True`` continues whichever stage was interrupted
    (a finished stage 1 is restored, not retrained) and stage 2's intermediate weights continue
    from their checkpointed, decayed values (terms' weights are part of their state), so an
    interrupted run ends where an uninterrupted one does (bit-identical on CPU).
    """
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    teacher_pairs = (default_pairs(teacher, auxiliary, "heavy_student (teacher -> auxiliary)")
                     if teacher_pairs is None else _pairs("teacher_pairs", teacher_pairs))
    pairs = (default_pairs(auxiliary, student, "heavy_student (auxiliary -> student)")
             if pairs is None else _pairs("pairs", pairs))
    e1, e2 = (epochs, epochs) if isinstance(epochs, int) else epochs
    root = fit_kwargs.pop("checkpoint_dir", None)
    dirs = (None, None) if root is None else (Path(root) / "auxiliary", Path(root) / "student")
    stage1 = fit(auxiliary, data, epochs=e1, distill=[PKT(teacher, teacher_pairs, weight=weight, normalize=normalize)],
                 transfer=transfer,
                 checkpoint_dir=dirs[0], **fit_kwargs)

    # on resume, fit restores the decayed weights with the terms' state (Term extra state)
    items = list(pairs.items())
    intermediate = ([PKT(auxiliary, dict(items[:-1]), weight=intermediate_weight, normalize=normalize,
                         name="pkt_intermediate")] if len(items) > 1 else [])
    terms = [*intermediate, PKT(auxiliary, dict(items[-1:]), weight=weight, normalize=normalize)]
    callbacks = list(fit_kwargs.pop("callbacks", ())) + [DecayWeights(intermediate, decay)]
    stage2 = fit(student, data, epochs=e2, distill=terms, transfer=transfer, callbacks=callbacks,
                 checkpoint_dir=dirs[1], **fit_kwargs)
    return HeavyStudentResult(stage1, stage2)
