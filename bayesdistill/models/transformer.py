"""A small Transformer encoder classifier, written so that alignment can slice it.

:class:`SelfAttention` keeps the query, key, value and output projections as four ``nn.Linear``
layers and the number of heads independent of the model width (``inner = heads x head_dim``),
so a student with fewer heads keeps the model width: removing head h removes rows
``h*head_dim .. (h+1)*head_dim`` of q, k and v and the same columns of the output projection
(``nn.MultiheadAttention`` packs q/k/v into one ``in_proj_weight`` and ties ``heads x head_dim``
to the model width, so fewer heads there means another model width).

:class:`EncoderLayer` is pre-norm (``x + attn(norm1(x))``, then ``x + ffn(norm2(x))``): a layer
whose two branches are zero is the identity, which is how alignment removes layers.

:class:`TransformerClassifier`: token ids ``[B, L]`` (``vocab_size``) or feature vectors
``[B, L, F]`` (``input_dim``) -> ``embed`` (Embedding or Linear) + learned positions ``pos``
(an Embedding) -> ``layers`` (``nn.Sequential`` of :class:`EncoderLayer`) -> ``norm`` ->
mean over positions -> ``head`` (Linear). Every parameter lives in a Linear, Embedding or
LayerNorm, so :class:`~bayesdistill.BNN` makes all of them Bayesian.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SelfAttention", "EncoderLayer", "TransformerClassifier", "transformer"]


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections (``[B, L, d] -> [B, L, d]``)."""

    def __init__(self, d_model: int, num_heads: int, head_dim: Optional[int] = None, *, dropout: float = 0.0,
                 bias: bool = True):
        super().__init__()
        if head_dim is None:
            if d_model % num_heads:
                raise ValueError(f"SelfAttention: d_model {d_model} is not divisible by num_heads {num_heads}; pass head_dim")
            head_dim = d_model // num_heads
        self.num_heads, self.head_dim, self.dropout = int(num_heads), int(head_dim), float(dropout)
        inner = self.num_heads * self.head_dim
        self.q = nn.Linear(d_model, inner, bias=bias)
        self.k = nn.Linear(d_model, inner, bias=bias)
        self.v = nn.Linear(d_model, inner, bias=bias)
        self.out = nn.Linear(inner, d_model, bias=bias)

    def _heads(self, t: Tensor) -> Tensor:
        return t.reshape(*t.shape[:-1], -1, self.head_dim).transpose(-3, -2)  # [B, H, L, hd]

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(o.transpose(-3, -2).flatten(-2))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}"


class EncoderLayer(nn.Module):
    """Pre-norm Transformer encoder layer: ``x + attn(norm1(x))``, then ``x + ffn(norm2(x))``."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, *, head_dim: Optional[int] = None,
                 dropout: float = 0.0, activation: str = "gelu"):
        super().__init__()
        acts = {"gelu": nn.GELU, "relu": nn.ReLU}
        if activation not in acts:
            raise ValueError(f"EncoderLayer: activation must be one of {sorted(acts)}, got {activation!r}")
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, num_heads, head_dim, dropout=dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_dim), acts[activation](), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, d_model))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.dropout(self.attn(self.norm1(x)))
        return x + self.dropout(self.ffn(self.norm2(x)))


class TransformerClassifier(nn.Module):
    """Encoder-only Transformer with mean pooling and a Linear read-out (see the module docstring).

    Args:
        num_classes: outputs.
        max_len: the longest sequence (rows of the position embedding).
        vocab_size: token ids in ``[0, vocab_size)`` as input ``[B, L]`` (int64); or
        input_dim: feature vectors ``[B, L, input_dim]`` as input (exactly one of the two).
        d_model: the width of the residual stream.
        num_heads: attention heads per layer.
        head_dim: the width of one head (default ``d_model / num_heads``).
        ffn_dim: the hidden width of each layer's feed-forward block.
        num_layers: the number of encoder layers.
        dropout: the dropout probability inside the layers.
        activation: the feed-forward activation (``"gelu"`` or ``"relu"``).
    """

    def __init__(self, num_classes: int, max_len: int, *, vocab_size: Optional[int] = None,
                 input_dim: Optional[int] = None, d_model: int = 64, num_heads: int = 4,
                 head_dim: Optional[int] = None, ffn_dim: int = 128, num_layers: int = 4, dropout: float = 0.0,
                 activation: str = "gelu"):
        super().__init__()
        if (vocab_size is None) == (input_dim is None):
            raise ValueError("TransformerClassifier: pass exactly one of vocab_size (token ids) and input_dim (features)")
        self.embed = nn.Embedding(vocab_size, d_model) if vocab_size is not None else nn.Linear(input_dim, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.layers = nn.Sequential(*[
            EncoderLayer(d_model, num_heads, ffn_dim, head_dim=head_dim, dropout=dropout, activation=activation)
            for _ in range(num_layers)
        ])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        h = h + self.pos(torch.arange(h.shape[1], device=h.device))
        return self.head(self.norm(self.layers(h)).mean(1))


def transformer(num_classes: int, max_len: int, **kw) -> TransformerClassifier:
    """:class:`TransformerClassifier` (4 layers of width 64 with 4 heads and FFN 128 by default)."""
    return TransformerClassifier(num_classes, max_len, **kw)
