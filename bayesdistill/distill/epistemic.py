r"""Knowledge distillation against the teacher's posterior predictive (its full Bayesian average).

Hinton's KD (:class:`~bayesdistill.distill.KD`) matches the student to the teacher's
*posterior-mean network* (``teacher_mode="mean"``) or to one teacher draw per step
(``"sample"``). A Bayesian teacher's answer, however, is its posterior predictive, the average
of S networks w_s ~ q(w); where the draws disagree (inputs far from the training data) that
average is flatter than any single network, which is the teacher's epistemic uncertainty.
:class:`PredictiveKD` distills that average:

.. math::

    \log f(x; w) = -T^2\, \mathrm{KL}\Big(\bar p_T(\cdot | x)\,\Big\|\,\mathrm{softmax}(z_s(x; w)/T)\Big),
    \qquad \bar p_T(\cdot | x) = \frac{1}{S}\sum_{s=1}^{S} \mathrm{softmax}(z_t(x; w_s)/T)

with S fresh teacher draws per step (the teacher's tempered predictive; T = 1 gives the
predictive itself), and the likelihood scaled by 1 - a as in KD. Everything else (weight,
temperature, transfer sets) is KD's.

The term is self-contained: a :class:`~bayesdistill.distill.DistillTerm` whose reference pass
draws S teacher networks; its history columns are ``distill/predictive_kd/loss`` (nats per
example, before the weight).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, check_number
from ..bnn.network import BNN
from ..infer.batches import Batch
from .function_space import DistillTerm

__all__ = ["PredictiveKD"]


class PredictiveKD(DistillTerm):
    """KD against the teacher's tempered posterior predictive, averaged over ``num_samples`` draws.

    Args:
        teacher: a trained :class:`~bayesdistill.BNN` (a plain ``nn.Module`` works too and then
            is plain KD against its softmax).
        temperature: T > 0, applied to each draw's logits before averaging.
        weight: a in [0, 1]; the student's likelihood is scaled by 1 - a.
        num_samples: S >= 1, fresh teacher draws per step (S = 1 is KD with
            ``teacher_mode="sample"``).

    The reference output of the term (the ``t_out`` of :meth:`log_factor`) is the log of the
    averaged teacher distribution ``[B, C]``; only terms of this class with the same teacher,
    S and T share it.
    """

    def __init__(self, teacher: Union[BNN, nn.Module], temperature: float = 4.0, weight: float = 0.9,
                 num_samples: int = 8):
        w = check_number("PredictiveKD weight (alpha)", weight, minimum=0.0, maximum=1.0)
        temperature = check_number("PredictiveKD temperature", temperature, minimum=0.0, exclusive_minimum=True)
        super().__init__(teacher, w, "predictive_kd", "mean")
        self.temperature = temperature
        self.num_samples = check_int("num_samples", num_samples, minimum=1)

    @property
    def likelihood_weight(self) -> float:  # type: ignore[override]
        """1 - a: follows ``weight`` when a schedule changes it."""
        return 1.0 - self.weight

    def reference_key(self):
        return "predictive", id(self.teacher_features.teacher), self.num_samples, self.temperature

    def reference_paths(self) -> list[str]:
        return []

    @torch.no_grad()
    def reference(self, batch: Batch, paths: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """``log p̄_T(. | x)`` ``[B, C]`` of S fresh teacher draws (global RNG, seeded by ``fit``)."""
        t = self.teacher_features.teacher
        T = self.temperature
        was = t.training
        t.eval()
        try:
            if isinstance(t, BNN):
                out = t.outputs(batch.x, t.sample_weights(self.num_samples))  # [S, B, C]
                log_p = torch.logsumexp(F.log_softmax(out / T, dim=-1), dim=0) - math.log(self.num_samples)
            else:
                log_p = F.log_softmax(t(batch.x) / T, dim=-1)
        finally:
            t.train(was)
        return log_p, {}

    def log_factor(self, s_out, s_feats, t_out, t_feats) -> Tensor:
        if s_out.shape != t_out.shape:
            raise ValueError(f"PredictiveKD needs student and teacher outputs of the same shape; got "
                             f"{tuple(s_out.shape)} and {tuple(t_out.shape)}")
        T = self.temperature
        log_p_s = F.log_softmax(s_out / T, dim=-1)
        kl = (t_out.exp() * (t_out - log_p_s)).sum(-1)
        return -(T * T) * kl
