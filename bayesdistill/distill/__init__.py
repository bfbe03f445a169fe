"""Distillation: the teacher posterior as the student prior, layer alignment, and function-space terms.

- :func:`align` / :class:`AlignmentPlan`: map a teacher posterior onto a smaller student's
  shapes (Grabovoy & Strijov, 2021); the package :mod:`bayesdistill.distill.align` holds the
  criteria, removal rules, feasibility checks and the plan.
- :func:`student_from_teacher`: the student BNN with the aligned teacher prior, start and
  normalization statistics, in one call.
- :mod:`.terms`: the function-space terms of the student's Pyro objective
  (``bd.fit(student, data, distill=[...], transfer=...)``), one module each and registered by
  name (:func:`register_term`, :func:`available_terms`, :func:`get_term`): :class:`KD`,
  :class:`VID`, :class:`PKT`, :class:`Hint`, :class:`TinyBERT`; their bases
  :class:`DistillTerm` and :class:`PairTerm`. :func:`heavy_student` two-step transfer (with
  the :class:`DecayWeights` callback).
- :func:`generalized_distillation`: teacher on privileged inputs, student, distilled student
  (Lopez-Paz et al. 2016) in one call, with the :class:`PrivilegedKD` term.
- :mod:`.datafree`: data-free distillation from a teacher's activation record (Lopes et al.
  2017): ``record``, ``reconstruct``, ``data_free_student``.
- :func:`grow` / :class:`GrowthPlan` / :func:`student_from_small`: the reverse of alignment:
  embed a small trained network's posterior into a larger network (more classes, inputs, wider
  and deeper layers; modes net2net, embed, zero, uniform), the package :mod:`.grow`.
- :class:`AdversarialPrior` (term ``adversarial_prior``): an adversarial weight prior: per pair of
  convolution layers a critic tells teacher-posterior kernels from the student's, no unit
  correspondence needed (:mod:`.adversarial`).
- :func:`narrow` / :func:`pruning_curve`: narrowed architectures of a chain network, and the
  teacher's test metrics after alignment to them (no training), per fraction of units removed.
"""

from ..bnn.taps import FeatureTaps
from ..infer.objective import Objective
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
from . import datafree
from .generalized import GeneralizedDistillationResult, generalized_distillation
from .adversarial import AdversarialPrior, CriticTraining, KernelCritic, conv_pairs, kernel_slices
from .grow import GROWTH_MODES, GrowthPlan, GrowthPrior, grow, student_from_small
from .heavy import DecayWeights, HeavyStudentResult, heavy_student
from .student import student_from_teacher
from .terms import (
    KD,
    PKT,
    TERMS,
    PrivilegedKD,
    VID,
    DistillTerm,
    Hint,
    PairTerm,
    TeacherFeatures,
    TermOption,
    TermSpec,
    TinyBERT,
    available_terms,
    default_pairs,
    get_term,
    register_term,
    unregister_term,
)

#: The objective of a student with distillation terms is the generic :class:`bayesdistill.infer.Objective`.
DistillObjective = Objective

__all__ = [
    "KD",
    "VID",
    "PKT",
    "Hint",
    "TinyBERT",
    "PrivilegedKD",
    "heavy_student",
    "HeavyStudentResult",
    "generalized_distillation",
    "GeneralizedDistillationResult",
    "datafree",
    "DecayWeights",
    "DistillTerm",
    "PairTerm",
    "DistillObjective",
    "FeatureTaps",
    "TeacherFeatures",
    "default_pairs",
    "TERMS",
    "TermOption",
    "TermSpec",
    "register_term",
    "unregister_term",
    "available_terms",
    "get_term",
    "align", "AlignmentPlan", "UnitContext", "CRITERIA", "parse_chain", "narrow", "pruning_curve", "aligned_network",
    "register_criterion", "REMOVALS", "register_removal", "check_alignable", "PruningCurve", "student_from_teacher",
    "BLOCK_CRITERIA", "register_block_criterion",
    "grow", "GrowthPlan", "GrowthPrior", "GROWTH_MODES", "student_from_small",
    "AdversarialPrior", "CriticTraining", "KernelCritic", "conv_pairs", "kernel_slices"]
