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


PKT_NORMALIZATIONS = ("uniform", "none")


@register_term(
    "pkt",
    description="probabilistic knowledge transfer: the batch's cosine-kernel affinities of feature pairs",
    options=[
        TermOption("weight", float, 1.0, "weight per pair, in labels' worth", range="(0, inf)"),
        TermOption("normalize", str, "uniform", "'uniform': KL(P||Q) in units of the teacher's KL(P||uniform) "
                   "(measured on the first training batch), 'none': nats", choices=PKT_NORMALIZATIONS),
    ],
    build=lambda teacher, pairs, weight, normalize: [PKT(teacher, pairs, weight=weight, normalize=normalize)],
    pairs=True,
)
class PKT(PairTerm):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018) on feature pairs.

    Per pair, K(a, b) = (cos(a, b) + 1) / 2 over the batch (self-pairs excluded), rows
    normalized to P (teacher) and Q (student); the log-factor of example i is
    ``-KL(P_i || Q_i) / u`` with ``u`` the teacher's mean ``KL(P_i || uniform)`` on the batch the
    objective is set up with (``normalize="uniform"``, the default) or 1 (``"none"``: nats).
    Features are flattened per example; their sizes may differ. One term covers all pairs: its
    log-factor is ``weight * sum over pairs of s_pair * log f`` (:class:`~bayesdistill.distill.PairTerm`),
    its metrics ``loss`` and ``pair<i>/loss``.

    Units (docs/function-space.md, "Weights"): KL(P_i || Q_i) is a divergence between two
    distributions over the batch, in nats per example; it does not grow with the feature size
    (cosines: a map duplicated along its channels gives the same P) and, in expectation, hardly
    with the batch size (an average over the neighbours under P_i). But it is small: the kernel
    (cos + 1) / 2 makes every row nearly uniform, so a student that has learnt nothing of the
    teacher's geometry (Q_i uniform) pays only KL(P_i || uniform), typically 0.001-0.1 nats. The
    default divides by that amount, so a log-factor of -1 means "no more of the teacher's geometry
    than a uniform student" and 0 "all of it", whatever the features: ``weight=1`` is then about
    one label's worth (as :class:`~bayesdistill.distill.Hint`'s normalized squared error).

    Args:
        teacher: the teacher (BNN or nn.Module).
        pairs: teacher path -> student path (default: the last hidden layers).
        weight: a float for all pairs or a mapping teacher path -> float.
        normalize: ``"uniform"`` (default) or ``"none"``.
        teacher_mode: ``"mean"`` or ``"sample"``.
        eps: guards the normalizations and logarithms.
        name: the term's name (default ``"pkt"``).
    """

    def __init__(self, teacher: Union[BNN, nn.Module], pairs: Optional[Mapping[str, str]] = None,
                 weight: Weight = 1.0, *, normalize: str = "uniform", teacher_mode: str = "mean", eps: float = 1e-7,
                 name: Optional[str] = None):
        super().__init__(teacher, pairs, weight, name or "pkt", teacher_mode)
        if normalize not in PKT_NORMALIZATIONS:
            raise ValueError(f"PKT: normalize must be 'uniform' (KL in units of the teacher's KL from uniform) or "
                             f"'none' (nats), got {normalize!r}")
        self.normalize = normalize
        self.eps = eps
        #: u per pair (1.0 with normalize="none"), set by :meth:`setup` (before it, 1.0: nats)
        self.scales: dict[int, float] = {}

    def _cond(self, f: Tensor) -> Tensor:
        f = F.normalize(_flat(f), dim=1, eps=self.eps)
        k = (f @ f.T + 1.0) / 2.0
        k = k * (1 - torch.eye(k.shape[0], dtype=k.dtype, device=k.device))
        return k / k.sum(1, keepdim=True).clamp_min(self.eps)

    def _kl(self, p: Tensor, q: Tensor) -> Tensor:
        return (p * ((p + self.eps).log() - (q + self.eps).log())).sum(1)

    def uniform_kl(self, features: Tensor) -> float:
        """The mean over the examples of ``KL(P_i || uniform)`` of ``features`` (nats; 1.0 when it
        is 0 or there are fewer than 3 examples): what a student with no geometry pays."""
        b = features.shape[0]
        if b < 3:
            return 1.0
        with torch.no_grad():
            p = self._cond(features.detach())
            u = (1 - torch.eye(b, dtype=p.dtype, device=p.device)) / (b - 1)
            v = float(self._kl(p, u).mean())
        return v if v > 1e-12 else 1.0

    def setup(self, s_out, s_feats, t_out, t_feats) -> None:
        for i, tp in enumerate(self.pairs):
            # on at most 256 examples: the KL to uniform hardly depends on the batch size
            self.scales[i] = self.uniform_kl(t_feats[tp][:256]) if self.normalize == "uniform" else 1.0

    def pair_log_factors(self, s_out, s_feats, t_out, t_feats) -> list[Tensor]:
        out = []
        for i, (tp, sp) in enumerate(self.pairs.items()):
            p, q = self._cond(t_feats[tp]), self._cond(s_feats[sp])
            out.append(-self._kl(p, q) / self.scales.get(i, 1.0))
        return out
