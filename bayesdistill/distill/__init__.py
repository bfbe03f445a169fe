"""Distillation: the teacher posterior as the student prior, and layer alignment.

- :func:`align` / :class:`AlignmentPlan`: map a teacher posterior onto a smaller student's
  shapes (Grabovoy & Strijov, 2021); the package :mod:`bayesdistill.distill.align` holds the
  criteria, removal rules, feasibility checks and the plan.
- :func:`student_from_teacher`: the student BNN with the aligned teacher prior, start and
  normalization statistics, in one call.
- :class:`KD`, :class:`VID`, :class:`PKT`, :class:`Hint`: function-space terms of the
  student's Pyro objective (``bd.fit(student, data, distill=[...], transfer=...)``);
  :class:`TinyBERT` layer losses; :func:`heavy_student` two-step transfer.
- :func:`narrow` / :func:`pruning_curve`: narrowed architectures of a chain network, and the
  teacher's test metrics after alignment to them (no training), per fraction of units removed.
"""

from .align import (
    BLOCK_CRITERIA,
    CRITERIA,
    REMOVALS,
    AlignmentPlan,
    PruningCurve,
    UnitContext,
    align,
    aligned_network,
    check_alignable,
    narrow,
    parse_chain,
    pruning_curve,
    register_block_criterion,
    register_criterion,
    register_removal,
)
from .heavy import HeavyStudentResult, heavy_student
from .tinybert import TinyBERT
from .function_space import KD, PKT, VID, DistillObjective, DistillTerm, FeatureTaps, Hint, TeacherFeatures
from .student import student_from_teacher

__all__ = [
    "KD",
    "VID",
    "PKT",
    "Hint",
    "TinyBERT",
    "heavy_student",
    "HeavyStudentResult",
    "DistillTerm",
    "DistillObjective",
    "FeatureTaps",
    "TeacherFeatures",
    "align", "AlignmentPlan", "UnitContext", "CRITERIA", "parse_chain", "narrow", "pruning_curve", "aligned_network",
    "register_criterion", "REMOVALS", "register_removal", "check_alignable", "PruningCurve", "student_from_teacher",
    "BLOCK_CRITERIA", "register_block_criterion"]
