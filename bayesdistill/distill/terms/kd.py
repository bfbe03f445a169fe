"""Hinton knowledge distillation (Hinton, Vinyals & Dean 2015) as a term of the student's objective."""

from __future__ import annotations

from typing import Optional, Union

import torch.nn.functional as F
from torch import Tensor, nn

from ...bnn.network import BNN
from .base import DistillTerm
from .registry import TermOption, register_term

__all__ = ["KD"]


@register_term(
    "kd",
    description="Hinton knowledge distillation: soft targets of temperature T, the likelihood scaled by 1 - a",
    options=[
        # T = 1: the teacher's predictive distribution as a soft label; T > 1 (with the T^2 factor)
        # made Bayesian students over-confident in benchmarks/table.py (docs/function-space.md)
        TermOption("temperature", float, 1.0, "softmax temperature T", range="(0, inf)"),
        TermOption("weight", float, 0.5, "weight a of the KD term (the teacher's share of each example's label); "
                   "the likelihood is scaled by 1 - a", range="(0, 1]"),
    ],
    build=lambda teacher, pairs, temperature, weight: [KD(teacher, temperature=temperature, weight=weight)],
    tasks=("classification",),
)
class KD(DistillTerm):
    r"""Hinton knowledge distillation: ``(1 - a) CE(y, z_s) + a T^2 KL(softmax(z_t/T) || softmax(z_s/T))``.

    Hinton, Vinyals & Dean (2015). ``weight`` is a in [0, 1]; the student's likelihood is scaled
    by 1 - a (on labelled batches). Outputs must be logits ``[B, C]`` of the same C. The
    log-factor is ``-T^2 KL(softmax(z_t/T) || softmax(z_s/T))`` per example; ``loss`` reports its
    batch mean with the sign flipped (nats per example, before the weight).

    **Units and defaults** (docs/function-space.md, "Weights"). With T = 1 (the default) the
    log-factor is ``E_{y ~ p_t}[log p_s(y | x)] + H(p_t)``: the student's log-likelihood of a
    label drawn from the teacher's predictive distribution, up to a constant. Each example then
    carries one label's worth of likelihood, ``(1 - a)`` of its own label and ``a`` of the
    teacher's soft label (a = 0.5 by default): the term is a proper scoring rule, and a student
    that cannot match its teacher stays calibrated (if the teacher is). With T > 1 the T^2 KL
    approaches a squared error between logits (Hinton's high-temperature limit): a student weaker
    than its teacher then copies the teacher's confidence without its accuracy: with T = 4,
    a = 0.9 (RepDistiller's setting, and this package's defaults before) the Bayesian students of
    ``benchmarks/table.py`` on MNIST-1D became over-confident, with a higher NLL and ECE than the
    plain student, and T = 2 did the same; T = 1 did not (docs/function-space.md, "Weights").
    """

    def __init__(self, teacher: Union[BNN, nn.Module], temperature: float = 1.0, weight: float = 0.5,
                 teacher_mode: str = "mean", *, name: Optional[str] = None):
        if not 0 <= weight <= 1:
            raise ValueError(f"KD: weight (alpha) must lie in [0, 1], got {weight}")
        if not temperature > 0:
            raise ValueError(f"KD: temperature must be > 0, got {temperature}")
        super().__init__(teacher, weight, name or "kd", teacher_mode)
        self.temperature = float(temperature)

    @property
    def likelihood_weight(self) -> float:  # type: ignore[override]
        """1 - a: follows ``weight`` when a schedule changes it."""
        return 1.0 - self.weight

    def log_factor(self, s_out, s_feats, t_out, t_feats) -> Tensor:
        if s_out.shape != t_out.shape:
            raise ValueError(f"KD needs student and teacher logits of the same shape; got {tuple(s_out.shape)} and {tuple(t_out.shape)}")
        T = self.temperature
        log_p_t = F.log_softmax(t_out / T, dim=-1)
        log_p_s = F.log_softmax(s_out / T, dim=-1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
        return -(T * T) * kl
