r"""TinyBERT-style layer losses (Jiao et al., 2019) for Transformer-like students.

For paired layers (teacher module path -> student module path):

* attention: L_attn = 1/h sum_i MSE(A_i^S, A_i^T) on attention maps ``[B, h, L, L]`` (or
  head-averaged ``[B, L, L]``); the tapped module's output may be such a tensor or a tuple
  ``(output, weights)`` as returned by ``nn.MultiheadAttention(..., need_weights=True)``;
* hidden: L_hidn = MSE(H^S W_h, H^T) on hidden states ``[B, L, d]`` with a learned W_h;
* embedding: L_embd = MSE(E^S W_e, E^T) on embeddings ``[B, L, d]`` with a learned W_e;
* prediction: L_pred = CE(z^T / t, z^S / t), the soft cross-entropy of temperature-softened
  logits.

All enter the student's Pyro objective as one per-example log-factor ``-weight * sum of
losses`` (:class:`~bayesdistill.distill.DistillTerm`).

Units (the weight convention of docs/function-space.md, "Weights"): each MSE is a mean over the
feature's elements (``reduction="mean"``, the paper's; ``"sum"`` sums them), and the hidden-state
and embedding MSEs are divided by the teacher feature's variance (``normalize="variance"``, as
:class:`~bayesdistill.distill.Hint`), so that 1 means "explains none of the teacher's variance"
whatever the width and scale of the states. Attention maps are probabilities (a fixed scale):
their MSE is not normalized. The prediction loss is in nats per example.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...bnn.network import BNN
from .base import DistillTerm, check_reduction
from .hint import NORMALIZATIONS, check_normalize, feature_variance
from .registry import TermOption, register_term

__all__ = ["TinyBERT", "attention_weights"]


def attention_weights(out) -> Tensor:
    """The attention map from a tapped output: the tensor itself or the 2nd item of a tuple."""
    if isinstance(out, tuple):
        if len(out) < 2 or out[1] is None:
            raise ValueError(
                "the tapped attention module returned no attention weights; call "
                "nn.MultiheadAttention with need_weights=True (and average_attn_weights=False for per-head maps)"
            )
        return out[1]
    return out


def _hidden(out) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


@register_term(
    "tinybert",
    description="TinyBERT layer losses: hidden states of the feature pairs (learned projections) and soft "
    "cross-entropy of softened logits",
    options=[
        TermOption("temperature", float, 1.0, "temperature t of the prediction loss", range="(0, inf)"),
        TermOption("weight", float, 1.0, "weight of the summed losses", range="(0, inf)"),
        TermOption("reduction", str, "mean", "'mean': each MSE averaged over the feature's elements, 'sum': "
                   "summed", choices=("mean", "sum")),
        TermOption("normalize", str, "variance", "'variance': hidden-state and embedding MSEs divided by the "
                   "teacher feature's variance, 'none': raw", choices=NORMALIZATIONS),
    ],
    # from a command line the feature pairs are hidden-state pairs [B, L, d]; attention and
    # embedding pairs need the Python API
    build=lambda teacher, pairs, temperature, weight, reduction, normalize: [
        TinyBERT(teacher, hidden=pairs, temperature=temperature, weight=weight, reduction=reduction,
                 normalize=normalize)],
    pairs=True,
    tasks=("classification",),
)
class TinyBERT(DistillTerm):
    """TinyBERT's attention / hidden-state / embedding / prediction losses as one term.

    Args:
        teacher: the teacher (BNN or nn.Module).
        attention: teacher path -> student path of modules whose output holds attention maps.
        hidden: teacher path -> student path of modules giving hidden states ``[B, L, d]``.
        embedding: teacher path -> student path of the embedding modules ``[B, L, d]``.
        temperature: t of the prediction loss; ``None`` disables it.
        weight: multiplies the sum of the losses.
        weights: optional per-loss multipliers ``{"attn", "hidn", "embd", "pred"}``.
        reduction: ``"mean"`` (default: each MSE per element) or ``"sum"`` (summed over elements).
        normalize: ``"variance"`` (default: the hidden-state and embedding MSEs divided by the
            teacher feature's variance on the probe batch, :func:`~bayesdistill.distill.terms.hint.feature_variance`)
            or ``"none"``.
        name: the term's name (default ``"tinybert"``).

    ``loss`` reports the batch mean of the weighted sum of the losses (``-log_factor``, before
    ``weight``), nats per example for the prediction loss.
    """

    def __init__(
        self,
        teacher: Union[BNN, nn.Module],
        *,
        attention: Optional[Mapping[str, str]] = None,
        hidden: Optional[Mapping[str, str]] = None,
        embedding: Optional[Mapping[str, str]] = None,
        temperature: Optional[float] = 1.0,
        weight: float = 1.0,
        weights: Optional[Mapping[str, float]] = None,
        teacher_mode: str = "mean",
        reduction: str = "mean",
        normalize: str = "variance",
        name: Optional[str] = None,
    ):
        super().__init__(teacher, weight, name or "tinybert", teacher_mode)
        self.reduction = check_reduction("TinyBERT", reduction)
        self.normalize = check_normalize("TinyBERT", normalize)
        #: the divisor of each hidden/embedding pair's MSE ("hidn0", ...; 1.0 with normalize="none")
        self.variances: dict[str, float] = {}
        self.attention = dict(attention or {})
        self.hidden = dict(hidden or {})
        self.embedding = dict(embedding or {})
        if temperature is not None and not temperature > 0:
            raise ValueError(f"TinyBERT: temperature must be > 0 or None, got {temperature}")
        self.temperature = temperature
        self.loss_weights = {"attn": 1.0, "hidn": 1.0, "embd": 1.0, "pred": 1.0, **dict(weights or {})}
        pairs = {**self.attention, **self.hidden, **self.embedding}
        self.teacher_paths = list(dict.fromkeys(list(self.attention) + list(self.hidden) + list(self.embedding)))
        self.student_paths = list(dict.fromkeys(pairs.values()))
        self.proj = nn.ModuleDict()

    def setup(self, s_out, s_feats, t_out, t_feats) -> None:
        for kind, pairs in (("hidn", self.hidden), ("embd", self.embedding)):
            for i, (tp, sp) in enumerate(pairs.items()):
                s, t = _hidden(s_feats[sp]), _hidden(t_feats[tp])
                if s.shape[:-1] != t.shape[:-1]:
                    raise ValueError(
                        f"TinyBERT {'hidden states' if kind == 'hidn' else 'embeddings'} differ in shape: teacher "
                        f"{tp!r} {tuple(t.shape)}, student {sp!r} {tuple(s.shape)} (all but the last dimension, "
                        "the width, must match)"
                    )
                self.proj[f"{kind}{i}"] = nn.Linear(s.shape[-1], t.shape[-1]).to(s.device)
                self.variances[f"{kind}{i}"] = feature_variance(t) if self.normalize == "variance" else 1.0

    def _reduce(self, sq: Tensor) -> Tensor:
        flat = sq.reshape(sq.shape[0], -1)
        return flat.mean(1) if self.reduction == "mean" else flat.sum(1)

    def losses(self, s_out, s_feats, t_out, t_feats) -> dict[str, Tensor]:
        """Per-example losses ``[B]`` by kind (attn, hidn, embd, pred)."""
        out: dict[str, Tensor] = {}
        if self.attention:
            terms = []
            for tp, sp in self.attention.items():
                a_s, a_t = attention_weights(s_feats[sp]), attention_weights(t_feats[tp])
                if a_s.shape != a_t.shape:
                    raise ValueError(
                        f"TinyBERT attention maps differ in shape: teacher {tp!r} {tuple(a_t.shape)}, "
                        f"student {sp!r} {tuple(a_s.shape)} (heads and lengths must match)"
                    )
                terms.append(self._reduce((a_s - a_t).square()))
            out["attn"] = torch.stack(terms).sum(0)
        for kind, pairs in (("hidn", self.hidden), ("embd", self.embedding)):
            if pairs:
                terms = []
                for i, (tp, sp) in enumerate(pairs.items()):
                    pred = self.proj[f"{kind}{i}"](_hidden(s_feats[sp]))
                    se = self._reduce((pred - _hidden(t_feats[tp])).square())
                    terms.append(se / self.variances.get(f"{kind}{i}", 1.0))
                out[kind] = torch.stack(terms).sum(0)
        if self.temperature is not None:
            t = self.temperature
            out["pred"] = -(F.softmax(t_out / t, -1) * F.log_softmax(s_out / t, -1)).sum(-1)
        return out

    def log_factor(self, s_out, s_feats, t_out, t_feats) -> Tensor:
        parts = self.losses(s_out, s_feats, t_out, t_feats)
        return -sum(self.loss_weights[k] * v for k, v in parts.items())
