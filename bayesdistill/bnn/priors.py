"""Priors over a network's weights, p(w) = prod_i N(w_i | m_i, s_i^2).

A prior is a small specification object. :class:`~bayesdistill.BNN` asks it for a ``(loc,
scale)`` pair per parameter (:meth:`Prior.materialize`) once, at construction, and stores the
tensors as buffers, so ``bnn.to("cuda")`` moves the prior with the network and no CPU constant
is captured in the model.

- :class:`Normal`: isotropic (one loc/scale for every weight) or per tensor (a mapping from
  parameter-name patterns to scales).
- :class:`TeacherPosterior`: the prior is a trained network's posterior q(w_teacher)
  (Grabovoy & Strijov, 2021, "Bayesian distillation of deep learning models"), with the
  variance taken from the posterior (the paper's full variant), set to one (the paper's
  mean-only variant), set to a constant, or tempered.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Union

import torch
from torch import Tensor

from ..errors import ShapeMismatchError
from .posterior import MeanFieldPosterior

__all__ = ["Prior", "Normal", "TeacherPosterior"]

Shapes = Mapping[str, torch.Size]


class Prior:
    """Base class: maps parameter names and shapes to prior ``(loc, scale)`` tensors."""

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
            ``{"*.bias": 10.0, "*": 1.0}``.
    """

    def __init__(self, loc: Union[float, Mapping[str, float]] = 0.0, scale: Union[float, Mapping[str, float]] = 1.0):
        self.loc = loc
        self.scale = scale
        if not isinstance(scale, Mapping) and not float(scale) > 0:
            raise ValueError(f"Normal prior: scale must be > 0, got {scale!r}")

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
        return f"Normal(loc={self.loc!r}, scale={self.scale!r})"


class TeacherPosterior(Prior):
    """The student's prior is the teacher's posterior: p(w_student) = q(w_teacher).

    Grabovoy & Strijov (2021). With identical architectures this is exact: every loc and scale
    of the prior equals the teacher's. Shapes that differ raise :class:`ShapeMismatchError`
    naming the parameter (an alignment plan maps a teacher onto a different student).

    Args:
        posterior: the teacher's :class:`MeanFieldPosterior`.
        variance: ``"posterior"`` (scale = teacher scale, the paper's full variant), ``"unit"``
            (scale = 1, the paper's mean-only variant), or a float (that scale, in weight units).
        temperature: multiplies the prior *variance* (scale is multiplied by sqrt(temperature));
            > 1 widens the prior so the data can move the student further from the teacher.
    """

    def __init__(self, posterior: MeanFieldPosterior, variance: Union[str, float] = "posterior", temperature: float = 1.0):
        if isinstance(variance, str) and variance not in ("posterior", "unit"):
            raise ValueError(f"TeacherPosterior: variance must be 'posterior', 'unit' or a float, got {variance!r}")
        if not isinstance(variance, str) and not float(variance) > 0:
            raise ValueError(f"TeacherPosterior: a float variance must be > 0, got {variance!r}")
        if not temperature > 0:
            raise ValueError(f"TeacherPosterior: temperature must be > 0, got {temperature!r}")
        self.posterior = posterior
        self.variance = variance
        self.temperature = float(temperature)

    def materialize(self, shapes: Shapes) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        q = self.posterior
        for name, shape in shapes.items():
            if name not in q.locs:
                raise ShapeMismatchError(
                    f"TeacherPosterior: the student has parameter {name!r} but the teacher posterior "
                    f"does not (teacher parameters: {list(q.locs)}); align the architectures first"
                )
            if q.locs[name].shape != torch.Size(shape):
                raise ShapeMismatchError(
                    f"TeacherPosterior: parameter {name!r} has shape {tuple(shape)} in the student but "
                    f"{tuple(q.locs[name].shape)} in the teacher posterior; align the architectures first"
                )
        locs = {k: q.locs[k].detach().clone() for k in shapes}
        if self.variance == "posterior":
            scales = {k: q.scales[k].detach().clone() for k in shapes}
        elif self.variance == "unit":
            scales = {k: torch.tensor(1.0, dtype=locs[k].dtype) for k in shapes}
        else:
            scales = {k: torch.tensor(float(self.variance), dtype=locs[k].dtype) for k in shapes}
        if self.temperature != 1.0:
            factor = self.temperature**0.5
            scales = {k: v * factor for k, v in scales.items()}
        return locs, scales

    def __repr__(self) -> str:
        return f"TeacherPosterior({len(self.posterior)} tensors, variance={self.variance!r}, temperature={self.temperature})"
