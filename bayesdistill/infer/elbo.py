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
        self._prior_constants = _PriorConstants()

    def _get_trace(self, model, guide, args, kwargs):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        return model_trace, guide_trace

    @staticmethod
    def _particle_parts(model_trace, guide_trace, constants: "_PriorConstants | None" = None
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
            kl = kl + site_scale * _fused_normal_kl(pairs, constants)
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


def _fused_normal_kl(pairs, constants: "_PriorConstants | None" = None) -> torch.Tensor:
    r"""Sum of KL(N(m_q, s_q^2) || N(m_p, s_p^2)) over all weights of all pairs, in one pass.

    KL = log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2 per weight. Concatenating
    the sites first replaces a handful of small kernels per site by one pass over all weights.

    With a ``constants`` cache and a fixed prior (no gradient into it, handed over as views of
    flat buffers, as a :class:`~bayesdistill.BNN` does) the prior's part is constant between
    steps: ``1 / s_p^2``, ``sum log s_p - n / 2`` and whether ``m_p = 0`` are computed once and
    the sum is taken as one dot product,

        KL = 1/2 <s_q^2 + (m_q - m_p)^2, 1 / s_p^2> - sum log s_q + (sum log s_p - n / 2),

    which builds half the autograd nodes of the per-weight form (forward + backward measured
    25-35 % faster for 78,858 weights on one CPU thread).
    """
    q_loc, q_scale = _concat([t[0] for t in pairs]), _concat([t[1] for t in pairs])
    p_loc, loc_flat = _concat_flat([t[2] for t in pairs])
    p_scale, scale_flat = _concat_flat([t[3] for t in pairs])
    const = constants.get(p_loc, p_scale) if constants is not None and loc_flat and scale_flat else None
    if const is None:  # learned or one-off prior tensors: the per-weight form
        var_ratio = (q_scale / p_scale).square()
        return 0.5 * (var_ratio + ((q_loc - p_loc) / p_scale).square() - 1.0 - var_ratio.log()).sum()
    inv_var, offset, zero_loc = const
    diff = q_loc if zero_loc else q_loc - p_loc
    return 0.5 * torch.dot(q_scale.square() + diff.square(), inv_var) - q_scale.log().sum() + offset


class _PriorConstants:
    """The constant part of the KL for the fixed priors one ELBO has seen (a few, newest first).

    An entry holds the two prior tensors themselves (compared by identity and version counter,
    so an in-place change of a prior buffer is noticed) and lives as long as the ELBO does.
    Priors that require grad (learned prior scales) are never cached.
    """

    def __init__(self, size: int = 4):
        self.size = size
        self.entries: list[tuple[torch.Tensor, torch.Tensor, tuple[int, int], tuple]] = []

    def get(self, p_loc: torch.Tensor, p_scale: torch.Tensor):
        if p_loc.requires_grad or p_scale.requires_grad:
            return None
        versions = (p_loc._version, p_scale._version)
        for loc, scale, seen, const in self.entries:
            if loc is p_loc and scale is p_scale and seen == versions:
                return const
        with torch.no_grad():
            inv_var = p_scale.square().reciprocal()
            offset = p_scale.log().sum() - 0.5 * p_scale.numel()
            zero_loc = not bool(p_loc.any())  # one host sync per new prior, not per step
        const = (inv_var, offset, zero_loc)
        self.entries = [e for e in self.entries if not (e[0] is p_loc and e[1] is p_scale)]
        self.entries = [(p_loc, p_scale, versions, const), *self.entries][: self.size]
        return const


def _concat(ts) -> torch.Tensor:
    """``torch.cat(ts)``, or the flat tensor they are consecutive views of (see :func:`_concat_flat`)."""
    return _concat_flat(ts)[0]


def _concat_flat(ts) -> tuple[torch.Tensor, bool]:
    """``(torch.cat(ts), False)``, or ``(base, True)`` when ``ts`` are consecutive views that
    cover a whole flat tensor ``base`` (no copy, no split backward).

    A :class:`~bayesdistill.BNN` keeps each parameter family in one flat tensor and hands out
    per-site views of it; gluing those views back together is then free, and the result is the
    same (persistent) tensor every step.
    """
    base = ts[0]._base
    if base is not None and base.dim() == 1 and base.is_contiguous():
        offset = base.storage_offset()
        for t in ts:
            if t._base is not base or t.storage_offset() != offset or (t.numel() > 1 and t.stride() != (1,)):
                break
            offset += t.numel()
        else:
            if offset == base.storage_offset() + base.numel():
                return base, True
    return (ts[0] if len(ts) == 1 else torch.cat(ts)), False
