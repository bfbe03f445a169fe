"""FitNets hints (Romero et al. 2015): learned projections of the student's features onto the teacher's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Union

from torch import Tensor, nn

from ...bnn.network import BNN
from ._projection import _flat, _Projection
from .base import PairTerm, Weight
from .registry import TermOption, register_term

__all__ = ["Hint"]


@register_term(
    "hint",
    description="FitNets hints: mean squared error of a learned projection of student features",
    options=[TermOption("weight", float, 1.0, "weight per pair", range="(0, inf)")],
    build=lambda teacher, pairs, weight: [Hint(teacher, pairs, weight=weight)],
    pairs=True,
)
class Hint(PairTerm):
    """FitNets hint: ``-mean((W s + b - t)^2)`` per example and pair, with a learned projection W.

    Romero et al. (2015). W is a linear map for vectors and a 1x1 convolution for feature maps
    (the student's map adaptively average-pooled to the teacher's spatial size).

    Args:
        teacher: the teacher (BNN or nn.Module).
        pairs: teacher path -> student path (default: the last hidden layers).
        weight: a float for all pairs or a mapping teacher path -> float.
        teacher_mode: ``"mean"`` or ``"sample"``; name: the term's name (default ``"hint"``).
    """

    def __init__(self, teacher: Union[BNN, nn.Module], pairs: Optional[Mapping[str, str]] = None,
                 weight: Weight = 1.0, teacher_mode: str = "mean", *, name: Optional[str] = None):
        super().__init__(teacher, pairs, weight, name or "hint", teacher_mode)
        self.proj = nn.ModuleDict()

    def setup(self, s_out, s_feats, t_out, t_feats) -> None:
        for i, (tp, sp) in enumerate(self.pairs.items()):
            self.proj[str(i)] = _Projection(s_feats[sp], t_feats[tp])

    def pair_log_factors(self, s_out, s_feats, t_out, t_feats) -> list[Tensor]:
        out = []
        for i, (tp, sp) in enumerate(self.pairs.items()):
            pred = self.proj[str(i)](s_feats[sp])
            t = t_feats[tp]
            out.append(-(_flat(pred) - _flat(t).reshape(pred.shape[0], -1)).square().mean(1))
        return out
