r"""Closed-form KL divergence between mean-field Gaussians, fused over all weights.

KL(N(m_q, s_q^2) || N(m_p, s_p^2)) = log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2 per
weight (nats). :class:`~bayesdistill.BNN` (``bnn.kl()``) and the ELBO
(:class:`~bayesdistill.MeanFieldELBO`) compute it with the same function, so the value in a
training history is the value the optimizer saw.
"""

from __future__ import annotations

import torch

__all__ = ["fused_normal_kl", "PriorConstants"]


def fused_normal_kl(pairs, constants: "PriorConstants | None" = None) -> torch.Tensor:
    r"""Sum of KL(N(m_q, s_q^2) || N(m_p, s_p^2)) over all weights of all pairs, in one pass.

    KL = log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2 per weight. Concatenating
    the sites first replaces a handful of small kernels per site by one pass over all weights.

    With a ``constants`` cache and a fixed prior (no gradient into it, handed over as views of
    flat buffers, as a :class:`~bayesdistill.BNN` does) the prior's part is constant between
    steps: ``1 / s_p^2``, ``sum log s_p - n / 2`` and whether ``m_p = 0`` are computed once and
    the sum is taken as dot products,

        KL = 1/2 <s_q^2 + (m_q - m_p)^2, 1 / s_p^2> - sum log s_q + (sum log s_p - n / 2),

    in one autograd node with a hand-written backward (:class:`_CachedKL`: a few passes over
    the weights instead of about a dozen; with the usual N(0, 1) prior no weight-sized
    temporary in the forward), which matters for networks of millions of weights.
    """
    q_loc, q_scale = _concat([t[0] for t in pairs]), _concat([t[1] for t in pairs])
    p_loc, loc_flat = _concat_flat([t[2] for t in pairs])
    p_scale, scale_flat = _concat_flat([t[3] for t in pairs])
    const = constants.get(p_loc, p_scale) if constants is not None and loc_flat and scale_flat else None
    if const is None:  # learned or one-off prior tensors: the per-weight form
        # log(s_q / s_p) as a difference of logs: the ratio itself underflows (and its log
        # becomes -inf) long before s_q does, e.g. s_q = 1e-20 against s_p = 1
        var_ratio = (q_scale / p_scale).square()
        log_ratio = q_scale.log() - p_scale.log()
        return (0.5 * (var_ratio + ((q_loc - p_loc) / p_scale).square() - 1.0) - log_ratio).sum()
    inv_var, offset, zero_loc = const
    diff = q_loc if zero_loc else q_loc - p_loc
    return _CachedKL.apply(diff, q_scale, None if getattr(const, "unit_var", False) else inv_var) + offset


class _CachedKL(torch.autograd.Function):
    """``1/2 <s^2 + d^2, 1/s_p^2> - sum log s`` and its gradient in a few passes over the weights.

    Autograd of the same expression stores and revisits several weight-sized temporaries (the
    squares, their sum, the products in the backward of ``square`` and ``dot``); here the
    forward is two dot products and a log-sum (without ``inv_var``, i.e. a unit prior scale,
    the dot products need no temporary at all) and the backward is ``d / s_p^2`` and
    ``s / s_p^2 - 1 / s``, each built in place on one temporary. The values are those of the
    expression (up to rounding).
    """

    @staticmethod
    def forward(ctx, diff: torch.Tensor, scale: torch.Tensor, inv_var):
        ctx.save_for_backward(diff, scale, inv_var)
        if inv_var is None:
            quad = torch.dot(scale, scale) + torch.dot(diff, diff)
        else:
            quad = torch.dot(scale * scale, inv_var) + torch.dot(diff * diff, inv_var)
        return 0.5 * quad - scale.log().sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        diff, scale, inv_var = ctx.saved_tensors
        g_diff = g_scale = None
        if ctx.needs_input_grad[0]:
            g_diff = (diff * grad) if inv_var is None else torch.mul(diff, inv_var).mul_(grad)
        if ctx.needs_input_grad[1]:
            g_scale = scale.reciprocal().neg_()
            g_scale = g_scale.add_(scale) if inv_var is None else g_scale.addcmul_(scale, inv_var)
            g_scale.mul_(grad)
        return g_diff, g_scale, None


class _Constants(tuple):
    """``(1 / s_p^2, sum log s_p - n / 2, m_p == 0)``, and ``unit_var`` (all s_p == 1) as an attribute."""

    unit_var = False


class PriorConstants:
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
            unit_var = bool((p_scale == 1).all())
        const = _Constants((inv_var, offset, zero_loc))
        const.unit_var = unit_var
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
