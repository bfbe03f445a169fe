"""Priors over a network's weights, p(w) = prod_i N(w_i | m_i, s_i^2).

A prior is a small specification object. :class:`~bayesdistill.BNN` asks it for a ``(loc,
scale)`` pair per parameter (:meth:`Prior.materialize`) once, at construction, and stores the
tensors as buffers, so ``bnn.to("cuda")`` moves the prior with the network and no CPU constant
is captured in the model.

- :class:`Normal`: isotropic (one loc/scale for every weight) or per tensor (a mapping from
  parameter-name patterns to scales).
- :class:`TeacherPosterior`: the prior is a trained network's posterior q(w_teacher)
  (Grabovoy & Strijov, 2021, "Bayesian distillation of deep learning models"), optionally
  mapped onto a different student by an alignment plan, with the scale (standard deviation)
  taken from the posterior (the paper's full variant), set to one (the paper's mean-only
  variant), set to a constant, tempered, or learned from the data (empirical Bayes).

Learned prior scales (empirical Bayes, type-II maximum likelihood). A prior whose
:attr:`Prior.learn_scale` is true gives :class:`~bayesdistill.BNN` only *base* scales; the BNN
then owns one learnable log-multiplier per parameter tensor (``bnn.prior_log_scale``, shape
``[num_sites]``, initialized at 0), and the prior of tensor ``l`` is
``N(loc, (base_scale * exp(prior_log_scale[l]))^2)``. The multipliers are fitted jointly with
q(w) by maximizing the ELBO (:func:`~bayesdistill.fit` optimizes every parameter of the BNN). The
prior enters the ELBO only through KL(q || p), so for a given q the optimum is closed form: the
squared multiplier of tensor ``l`` is ``mean_i(((mu_i - m_i)^2 + sigma_i^2) / base_i^2)`` over its
weights i; with a constant base scale the learned prior variance is
``s_l^2 = mean_i((mu_i - m_i)^2 + sigma_i^2)``. The data (through q) decide how far the student may
move from the prior means.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any, Union

import torch
from torch import Tensor

from .._checks import check_number
from ..errors import ShapeMismatchError
from .posterior import MeanFieldPosterior

__all__ = ["Prior", "Normal", "TeacherPosterior"]

Shapes = Mapping[str, torch.Size]


class Prior:
    """Base class: maps parameter names and shapes to prior ``(loc, scale)`` tensors.

    Attributes:
        learn_scale: when true, the materialized scales are *base* scales and
            :class:`~bayesdistill.BNN` learns one log-multiplier per parameter tensor on top of
            them (empirical Bayes; see the module docstring). ``False`` on the base class.
    """

    learn_scale: bool = False

    def materialize(self, shapes: Shapes) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Return ``(locs, scales)``: name -> tensor broadcastable to the parameter's shape.

        Scalars (0-d tensors) are allowed; :class:`~bayesdistill.BNN` broadcasts them to full
        flat ``prior_loc``/``prior_scale`` buffers (one value per weight each).
        """
        raise NotImplementedError


def _pattern_value(name: str, spec: Union[float, Mapping[str, float]], what: str) -> float:
    if not isinstance(spec, Mapping):
        return float(spec)
    for pattern, value in spec.items():
        if fnmatch.fnmatchcase(name, pattern):
            return float(value)
    raise KeyError(
        f"Normal prior: no {what} given for parameter {name!r}; patterns given: {list(spec)} "
        "(add a '*' entry as a default)"
    )


