"""The grown student in one call: the small posterior as the prior of the old weights, a broad prior
on the new ones, and the plan's start.

:class:`GrowthPrior` is the large network's prior:

- old entries (:meth:`GrowthPlan.old_masks`: original small weights): ``N(m, s^2)`` with ``m`` the
  grown posterior mean (the small posterior mean; divided by the number of copies for the outgoing
  weights of units Net2Net copied) and ``s`` 1 (``"unit"``, the default, as
  :func:`~bayesdistill.student_from_teacher`), the grown posterior scales (``"posterior"``) or a
  float;
- new entries (new units, copies, new inputs/outputs, inserted layers): ``N(0, new_scale^2)``,
  ``new_scale`` 1 by default (the ``Normal(0, 1)`` a network trained from scratch gets).

:func:`student_from_small` mirrors :func:`~bayesdistill.student_from_teacher`: it builds (or takes)
the plan, the prior, the start (the grown means, the grown posterior, or the network's own
initialization) and the grown normalization statistics.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..._checks import check_number
from ...bnn.likelihoods import Likelihood
from ...bnn.network import BNN
from ...bnn.posterior import MeanFieldPosterior
from ...bnn.priors import Prior
from ...errors import ShapeMismatchError
from .driver import grow
from .plan import GrowthPlan

__all__ = ["GrowthPrior", "student_from_small", "GROWN_INITS"]

#: The starts of :func:`student_from_small`.
GROWN_INITS = ("grown", "grown-posterior", "module")


class GrowthPrior(Prior):
    """The prior of a grown network: the small posterior on the old weights, ``N(0, new_scale^2)``
    on the new ones (see the module docstring).

    Args:
        posterior: the small network's :class:`MeanFieldPosterior`.
        plan: the :class:`GrowthPlan` from the small network to the large one.
        scale: the prior scale of old entries: ``"unit"`` (1), ``"posterior"`` (the grown
            posterior's scales) or a positive float.
        new_scale: the prior scale of new entries (> 0).
        temperature: multiplies the prior variance of the old entries.
    """

    SCALES = ("unit", "posterior")

    def __init__(self, posterior: MeanFieldPosterior, plan: GrowthPlan, scale: Union[str, float] = "unit",
                 new_scale: float = 1.0, temperature: float = 1.0):
        if not isinstance(plan, GrowthPlan):
            raise TypeError(f"GrowthPrior: plan must be a GrowthPlan (bd.distill.grow), got {type(plan).__name__}")
        if isinstance(scale, str) and scale not in self.SCALES:
            raise ValueError(f"GrowthPrior: scale must be 'unit', 'posterior' or a positive float, got {scale!r}")
        if not isinstance(scale, str):
            scale = check_number("GrowthPrior scale", scale, minimum=0.0, exclusive_minimum=True)
        self.posterior, self.plan, self.scale = posterior, plan, scale
        self.new_scale = check_number("new_scale", new_scale, minimum=0.0, exclusive_minimum=True)
        self.temperature = check_number("temperature", temperature, minimum=0.0, exclusive_minimum=True)

    def materialize(self, shapes: Mapping[str, torch.Size]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        q = self.plan.apply(self.posterior)
        masks = self.plan.old_masks()
        locs, scales = {}, {}
        for name, shape in shapes.items():
            if name not in q.locs:
                raise ShapeMismatchError(f"GrowthPrior: the large network has parameter {name!r} but the growth plan "
                                         f"does not produce it (it produces {list(q.locs)})")
            if q.locs[name].shape != torch.Size(shape):
                raise ShapeMismatchError(f"GrowthPrior: parameter {name!r} has shape {tuple(shape)} in the network but "
                                         f"{tuple(q.locs[name].shape)} in the growth plan")
            mask = masks[name].to(q.locs[name].device)
            mean = q.locs[name].detach()
            if self.scale == "unit":
                old = torch.ones_like(mean)
            elif self.scale == "posterior":
                old = q.scales[name].detach().clone()
            else:
                old = torch.full_like(mean, float(self.scale))
            old = old * self.temperature ** 0.5
            locs[name] = torch.where(mask, mean, torch.zeros_like(mean))
            scales[name] = torch.where(mask, old, torch.full_like(mean, self.new_scale))
        return locs, scales

    def __repr__(self) -> str:
        return (f"GrowthPrior(mode={self.plan.mode!r}, scale={self.scale!r}, new_scale={self.new_scale}, "
                f"temperature={self.temperature})")


def student_from_small(
    small: BNN,
    large_net: nn.Module,
    *,
    plan: Optional[GrowthPlan] = None,
    mode: str = "net2net",
    prior_scale: Union[str, float] = "unit",
    new_prior_scale: float = 1.0,
    temperature: float = 1.0,
    init: str = "grown",
    likelihood: Optional[Likelihood] = None,
    dataset_size: Optional[int] = None,
    init_scale: float = 1e-2,
    **grow_options: Any,
) -> BNN:
    """The large :class:`~bayesdistill.BNN` grown from a trained small one, ready for ``bd.fit``.

    Args:
        small: the trained small network (a BNN).
        large_net: the large network (a copy is taken, as by ``BNN``).
        plan: a :class:`GrowthPlan` (``bd.distill.grow(small, large_net, ...)``); ``None`` builds one
            with ``mode`` and ``grow_options`` (``inputs``, ``outputs``, ``layer_map``, ``seed``).
        mode: the growth mode when no plan is given.
        prior_scale: prior scale of the old weights (``"unit"``, ``"posterior"`` or a float).
        new_prior_scale: prior scale of the new weights (default 1, as a network from scratch).
        temperature: multiplies the old weights' prior variance.
        init: where q(w) starts: ``"grown"`` (default): the grown means (old, copied and the mode's
            new values) with scales ``init_scale``; ``"grown-posterior"``: the grown posterior
            (old scales from the small posterior, new ones the plan's ``new_scale``); ``"module"``:
            the network's own initialization (the prior alone carries the small network).
        likelihood: the large network's likelihood; ``None`` copies the small one's.
        dataset_size: N of the large network's training data; ``None`` takes the small one's.
        init_scale: initial posterior scale with ``"grown"`` and ``"module"``.

    Returns:
        The grown BNN (with ``init="grown"`` or ``"grown-posterior"`` and a function-preserving
        mode, its posterior-mean network computes the small network's outputs on the old outputs).
    """
    if not isinstance(small, BNN):
        raise TypeError(f"student_from_small expects the small network as a bd.BNN, got {type(small).__name__}")
    if init not in GROWN_INITS:
        raise ValueError(f"init must be one of {GROWN_INITS}, got {init!r}")
    if plan is None:
        plan = grow(small, large_net, mode=mode, **grow_options)
    elif grow_options or mode != "net2net":
        raise TypeError("student_from_small: pass either plan= or the options to build one (mode, inputs, outputs, "
                        f"...), not both (got plan and {sorted(grow_options) + (['mode'] if mode != 'net2net' else [])})")
    q = small.posterior()
    prior = GrowthPrior(q, plan, scale=prior_scale, new_scale=new_prior_scale, temperature=temperature)
    start: Union[str, MeanFieldPosterior] = "module"
    if init != "module":
        grown = plan.apply(q)
        if init == "grown":
            grown = MeanFieldPosterior(grown.locs, {k: torch.full_like(v, float(init_scale)) for k, v in grown.scales.items()},
                                       grown.info, grown.point_estimates, grown.metadata)
        start = grown
    student = BNN(
        large_net,
        prior=prior,
        likelihood=copy.deepcopy(small.likelihood) if likelihood is None else likelihood,
        dataset_size=small.dataset_size if dataset_size is None else dataset_size,
        init=start,
        init_scale=init_scale,
    )
    return student.to(small.loc.device)
