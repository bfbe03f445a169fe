"""A student from a teacher in one call: the aligned teacher prior, its start and its statistics.

:func:`student_from_teacher` builds the student :class:`~bayesdistill.BNN` of Bayesian
distillation (Grabovoy & Strijov, 2021) from a trained teacher and, for a smaller student, an
alignment plan (:func:`~bayesdistill.align`):

- the prior: :class:`~bayesdistill.priors.TeacherPosterior` (the teacher's posterior, aligned by
  the plan), with the chosen scale and temperature;
- the start: the aligned teacher means (default), the aligned teacher posterior itself (means and
  scales), or the network's own initialization;
- with a start at the aligned teacher, its point estimates: the aligned normalization statistics
  (BatchNorm running mean/var, deterministic affine parameters) and the likelihood's (e.g. a
  learned noise scale), through :meth:`BNN.load_point_estimates`;
- the likelihood: a copy of the teacher's unless one is given.
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Union

from torch import nn

from ..bnn.likelihoods import Likelihood
from ..bnn.network import BNN, NORM_LAYERS
from ..bnn.priors import TeacherPosterior

__all__ = ["student_from_teacher", "STUDENT_INITS"]

#: The starts of :func:`student_from_teacher`.
STUDENT_INITS = ("prior-mean", "teacher", "module")


def student_from_teacher(
    teacher: BNN,
    student_net: nn.Module,
    *,
    plan: Any = None,
    prior_scale: Union[str, float] = "unit",
    temperature: float = 1.0,
    init: str = "prior-mean",
    likelihood: Optional[Likelihood] = None,
    dataset_size: Optional[int] = None,
    init_scale: float = 1e-2,
    bayesian_norm: Optional[bool] = None,
) -> BNN:
    """The student :class:`~bayesdistill.BNN` of ``student_net`` with the (aligned) teacher as prior.

    Args:
        teacher: the trained teacher :class:`~bayesdistill.BNN`.
        student_net: the student network (a copy is taken, as by ``BNN``).
        plan: an :class:`~bayesdistill.AlignmentPlan` from ``bd.align(teacher, student_net)``
            (anything with ``apply(posterior)``), or ``None`` when the student has the teacher's
            architecture.
        prior_scale: the prior's standard deviation, ``scale=`` of
            :class:`~bayesdistill.priors.TeacherPosterior`: ``"unit"`` (default), ``"posterior"``,
            ``"learned"`` or a positive float.
        temperature: multiplies the prior variance (see ``TeacherPosterior``).
        init: where q(w) starts: ``"prior-mean"`` (default): the aligned teacher means, scales
            ``init_scale``; ``"teacher"``: the aligned teacher posterior itself (means and
            scales: the untrained aligned teacher); ``"module"``: the network's own
            initialization, scales ``init_scale`` (the prior alone carries the teacher). With
            ``"prior-mean"`` and ``"teacher"`` the aligned point estimates are loaded as well
            (normalization statistics and the likelihood's parameters, where names and shapes
            match); with ``"module"`` the network keeps its own.
        likelihood: the student's likelihood; ``None`` copies the teacher's (learned noise
            included).
        dataset_size: N of the student's training data; ``None`` takes the teacher's.
        init_scale: the initial posterior standard deviation with ``"prior-mean"`` and ``"module"``.
        bayesian_norm: make the student's normalization layers Bayesian; ``None`` (default): as
            the teacher's are (whether its posterior holds normalization parameters).

    Returns:
        The student BNN, on the teacher's device.

    Raises:
        TypeError: the teacher is not a :class:`~bayesdistill.BNN`.
        ValueError: an unknown ``init`` (or a bad ``prior_scale`` / ``temperature``).
        ShapeMismatchError: the (aligned) teacher does not have the student's parameters (names
            the parameter and the plan).
    """
    if not isinstance(teacher, BNN):
        raise TypeError(f"student_from_teacher expects the teacher as a bd.BNN, got {type(teacher).__name__}")
    if init not in STUDENT_INITS:
        raise ValueError(f"init must be one of {STUDENT_INITS}, got {init!r}")
    q = teacher.posterior()
    prior = TeacherPosterior(q, plan=plan, scale=prior_scale, temperature=temperature)
    aligned = plan.apply(q) if plan is not None else q
    student = BNN(
        student_net,
        prior=prior,
        likelihood=copy.deepcopy(teacher.likelihood) if likelihood is None else likelihood,
        dataset_size=teacher.dataset_size if dataset_size is None else dataset_size,
        init=aligned if init == "teacher" else init,
        init_scale=init_scale,
        bayesian_norm=_norms_are_bayesian(teacher) if bayesian_norm is None else bool(bayesian_norm),
    )
    if init == "prior-mean":  # the aligned statistics go with the aligned means ("teacher": loaded by BNN)
        student.load_point_estimates(aligned.point_estimates)
    return student.to(teacher.loc.device)


def _norms_are_bayesian(teacher: BNN) -> bool:
    norm_types = {t.__name__ for t in NORM_LAYERS}
    return any(info.module_type in norm_types for info in teacher.param_info.values())