class Normal(Prior):
    """Gaussian prior N(loc, scale^2) on every weight.

    Args:
        loc: prior mean (a float for all weights, or a mapping from ``fnmatch`` patterns of
            parameter names to floats, first match wins).
        scale: prior standard deviation, > 0 (float or pattern mapping like ``loc``), e.g.
            ``{"*.bias": 10.0, "*": 1.0}``. With ``learn_scale=True`` this is the initial (base)
            scale.
        learn_scale: learn one scale multiplier per parameter tensor by empirical Bayes (type-II
            maximum likelihood on the ELBO): the prior of tensor ``l`` is
            ``N(loc, (scale * exp(bnn.prior_log_scale[l]))^2)``, the multiplier starting at 1.
            Inspect the fitted scales with ``bnn.prior_scales()``.
    """

    def __init__(
        self,
        loc: Union[float, Mapping[str, float]] = 0.0,
        scale: Union[float, Mapping[str, float]] = 1.0,
        learn_scale: bool = False,
    ):
        self.loc = loc
        self.scale = scale
        self.learn_scale = bool(learn_scale)
        for what, spec in (("loc", loc), ("scale", scale)):
            items = spec.items() if isinstance(spec, Mapping) else [(None, spec)]
            for pattern, v in items:
                name = f"Normal prior: {what}" + (f" for {pattern!r}" if pattern is not None else "")
                check_number(name, v, **({"minimum": 0.0, "exclusive_minimum": True} if what == "scale" else {}))

    def materialize(self, shapes: Shapes) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        locs, scales = {}, {}
        for name in shapes:
            s = _pattern_value(name, self.scale, "scale")
            if not s > 0:
                raise ValueError(f"Normal prior: scale for {name!r} must be > 0, got {s}")
            locs[name] = torch.tensor(_pattern_value(name, self.loc, "loc"))
            scales[name] = torch.tensor(s)
        return locs, scales

    def __repr__(self) -> str:
        learned = ", learn_scale=True" if self.learn_scale else ""
        return f"Normal(loc={self.loc!r}, scale={self.scale!r}{learned})"


