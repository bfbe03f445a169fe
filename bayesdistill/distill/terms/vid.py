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
from .base import PairTerm, Weight
from .registry import TermOption, register_term

__all__ = ["VID", "gaussian_entropy"]


@register_term(
    "vid",
    description="variational information distillation: an amortized Gaussian q(teacher feature | student feature)",
    options=[
        # lambda per VID pair: VID's log-density is summed over all feature dimensions (hundreds of
        # nats per example), so lambda must be small; a sweep over 1e-3 .. 1 (cnn-deep -> MLP on
        # MNIST-1D, 100 epochs, docs/function-space.md) was best at 0.1 (accuracy and NLL)
        TermOption("weight", float, 0.1, "lambda per pair (the log-density sums over all feature dimensions: "
                   "keep it small)", range="(0, inf)"),
    ],
    build=lambda teacher, pairs, weight: [VID(teacher, pairs, weight=weight)],
    pairs=True,
)
class VID(PairTerm):
    r"""Variational information distillation (Ahn et al., CVPR 2019) as amortized q(t | s).

    For each pair (teacher module path -> student module path), q(t | s) = N(mu(s), diag(sigma^2))
    with one variance per channel, sigma_c^2 = softplus(alpha_c) + 1e-5 (initialized at 5.0), and
    mu a regressor: three 1x1 convolutions with ReLUs for feature maps (spatial sizes matched by
    adaptive average pooling of the student map), a 2-layer MLP for vectors, or a linear map with
    ``regressor="linear"`` (VID-LP, for the student's last layer). A map meeting a vector is
    flattened. Each pair adds the observed site ``vid.<i>`` with the teacher's features as the
    observation, scaled by the pair's weight (:attr:`pair_weights`):

        log q(t | s) = - sum_{c,h,w} [ log sigma_c + (t - mu(s))^2 / (2 sigma_c^2) ] - D/2 log(2 pi)

    Args:
        teacher: the teacher (BNN or nn.Module).
        pairs: teacher path -> student path (default: the last hidden layers).
        weight: lambda, a float for all pairs or a mapping teacher path -> float.
        regressor: ``"mlp"`` (default) or ``"linear"`` (VID-LP).
        hidden: width of the regressor's hidden layers (default: the teacher's channels/features).
        init_variance: initial sigma_c^2 (5.0 in the paper).
        name: the term's name (default ``"vid"``).

    Metrics per pair: ``pair<i>/log_q`` (the batch mean of log q(t|s), nats per example),
    ``pair<i>/loss`` (its negative) and ``pair<i>/mi_bound`` = H(t) + E[log q(t|s)], a lower bound
    on I(t; s) (:func:`gaussian_entropy`); ``loss`` is the sum of the pairs' losses (before the
    weights). A second VID term in one objective is renamed ``vid1``, ... (sites ``vid1.<i>``).
    """

    def __init__(
        self,
        teacher: Union[BNN, nn.Module],
        pairs: Optional[Mapping[str, str]] = None,
        weight: Weight = 1.0,
        *,
        regressor: str = "mlp",
        hidden: Optional[int] = None,
        init_variance: float = 5.0,
        eps: float = 1e-5,
        teacher_mode: str = "mean",
        name: Optional[str] = None,
    ):
        super().__init__(teacher, pairs, weight, name or "vid", teacher_mode)
        if regressor not in ("mlp", "linear"):
            raise ValueError(f"VID regressor must be 'mlp' or 'linear', got {regressor!r}")
        if not init_variance > eps:
            raise ValueError(f"VID init_variance must exceed eps={eps}, got {init_variance}")
        self.regressor, self.hidden, self.init_variance, self.eps = regressor, hidden, float(init_variance), float(eps)
        self.mu = nn.ModuleDict()
        self.alpha = nn.ParameterDict()
        self.entropies: dict[int, float] = {}

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
            channels = t.shape[1]
            a0 = math.log(math.expm1(self.init_variance - self.eps))
            self.alpha[str(i)] = nn.Parameter(torch.full((channels,), a0, dtype=t.dtype, device=t.device))

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
        """log q(t | s) per example of each pair (before the weights)."""
        return [self.q(i, s_feats[sp], t_feats[tp]).log_prob(t_feats[tp]) for i, (tp, sp) in enumerate(self.pairs.items())]

    def observe(self, s_out, s_feats, t_out, t_feats) -> None:
        """One observed site ``<name>.<i>`` per pair, scaled by the pair's weight."""
        metrics: dict[str, Tensor] = {}
        losses = []
        for i, ((tp, sp), w) in enumerate(zip(self.pairs.items(), self.pair_weights)):
            t = t_feats[tp]
            qd = self.q(i, s_feats[sp], t)
            with pyro.poutine.scale(scale=w):
                pyro.sample(f"{self.name}.{i}", qd, obs=t)
            with torch.no_grad():
                log_q = qd.log_prob(t).mean()
                losses.append(-log_q)
                metrics[f"pair{i}/loss"] = -log_q
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
