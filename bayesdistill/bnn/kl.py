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
        # log(s_q / s_p) as a difference of logs: the ratio itself underflows (and its log
        # becomes -inf) long before s_q does, e.g. s_q = 1e-20 against s_p = 1
        var_ratio = (q_scale / p_scale).square()
        log_ratio = q_scale.log() - p_scale.log()
        return (0.5 * (var_ratio + ((q_loc - p_loc) / p_scale).square() - 1.0) - log_ratio).sum()
    inv_var, offset, zero_loc = const
    diff = q_loc if zero_loc else q_loc - p_loc
    return 0.5 * torch.dot(q_scale.square() + diff.square(), inv_var) - q_scale.log().sum() + offset


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