class TeacherPosterior(Prior):
    """The student's prior is the teacher's posterior: p(w_student) = q(w_teacher).

    Grabovoy & Strijov (2021). With identical architectures this is exact: every loc of the
    prior equals the teacher's (and every scale, with ``scale="posterior"``). A student of a
    different architecture needs an alignment ``plan`` that maps the teacher's posterior onto the
    student's parameters; shapes that still differ raise :class:`ShapeMismatchError` naming the
    parameter (and the plan, when one was given).

    Args:
        posterior: the teacher's :class:`MeanFieldPosterior`.
        plan: an alignment plan, or ``None`` (identical architectures). Any object with a method
            ``apply(posterior) -> MeanFieldPosterior`` that returns the teacher's posterior in the
            student's names and shapes (e.g. rows of pruned units removed); it is applied when the
            prior is materialized, i.e. when the student :class:`~bayesdistill.BNN` is built.
        scale: the prior scale (standard deviation, weight units) of the student's weights:

            - ``"unit"`` (default): 1 for every weight (the paper's mean-only variant). Measured
              best: docs/distillation.md (synthetic regression, 5+5 seeds) and
              docs/distillation-mnist1d.md (3 seeds) found the teacher's own scales too tight
              (they pin the student to the aligned teacher) and ``"learned"`` no better;
            - ``"posterior"``: the teacher's scales (the paper's full variant; with an identity
              plan the prior is then exactly q(w_teacher));
            - a positive float: that standard deviation for every weight;
            - ``"learned"``: one scale per parameter tensor (a layer's weight and its bias each get
              their own), fitted by empirical Bayes (type-II maximum likelihood on the student's
              ELBO, jointly with q(w)) so that the data decide how far to trust the teacher's
              means. The prior is ``N(teacher_mean, s_l^2)`` with ``s_l = exp(bnn.prior_log_scale[l])``
              starting at 1; ``bnn.prior_scales()`` shows the fitted values.
        temperature: multiplies the prior *variance* (the scale is multiplied by
            sqrt(temperature)); > 1 widens the prior so the data can move the student further from
            the teacher. With ``scale="learned"`` it sets the initial scale, sqrt(temperature).

    Raises:
        TypeError: for the former argument name ``variance=`` (it held a standard deviation; the
            argument is ``scale=``), or a ``plan`` without ``apply``.
        ValueError: an unknown scale option, a non-positive float scale or temperature.
    """

    SCALES = ("posterior", "unit", "learned")

    def __init__(
        self,
        posterior: MeanFieldPosterior,
        plan: Any = None,
        scale: Union[str, float] = "unit",
        temperature: float = 1.0,
        **unknown: Any,
    ):
        if "variance" in unknown:
            raise TypeError(
                "TeacherPosterior: the argument variance= is now scale= (it is a standard deviation): "
                f"TeacherPosterior(posterior, scale={unknown['variance']!r})"
            )
        if unknown:
            raise TypeError(f"TeacherPosterior got unexpected keyword arguments {sorted(unknown)}")
        if isinstance(scale, str) and scale not in self.SCALES:
            raise ValueError(
                f"TeacherPosterior: scale must be 'posterior', 'unit', 'learned' or a positive float, got {scale!r}"
            )
        if not isinstance(scale, str) and not float(scale) > 0:
            raise ValueError(f"TeacherPosterior: a float scale (standard deviation) must be > 0, got {scale!r}")
        if not temperature > 0:
            raise ValueError(f"TeacherPosterior: temperature must be > 0, got {temperature!r}")
        if plan is not None and not callable(getattr(plan, "apply", None)):
            raise TypeError(
                f"TeacherPosterior: plan must have a method apply(posterior) -> MeanFieldPosterior, "
                f"got {type(plan).__name__}"
            )
        self.posterior = posterior
        self.plan = plan
        self.scale = scale
        self.temperature = float(temperature)
        self.learn_scale = scale == "learned"

    def _aligned(self) -> MeanFieldPosterior:
        if self.plan is None:
            return self.posterior
        q = self.plan.apply(self.posterior)
        if not isinstance(q, MeanFieldPosterior):
            raise TypeError(
                f"TeacherPosterior: the alignment plan {self.plan!r} returned a {type(q).__name__}; "
                "plan.apply(posterior) must return a MeanFieldPosterior in the student's shapes"
            )
        return q

    def materialize(self, shapes: Shapes) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        q = self._aligned()
        if self.plan is None:
            source, fix = "the teacher posterior", "align the architectures first (plan=...)"
        else:
            source = f"the teacher posterior after the alignment plan {self.plan!r}"
            fix = "the plan does not produce the student's parameters; check the plan against the student"
        for name, shape in shapes.items():
            if name not in q.locs:
                raise ShapeMismatchError(
                    f"TeacherPosterior: the student has parameter {name!r} but {source} does not "
                    f"(teacher parameters: {list(q.locs)}); {fix}"
                )
            if q.locs[name].shape != torch.Size(shape):
                raise ShapeMismatchError(
                    f"TeacherPosterior: parameter {name!r} has shape {tuple(shape)} in the student but "
                    f"{tuple(q.locs[name].shape)} in {source}; {fix}"
                )
        locs = {k: q.locs[k].detach().clone() for k in shapes}
        if self.scale == "posterior":
            scales = {k: q.scales[k].detach().clone() for k in shapes}
        elif self.scale in ("unit", "learned"):
            scales = {k: torch.tensor(1.0, dtype=locs[k].dtype) for k in shapes}
        else:
            scales = {k: torch.tensor(float(self.scale), dtype=locs[k].dtype) for k in shapes}
        if self.temperature != 1.0:
            factor = self.temperature**0.5
            scales = {k: v * factor for k, v in scales.items()}
        return locs, scales

    def __repr__(self) -> str:
        plan = f", plan={self.plan!r}" if self.plan is not None else ""
        return (
            f"TeacherPosterior({len(self.posterior)} tensors{plan}, scale={self.scale!r}, "
            f"temperature={self.temperature})"
        )
