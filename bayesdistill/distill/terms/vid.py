r"""Variational information distillation (Ahn et al., CVPR 2019) as an amortized q(t | s)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Optional, Union

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...bnn.network import BNN
from ._projection import _flat, _Projection
from .base import PairTerm, Weight, check_reduction
from .registry import TermOption, register_term

__all__ = ["VID", "gaussian_entropy"]


@register_term(
    "vid",
    description="variational information distillation: an amortized Gaussian q(teacher feature | student feature)",
    options=[
        TermOption("weight", float, 1.0, "lambda per pair, in labels' worth (with reduction 'mean' the log-density "
                   "is averaged over the feature's elements)", range="(0, inf)"),
        TermOption("reduction", str, "mean", "'mean': log q(t|s) / D per example (D = the teacher feature's "
                   "elements; weights comparable across feature sizes), 'sum': the exact log q(t|s)",
                   choices=("mean", "sum")),
    ],
    build=lambda teacher, pairs, weight, reduction: [VID(teacher, pairs, weight=weight, reduction=reduction)],
    pairs=True,
)
class VID(PairTerm):
    r"""Variational information distillation (Ahn et al., CVPR 2019) as amortized q(t | s).

    For each pair (teacher module path -> student module path), q(t | s) = N(mu(s), diag(sigma^2))
    with one variance per channel, sigma_c^2 = softplus(alpha_c) + 1e-5 (initialized at 5.0), and
    mu a regressor: three 1x1 convolutions with ReLUs for feature maps (spatial sizes matched by
    adaptive average pooling of the student map), a 2-layer MLP for vectors, or a linear map with
    ``regressor="linear"`` (VID-LP, for the student's last layer). A map meeting a vector is
    flattened. The exact log-density of pair i, summed over the D_i elements of the teacher's
    feature (nats per example), is

        log q(t | s) = - sum_{c,h,w} [ log sigma_c + (t - mu(s))^2 / (2 sigma_c^2) ] - D/2 log(2 pi)

    **The weight convention** (``reduction``, docs/function-space.md "Weights"). With
    ``reduction="mean"`` (the default) pair i's log-factor is ``log q(t | s) / D_i``, the
    log-density *per element* (nats per example and element, the same scale as one label's
    log-likelihood whatever the feature's size): ``weight=1`` means "as much as one label", a
    feature map duplicated along its channels gives the same log-factor, and the weight means the
    same for a 10-unit hidden layer and a 32 x 8 x 8 conv map. With ``reduction="sum"`` the
    log-factor is the exact ``log q(t | s)`` (D_i times larger: thousands of nats per example for a
    map of thousands of elements, which then outweighs the labels unless the weight is about
    1 / D_i). Both are the same observed Pyro site ``<name>.<i>`` (distribution q(t | s), value the
    teacher's feature) scaled by ``weight_i / D_i`` or ``weight_i``: the ELBO then bounds the
    log-evidence of the model whose likelihood is p(y | x, w) times the tempered factor
    q(t | s)^(weight_i / D_i) (a generalized-Bayes pseudo-likelihood; with ``reduction="sum"`` and
    weight 1, the joint log p(y, t | x) of the model in which the teacher's features are data
    with likelihood q(t | s)).

    Args:
        teacher: the teacher (BNN or nn.Module).
        pairs: teacher path -> student path (default: the last hidden layers).
        weight: lambda, a float for all pairs or a mapping teacher path -> float.
        reduction: ``"mean"`` (log-density per element, the default) or ``"sum"`` (the exact
            log-density of q(t | s)).
        regressor: ``"mlp"`` (default) or ``"linear"`` (VID-LP).
        hidden: width of the regressor's hidden layers (default: the teacher's channels/features).
        init_variance: initial sigma_c^2 (5.0 in the paper).
        name: the term's name (default ``"vid"``).

    Metrics per pair: ``pair<i>/loss`` (minus the log-factor before the weight: ``-log q / D_i``
    with ``reduction="mean"``, ``-log q`` with ``"sum"``), ``pair<i>/log_q`` (the batch mean of
    the exact log q(t|s), nats per example, whatever the reduction) and ``pair<i>/mi_bound`` =
    H(t) + E[log q(t|s)], a lower bound on I(t; s) (:func:`gaussian_entropy`); ``loss`` is the sum
    of the pairs' losses (before the weights). A second VID term in one objective is renamed
    ``vid1``, ... (sites ``vid1.<i>``).
    """

    def __init__(
        self,
        teacher: Union[BNN, nn.Module],
        pairs: Optional[Mapping[str, str]] = None,
        weight: Weight = 1.0,
        *,
        reduction: str = "mean",
        regressor: str = "mlp",
        hidden: Optional[int] = None,
        init_variance: float = 5.0,
        eps: float = 1e-5,
        teacher_mode: str = "mean",
        name: Optional[str] = None,
    ):
        super().__init__(teacher, pairs, weight, name or "vid", teacher_mode)
        self.reduction = check_reduction("VID", reduction)
        if regressor not in ("mlp", "linear"):
            raise ValueError(f"VID regressor must be 'mlp' or 'linear', got {regressor!r}")
        if not init_variance > eps:
            raise ValueError(f"VID init_variance must exceed eps={eps}, got {init_variance}")
        self.regressor, self.hidden, self.init_variance, self.eps = regressor, hidden, float(init_variance), float(eps)
        self.mu = nn.ModuleDict()
        self.alpha = nn.ParameterDict()
        self.entropies: dict[int, float] = {}
        #: D_i: the number of elements of pair i's teacher feature per example (set by :meth:`setup`)
        self.sizes: dict[int, int] = {}

    def setup(self, s_out, s_feats, t_out, t_feats) -> None:
        for i, (tp, sp) in enumerate(self.pairs.items()):
            s, t = s_feats[sp], t_feats[tp]
            hidden = None if self.regressor == "linear" else (self.hidden or (t.shape[1] if t.dim() > 2 else _flat(t).shape[1]))
            if t.dim() > 2 and s.dim() <= 2:
                # vector meets map: regress the flattened map
                self.mu[str(i)] = _Projection(s, t.reshape(t.shape[0], -1), hidden)
            else:
                self.mu[str(i)] = _Projection(s, t, hidden)
            self.entropies[i] = gaussian_entropy(t)  # H(t) of the bound H(t) + E[log q(t|s)] on I(t; s)
            self.sizes[i] = int(t[0].numel())
            channels = t.shape[1]
            a0 = math.log(math.expm1(self.init_variance - self.eps))
            self.alpha[str(i)] = nn.Parameter(torch.full((channels,), a0, dtype=t.dtype, device=t.device))

    def element_scale(self, i: int) -> float:
        """What pair i's exact log-density is multiplied by before the weight: ``1 / D_i`` with
        ``reduction="mean"``, 1 with ``"sum"``."""
        return 1.0 / self.sizes[i] if self.reduction == "mean" else 1.0

    def variance(self, i: int) -> Tensor:
        """sigma_c^2 of pair i, ``[channels]``."""
        return F.softplus(self.alpha[str(i)]) + self.eps

    def q(self, i: int, s: Tensor, t: Tensor) -> dist.TorchDistribution:
        """q(t | s) of pair i as a distribution with batch shape ``[B]`` (event = the feature)."""
        mu = self.mu[str(i)](s)
        mu = mu.reshape(t.shape)
        var = self.variance(i)
        scale = var.sqrt().reshape(1, -1, *([1] * (t.dim() - 2)))
        return dist.Normal(mu, scale.expand_as(mu), validate_args=False).to_event(t.dim() - 1)

    def pair_log_factors(self, s_out, s_feats, t_out, t_feats) -> list[Tensor]:
        """Per example, each pair's log q(t | s) times :meth:`element_scale` (before the weights)."""
        return [self.q(i, s_feats[sp], t_feats[tp]).log_prob(t_feats[tp]) * self.element_scale(i)
                for i, (tp, sp) in enumerate(self.pairs.items())]

    def observe(self, s_out, s_feats, t_out, t_feats) -> None:
        """One observed site ``<name>.<i>`` per pair, scaled by the pair's weight times
        :meth:`element_scale`."""
        metrics: dict[str, Tensor] = {}
        losses = []
        for i, ((tp, sp), w) in enumerate(zip(self.pairs.items(), self.pair_weights)):
            t = t_feats[tp]
            qd = self.q(i, s_feats[sp], t)
            with pyro.poutine.scale(scale=w * self.element_scale(i)):
                pyro.sample(f"{self.name}.{i}", qd, obs=t)
            with torch.no_grad():
                log_q = qd.log_prob(t).mean()
                loss = -log_q * self.element_scale(i)
                losses.append(loss)
                metrics[f"pair{i}/loss"] = loss
                metrics[f"pair{i}/log_q"] = log_q
                metrics[f"pair{i}/mi_bound"] = log_q + self.entropies[i]
        self.metrics = {"loss": torch.stack(losses).sum(), **metrics}


def gaussian_entropy(features: Tensor) -> float:
    """Entropy (nats) of a diagonal Gaussian fitted to ``features`` ``[N, ...]`` (per example).

    H = sum_d 1/2 log(2 pi e var_d), variances floored at 1e-12. Caveats for the reported
    ``mi_bound = H(t) + E[log q(t|s)]``: the Gaussian fit over-estimates the entropy of
    non-Gaussian features (so the "bound" may exceed the true lower bound), and a dead ReLU
    unit (variance 0) contributes about -12.4 nats; read the bound's change over epochs, not its
    absolute value.
    """
    f = _flat(features).double()
    var = f.var(0, unbiased=True).clamp_min(1e-12)
    return float(0.5 * (torch.log(2 * math.pi * math.e * var)).sum())
