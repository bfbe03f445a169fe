"""Two-step transfer through a heavy (auxiliary) student (Passalis, Tzelepi & Tefas, CVPR 2020).

When teacher and student are heterogeneous, first distil the teacher into an auxiliary
student that has the student's layout but a capacity close to the teacher's (matching only the
final representation), then distil the auxiliary student into the student, matching several
layer pairs. Following the paper's "critical period" observation, the intermediate pairs start
with a high weight that decays geometrically each epoch (x ``decay``), while the final pair
keeps its weight. Both stages are Bayesian SVI fits (:func:`bayesdistill.fit`) with PKT terms
(the paper's probabilistic transfer) in the student's Pyro objective.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from torch import nn

from ..bnn.network import BNN
from ..infer.fit import FitResult, fit
from .function_space import PKT

__all__ = ["heavy_student", "HeavyStudentResult"]


@dataclass
class HeavyStudentResult:
    """The two fits: ``auxiliary`` (teacher -> auxiliary) and ``student`` (auxiliary -> student)."""

    auxiliary: FitResult
    student: FitResult


def heavy_student(
    teacher: Union[BNN, nn.Module],
    auxiliary: BNN,
    student: BNN,
    data: Any,
    *,
    teacher_pair: tuple[str, str],
    pairs: Mapping[str, str],
    epochs: Union[int, tuple[int, int]] = 30,
    weight: float = 1.0,
    intermediate_weight: float = 10.0,
    decay: float = 0.7,
    transfer: Any = None,
    **fit_kwargs: Any,
) -> HeavyStudentResult:
    """Teacher -> auxiliary student -> student, in one call.

    Args:
        teacher: the trained teacher (BNN or nn.Module).
        auxiliary: the heavy student: the student's layout with teacher-like capacity (a BNN).
        student: the student (a BNN).
        data: labelled training data for both stages.
        teacher_pair: ``(teacher path, auxiliary path)`` of the final representations matched in
            stage 1.
        pairs: auxiliary path -> student path for stage 2; the *last* pair is the final one
            (constant ``weight``), the others are intermediate (``intermediate_weight``, decaying).
        epochs: epochs of both stages, or ``(stage1, stage2)``.
        weight: PKT weight of the final pairs.
        intermediate_weight: initial PKT weight of the intermediate pairs (high: the critical period).
        decay: per-epoch multiplier of the intermediate weights (0.7 in the paper).
        transfer: optional unlabelled inputs used by both stages.
        **fit_kwargs: passed to both :func:`bayesdistill.fit` calls (lr, batch_size, seed, ...).

    Stage 2's history has an ``intermediate_weight`` column (the weight after that epoch's
    decay). With ``checkpoint_dir=D`` the stages checkpoint into ``D/auxiliary`` and
    ``D/student``; ``resume=True`` continues whichever stage was interrupted (a finished stage
    1 is restored, not retrained) and stage 2's intermediate weights continue from their
    checkpointed, decayed values (terms' weights are part of their state), so an interrupted
    run ends where an uninterrupted one does (bit-identical on CPU).
    """
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    if not pairs:
        raise ValueError("pairs must name at least the final auxiliary -> student pair")
    e1, e2 = (epochs, epochs) if isinstance(epochs, int) else epochs
    tp, ap = teacher_pair
    root = fit_kwargs.pop("checkpoint_dir", None)
    dirs = (None, None) if root is None else (Path(root) / "auxiliary", Path(root) / "student")
    stage1 = fit(auxiliary, data, epochs=e1, distill=[PKT(teacher, ap, tp, weight=weight)], transfer=transfer,
                 checkpoint_dir=dirs[0], **fit_kwargs)

    # on resume, fit restores the decayed weights with the terms' state (DistillTerm extra state)
    items = list(pairs.items())
    terms = [PKT(auxiliary, sp, a, weight=intermediate_weight) for a, sp in items[:-1]]
    terms.append(PKT(auxiliary, items[-1][1], items[-1][0], weight=weight))
    intermediate = terms[:-1]

    def critical_period(record, bnn) -> Optional[bool]:
        for t in intermediate:
            t.weight *= decay
        record["intermediate_weight"] = intermediate[0].weight if intermediate else 0.0
        return None

    callbacks = list(fit_kwargs.pop("callbacks", ())) + [critical_period]
    stage2 = fit(student, data, epochs=e2, distill=terms, transfer=transfer, callbacks=callbacks,
                 checkpoint_dir=dirs[1], **fit_kwargs)
    return HeavyStudentResult(stage1, stage2)

