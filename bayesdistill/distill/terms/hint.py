"""FitNets hints (Romero et al. 2015): learned projections of the student's features onto the teacher's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Union

from torch import Tensor, nn

from ...bnn.network import BNN
from ._projection import _flat, _Projection
from .base import PairTerm, Weight, check_reduction
from .registry import TermOption, register_term

__all__ = ["Hint", "feature_variance"]


NORMALIZATIONS = ("variance", "none")


def feature_variance(features: Tensor) -> float:
    """The mean over a feature's elements of its variance over the examples of ``features``
    ``[N, ...]`` (unbiased; 1.0 when it is 0 or there is one example): the mean squared error of
    predicting every element by its mean, the unit of a normalized squared error."""
    f = _flat(features).detach().double()
    if f.shape[0] < 2:
        return 1.0
    v = float(f.var(0, unbiased=True).mean())
    return v if v > 1e-12 else 1.0


def check_normalize(owner: str, normalize: str) -> str:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"{owner}: normalize must be 'variance' (squared errors in units of the teacher "
                         f"feature's variance) or 'none', got {normalize!r}")
    return normalize


@register_term(
    "hint",
    description="FitNets hints: squared error of a learned projection of student features",
    options=[
        TermOption("weight", float, 1.0, "weight per pair, in labels' worth", range="(0, inf)"),
        TermOption("reduction", str, "mean", "'mean': the squared error averaged over the teacher feature's "
                   "elements, 'sum': summed", choices=("mean", "sum")),
        TermOption("normalize", str, "variance", "'variance': squared errors divided by the teacher feature's "
                   "variance (measured on the first training batch), 'none': raw", choices=NORMALIZATIONS),
    ],
    build=lambda teacher, pairs, weight, reduction, normalize: [
        Hint(teacher, pairs, weight=weight, reduction=reduction, normalize=normalize)],
    pairs=True,
)
class Hint(PairTerm):
    r"""FitNets hint: minus the squared error of a learned projection ``W s + b`` of the student's
    feature onto the teacher's, per example and pair.

    Romero et al. (2015). W is a linear map for vectors and a 1x1 convolution for feature maps
    (the student's map adaptively average-pooled to the teacher's spatial size). Pair i's
    log-factor is

        log f_i = - sum_d (W s + b - t)_d^2 / (v_i * D_i)        (reduction="mean", the default)
        log f_i = - sum_d (W s + b - t)_d^2 / v_i                (reduction="sum")

    with D_i the teacher feature's elements and v_i its variance (``normalize="variance"``, the
    default: :func:`feature_variance` of the teacher's features on the probe batch the objective
    is set up with, i.e. the first up to 1024 training inputs; ``normalize="none"``: v_i = 1, the
    plain FitNets squared error). With both defaults the log-factor is "the fraction of the
    teacher feature's variance the student does not explain" (1 for a student predicting the
    mean, 0 for a perfect one): the same for any feature size (duplicating a map along its
    channels changes nothing) and any feature scale, so ``weight=1`` means "as much as one label"
    (docs/function-space.md, "Weights"). Probabilistically, ``-sum_d r_d^2 / v`` is
    ``log N(t; W s + b, (v / 2) I)`` up to a constant: ``reduction="sum"`` is that Gaussian
    log-density, ``"mean"`` the same per element (a tempered factor, see :class:`VID`).

    Args:
        teacher: the teacher (BNN or nn.Module).
        pairs: teacher path -> student path (default: the last hidden layers).
        weight: a float for all pairs or a mapping teacher path -> float.
        teacher_mode: ``"mean"`` or ``"sample"``.
        reduction: ``"mean"`` (default) or ``"sum"`` over the feature's elements.
        normalize: ``"variance"`` (default) or ``"none"``.
        name: the term's name (default ``"hint"``).
    """

    def __init__(self, teacher: Union[BNN, nn.Module], pairs: Optional[Mapping[str, str]] = None,
                 weight: Weight = 1.0, teacher_mode: str = "mean", *, reduction: str = "mean",
                 normalize: str = "variance", name: Optional[str] = None):
        super().__init__(teacher, pairs, weight, name or "hint", teacher_mode)
        self.reduction = check_reduction("Hint", reduction)
        self.normalize = check_normalize("Hint", normalize)
        self.proj = nn.ModuleDict()
        #: v_i per pair (1.0 with normalize="none"), set by :meth:`setup` with the projections
        self.variances: dict[int, float] = {}

    def setup(self, s_out, s_feats, t_out, t_feats) -> None:
        for i, (tp, sp) in enumerate(self.pairs.items()):
            self.proj[str(i)] = _Projection(s_feats[sp], t_feats[tp])
            self.variances[i] = feature_variance(t_feats[tp]) if self.normalize == "variance" else 1.0

    def pair_log_factors(self, s_out, s_feats, t_out, t_feats) -> list[Tensor]:
        out = []
        for i, (tp, sp) in enumerate(self.pairs.items()):
            pred = self.proj[str(i)](s_feats[sp])
            t = t_feats[tp]
            sq = (_flat(pred) - _flat(t).reshape(pred.shape[0], -1)).square()
            se = sq.mean(1) if self.reduction == "mean" else sq.sum(1)
            out.append(-se / self.variances.get(i, 1.0))
        return out
