"""Distillation: the teacher posterior as the student prior, and layer alignment.

- :func:`align` / :class:`AlignmentPlan`: map a teacher posterior onto a smaller student's
  shapes (Grabovoy & Strijov, 2021).
- :class:`KD`, :class:`VID`, :class:`PKT`, :class:`Hint`: function-space terms of the
  student's Pyro objective (``bd.fit(student, data, distill=[...], transfer=...)``);
  :class:`TinyBERT` layer losses; :func:`heavy_student` two-step transfer.
- :func:`narrow` / :func:`pruning_curve`: narrowed architectures of a chain network, and the
  teacher's test metrics after alignment to them (no training), per fraction of units removed.
"""

from .align import CRITERIA, AlignmentPlan, UnitContext, align
from .chain import parse_chain
from .heavy import HeavyStudentResult, heavy_student
from .tinybert import TinyBERT
from .function_space import KD, PKT, VID, DistillObjective, DistillTerm, FeatureTaps, Hint, TeacherFeatures
from .pruning import aligned_network, narrow, pruning_curve

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
    "align", "AlignmentPlan", "UnitContext", "CRITERIA", "parse_chain", "narrow", "pruning_curve", "aligned_network"]
