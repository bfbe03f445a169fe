r"""``MeanFieldELBO``: the mean-field ELBO with closed-form KL, without the wasted log-probs.

For a model with latent sites :math:`z_k` and observed sites :math:`y` and a guide of the same
latent sites,

.. math::

    \mathrm{ELBO} = \mathbb{E}_{q}\big[\log p(y \mid z)\big] - \sum_k \mathrm{KL}\big(q(z_k)\,\|\,p(z_k)\big),

estimated with reparameterized samples from the guide for the first term and the exact KL
divergence for every latent site (Kingma & Welling 2014; Blundell et al. 2015 "Weight
Uncertainty in Neural Networks"). This is the quantity that
:class:`pyro.infer.TraceMeanField_ELBO` computes; the difference is cost. ``TraceMeanField_ELBO``
(through ``Trace_ELBO._get_trace``) first computes ``log_prob`` of *every* site of the model and
the guide, i.e. two extra passes over all weights per step, and discards them for latent sites
when a KL is available. ``MeanFieldELBO`` traces the guide, replays the model against it, and
evaluates ``log_prob`` only at observed sites and the KL only at latent sites.

It is a genuine :class:`pyro.infer.ELBO`: usable with :class:`pyro.infer.SVI`
(``loss``/``loss_and_grads``), as a module (``MeanFieldELBO()(model, guide)``) and it respects
``poutine.scale`` (KL annealing scales the guide site, like Pyro) and ``poutine.mask``. The
value equals ``TraceMeanField_ELBO``'s for the same random draws (tested).

After each call :attr:`MeanFieldELBO.last_parts` holds the (detached, on-device) parts of the
last estimate, averaged over particles: ``"nll"`` = -E[log p(y|z)] (the scaled data term) and
``"kl"`` = sum of scaled KL terms. ``loss == nll + kl``.
"""

from __future__ import annotations

import torch
from pyro import poutine
import pyro.distributions as dist
from pyro.distributions.kl import kl_divergence
from torch.distributions import Independent
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.poutine.util import site_is_subsample
from pyro.infer.util import torch_item

from ..bnn.kl import PriorConstants, fused_normal_kl

__all__ = ["MeanFieldELBO"]

_NORMALS = (dist.Normal, torch.distributions.Normal)


class MeanFieldELBO(ELBO):
    """Mean-field ELBO with analytic KL for latent sites (see module docstring).

    Args:
        num_particles: number of Monte Carlo particles averaged per estimate.

    Every latent site must have a KL divergence registered for its (guide, prior) pair, as
    Gaussian mean-field sites do; otherwise ``NotImplementedError`` names the site (use
    ``pyro.infer.TraceMeanField_ELBO`` for a Monte Carlo fallback).
    """

    def __init__(self, num_particles: int = 1):
        super().__init__(num_particles=num_particles, vectorize_particles=False)
        self.last_parts: dict[str, torch.Tensor] = {}
        self._prior_constants = PriorConstants()

    def _get_trace(self, model, guide, args, kwargs):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        return model_trace, guide_trace

    @staticmethod
    def _particle_parts(model_trace, guide_trace, constants: "PriorConstants | None" = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        log_lik = 0.0
        kl = 0.0
        gaussian: dict[float, list] = {}  # site scale -> [(q_loc, q_scale, p_loc, p_scale), ...]
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["is_observed"]:
                lp = site["fn"].log_prob(site["value"])
                lp = scale_and_mask(lp, site["scale"], site["mask"])
                log_lik = log_lik + lp.sum()
                continue
            gsite = guide_trace.nodes.get(name)
            if gsite is None:
                raise ValueError(f"latent model site {name!r} has no matching guide site")
            pair = _normal_pair(gsite, site)
            if pair is not None:
                gaussian.setdefault(float(gsite["scale"]), []).append(pair)
                continue
            try:
                term = kl_divergence(gsite["fn"], site["fn"])
            except NotImplementedError:
                raise NotImplementedError(
                    f"MeanFieldELBO needs a closed-form KL at site {name!r} "
                    f"({type(gsite['fn']).__name__} || {type(site['fn']).__name__}); "
                    "use pyro.infer.TraceMeanField_ELBO for a Monte Carlo fallback"
                ) from None
            kl = kl + scale_and_mask(term, gsite["scale"], gsite["mask"]).sum()
        for site_scale, pairs in gaussian.items():
            kl = kl + site_scale * fused_normal_kl(pairs, constants)
        if not torch.is_tensor(log_lik):
            log_lik = torch.zeros(())
        if not torch.is_tensor(kl):
            kl = torch.zeros((), device=log_lik.device)
        return -log_lik, kl

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The negative ELBO as a differentiable scalar tensor (no host synchronization)."""
        nll = kl = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            p_nll, p_kl = self._particle_parts(model_trace, guide_trace, self._prior_constants)
            nll = nll + p_nll
            kl = kl + p_kl
        nll = nll / self.num_particles
        kl = kl / self.num_particles
        self.last_parts = {"nll": nll.detach(), "kl": kl.detach()}
        return nll + kl

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The negative ELBO estimate as a float (no gradient)."""
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Negative ELBO; backpropagates its gradient into the parameters (for ``pyro.infer.SVI``)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return torch_item(loss)


def _normal_of(fn):
    """(loc, scale) of a Normal or Independent(Normal) distribution, else None."""
    base = fn
    while isinstance(base, Independent):
        base = base.base_dist
    if isinstance(base, _NORMALS):
        return base.loc, base.scale
    return None


def _normal_pair(gsite, msite):
    """Flattened (q_loc, q_scale, p_loc, p_scale) for a Gaussian guide/prior site pair, or None.

    Only unmasked sites whose guide and prior have the same total shape qualify; anything else
    goes through ``kl_divergence`` site by site.
    """
    if gsite["mask"] is not None or msite["mask"] is not None:
        return None
    q, p = _normal_of(gsite["fn"]), _normal_of(msite["fn"])
    if q is None or p is None:
        return None
    shape = gsite["fn"].batch_shape + gsite["fn"].event_shape
    if shape != msite["fn"].batch_shape + msite["fn"].event_shape:
        return None
    return tuple((t if t.shape == shape else t.expand(shape)).reshape(-1) for t in (*q, *p))
