"""Distillation: the teacher posterior as the student prior, and layer alignment.

- :func:`align` / :class:`AlignmentPlan`: map a teacher posterior onto a smaller student's
  shapes (Grabovoy & Strijov, 2021).
"""

from .align import CRITERIA, AlignmentPlan, UnitContext, align
from .chain import parse_chain

__all__ = ["align", "AlignmentPlan", "UnitContext", "CRITERIA", "parse_chain"]
