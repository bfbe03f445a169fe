"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018) over feature pairs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...bnn.network import BNN
from ._projection import _flat
from .base import PairTerm, Weight
from .registry import TermOption, register_term

__all__ = ["PKT"]


@register_term(
    "pkt",
    description="probabilistic knowledge transfer: the batch's cosine-kernel affinities of feature pairs",
    options=[TermOption("weight", float, 1.0, "weight per pair (its losses are O(0.01-1) per example)",
                        range="(0, inf)")],
    build=lambda teacher, pairs, weight: [PKT(teacher, pairs, weight=weight)],
    pairs=True,
)
class PKT(PairTerm):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018) on feature pairs.

    Per pair, K(a, b) = (cos(a, b) + 1) / 2 over the batch (self-pairs excluded), rows
    normalized to P (teacher) and Q (student); log f_i = -KL(P_i || Q_i). Features are flattened
    per example; their sizes may differ. One term covers all pairs: its log-factor is
    ``weight * sum over pairs of s_pair * log f`` (:class:`~bayesdistill.distill.PairTerm`), its
    metrics ``loss`` and ``pair<i>/loss``.

    Args:
        teacher: the teacher (BNN or nn.Module).
        pairs: teacher path -> student path (default: the last hidden layers).
        weight: a float for all pairs or a mapping teacher path -> float.
        teacher_mode: ``"mean"`` or ``"sample"``.
        eps: guards the normalizations and logarithms.
        name: the term's name (default ``"pkt"``).
    """

    def __init__(self, teacher: Union[BNN, nn.Module], pairs: Optional[Mapping[str, str]] = None,
                 weight: Weight = 1.0, *, teacher_mode: str = "mean", eps: float = 1e-7, name: Optional[str] = None):
        super().__init__(teacher, pairs, weight, name or "pkt", teacher_mode)
        self.eps = eps

    def _cond(self, f: Tensor) -> Tensor:
        f = F.normalize(_flat(f), dim=1, eps=self.eps)
        k = (f @ f.T + 1.0) / 2.0
        k = k * (1 - torch.eye(k.shape[0], dtype=k.dtype, device=k.device))
        return k / k.sum(1, keepdim=True).clamp_min(self.eps)

    def pair_log_factors(self, s_out, s_feats, t_out, t_feats) -> list[Tensor]:
        out = []
        for tp, sp in self.pairs.items():
            p, q = self._cond(t_feats[tp]), self._cond(s_feats[sp])
            out.append(-(p * ((p + self.eps).log() - (q + self.eps).log())).sum(1))
        return out
