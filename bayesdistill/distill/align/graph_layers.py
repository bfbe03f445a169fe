"""Graph rules of the layers alignment edits (registered with :func:`.graph.register_layer_handler`).

- ``nn.Linear``, ``nn.Conv1d/2d/3d``: read the input group (weight columns), start a group (rows,
  bias); a depthwise convolution (``groups == in == out``) carries its input group on;
- ``nn.BatchNorm*``, ``nn.InstanceNorm*``: per-channel entries of the group they normalize;
- ``nn.LayerNorm``, ``nn.GroupNorm``: entries of the group, which becomes fixed (they normalize
  over all its units, so removing one changes every output);
- ``nn.Embedding``: starts a group (its columns);
- :class:`~bayesdistill.models.SelfAttention`: a group of heads (q, k, v rows and output-projection
  columns, ``head_dim`` entries per head) and a group for its output;
- ``nn.MultiheadAttention``: its packed ``in_proj_weight`` ties heads x head_dim to its
  embedding width: a fixed group (the heads cannot be narrowed);
- ``nn.TransformerEncoderLayer``: the feed-forward units are a group; the attention as above; a
  pre-norm layer (``norm_first=True``) inside a container is a removable residual block;
- ``nn.TransformerEncoder``: its layers one after the other (each a block of ``<path>.layers``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ...errors import UnsupportedLayerError
from ...models import SelfAttention, Unsqueeze
from .graph import GraphBuilder, Tag, register_layer_handler
from .graph_ops import reshape_tag

__all__: list[str] = []


def _last(tag: Tag, value: Any, path: str, what: str) -> None:
    if tag.axis != value.dim() - 1:
        raise UnsupportedLayerError(f"{what} {path!r} reads its features on the last axis, but the channels are on axis {tag.axis}")


def _has(module: nn.Module, attr: str) -> bool:
    return getattr(module, attr, None) is not None


def _new_out(b: GraphBuilder, path: str, units: int, kind: str, bias: bool, weight: str = "weight") -> int:
    g = b.new_group(units, kind, path)
    b.member(g, f"{path}.{weight}", 0, "out")
    if bias:
        b.member(g, f"{path}.bias", 0, "out")
    return g


def _read(b: GraphBuilder, tag: Any, path: str, dim: int, axis: int, weight: str = "weight") -> None:
    """Layer ``path`` reads the group of ``tag`` through the columns (``dim``) of its weight."""
    if tag is not None:
        b.member(tag.group, f"{path}.{weight}", dim, "in", tag.width)
        b.consumer(tag.group, path, axis, tag.width)


@register_layer_handler(nn.Linear)
def _linear(b: GraphBuilder, path: str, m: nn.Linear, tags: tuple, values: tuple, out: Any) -> Tag:
    tag = tags[0]
    if tag is not None:
        _last(tag, values[0], path, "Linear layer")
    _read(b, tag, path, 1, -1)
    return Tag(_new_out(b, path, m.out_features, "features", _has(m, "bias")), out.dim() - 1)


@register_layer_handler(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(b: GraphBuilder, path: str, m: nn.Module, tags: tuple, values: tuple, out: Any) -> Tag:
    tag = tags[0]
    if tag is not None and (tag.axis != 1 or tag.width != 1):
        raise UnsupportedLayerError(f"convolution {path!r} reads channels on axis 1, got axis {tag.axis}")
    if m.groups == 1:
        _read(b, tag, path, 1, 1)
        return Tag(_new_out(b, path, m.out_channels, "channels", _has(m, "bias")), 1)
    if m.groups == m.in_channels == m.out_channels and tag is not None:  # depthwise: channel c reads channel c
        b.member(tag.group, f"{path}.weight", 0, "own")
        if _has(m, "bias"):
            b.member(tag.group, f"{path}.bias", 0, "own")
        return tag
    raise UnsupportedLayerError(
        f"convolution {path!r} has groups={m.groups} ({m.in_channels} -> {m.out_channels} channels); alignment "
        "edits ordinary (groups=1) and depthwise (groups = in = out channels) convolutions"
    )


_PER_CHANNEL = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


@register_layer_handler(*_PER_CHANNEL)
def _batch_norm(b: GraphBuilder, path: str, m: nn.Module, tags: tuple, values: tuple, out: Any) -> Any:
    tag = tags[0]
    if tag is None:
        return None
    if tag.axis != 1 or tag.width != 1:
        raise UnsupportedLayerError(f"normalization {path!r} normalizes channels on axis 1, got axis {tag.axis}")
    for attr in ("weight", "bias", "running_mean", "running_var"):
        if _has(m, attr):
            b.member(tag.group, f"{path}.{attr}", 0, "own")
    return tag


@register_layer_handler(nn.LayerNorm, nn.GroupNorm)
def _layer_norm(b: GraphBuilder, path: str, m: nn.Module, tags: tuple, values: tuple, out: Any) -> Any:
    tag = tags[0]
    if tag is None:
        return None
    if isinstance(m, nn.LayerNorm):
        if len(m.normalized_shape) != 1:
            raise UnsupportedLayerError(f"LayerNorm {path!r} normalizes over {len(m.normalized_shape)} axes; alignment needs one")
        _last(tag, values[0], path, "LayerNorm")
    elif tag.axis != 1:
        raise UnsupportedLayerError(f"GroupNorm {path!r} normalizes channels on axis 1, got axis {tag.axis}")
    for attr in ("weight", "bias"):
        if _has(m, attr):
            b.member(tag.group, f"{path}.{attr}", 0, "own")
    b.fix(tag.group, f"{type(m).__name__} {path!r} normalizes over all of them")
    return tag


@register_layer_handler(nn.Embedding)
def _embedding(b: GraphBuilder, path: str, m: nn.Embedding, tags: tuple, values: tuple, out: Any) -> Tag:
    g = b.new_group(m.embedding_dim, "features", path)
    b.member(g, f"{path}.weight", 1, "out")
    return Tag(g, out.dim() - 1)


@register_layer_handler(Unsqueeze)
def _unsqueeze(b: GraphBuilder, path: str, m: nn.Module, tags: tuple, values: tuple, out: Any) -> Any:
    return reshape_tag(tags[0], values[0], out, path)


@register_layer_handler(SelfAttention)
def _self_attention(b: GraphBuilder, path: str, m: SelfAttention, tags: tuple, values: tuple, out: Any) -> Tag:
    tag = tags[0]
    if tag is not None:
        _last(tag, values[0], path, "attention")
    heads = b.new_group(m.num_heads, "heads", path)
    for p in ("q", "k", "v"):
        _read(b, tag, f"{path}.{p}", 1, -1)
        b.member(heads, f"{path}.{p}.weight", 0, "out", m.head_dim)
        if _has(getattr(m, p), "bias"):
            b.member(heads, f"{path}.{p}.bias", 0, "out", m.head_dim)
    b.member(heads, f"{path}.out.weight", 1, "in", m.head_dim)
    b.consumer(heads, f"{path}.out", -1, m.head_dim)
    return Tag(_new_out(b, f"{path}.out", m.out.out_features, "features", _has(m.out, "bias")), out[0].dim() - 1
               if isinstance(out, tuple) else out.dim() - 1)


def _mha(b: GraphBuilder, path: str, m: nn.MultiheadAttention, tag: Any, values: tuple) -> int:
    """The groups of an ``nn.MultiheadAttention`` used as self-attention; returns its output group."""
    if not m._qkv_same_embed_dim or m.bias_k is not None:
        raise UnsupportedLayerError(
            f"nn.MultiheadAttention {path!r} with separate kdim/vdim or add_bias_kv: alignment edits packed self-attention only"
        )
    if tag is not None:
        b.member(tag.group, f"{path}.in_proj_weight", 1, "in")
        b.fix(tag.group, f"nn.MultiheadAttention {path!r} reads them inside its own forward")
    inner = b.new_group(m.embed_dim, "features", path)
    b.member(inner, f"{path}.in_proj_weight", 0, "out", 1, 3)
    if m.in_proj_bias is not None:
        b.member(inner, f"{path}.in_proj_bias", 0, "out", 1, 3)
    b.member(inner, f"{path}.out_proj.weight", 1, "in")
    b.fix(inner, f"nn.MultiheadAttention {path!r} ties heads x head_dim to embed_dim (use bd.models.SelfAttention "
                 "for fewer heads)")
    return _new_out(b, f"{path}.out_proj", m.embed_dim, "features", m.out_proj.bias is not None)


@register_layer_handler(nn.MultiheadAttention)
def _multihead(b: GraphBuilder, path: str, m: nn.MultiheadAttention, tags: tuple, values: tuple, out: Any) -> tuple:
    if len(values) < 3 or not (values[0] is values[1] is values[2]):
        raise UnsupportedLayerError(f"nn.MultiheadAttention {path!r}: alignment edits self-attention (query = key = value)")
    tag = tags[0]
    if tag is not None:
        _last(tag, values[0], path, "attention")
    g = _mha(b, path, m, tag, values)
    return (Tag(g, out[0].dim() - 1), None)


@register_layer_handler(nn.TransformerEncoderLayer)
def _encoder_layer(b: GraphBuilder, path: str, m: nn.TransformerEncoderLayer, tags: tuple, values: tuple, out: Any) -> Tag:
    tag = tags[0]
    if tag is None:
        raise UnsupportedLayerError(f"nn.TransformerEncoderLayer {path!r} reads the network input directly")
    _last(tag, values[0], path, "nn.TransformerEncoderLayer")
    stream = b.union(tag.group, _mha(b, f"{path}.self_attn", m.self_attn, tag, values), path)
    _read(b, Tag(stream, tag.axis), f"{path}.linear1", 1, -1)
    ffn = _new_out(b, f"{path}.linear1", m.linear1.out_features, "features", m.linear1.bias is not None)
    _read(b, Tag(ffn, tag.axis), f"{path}.linear2", 1, -1)
    stream = b.union(stream, _new_out(b, f"{path}.linear2", m.linear2.out_features, "features",
                                      m.linear2.bias is not None), path)
    for norm in ("norm1", "norm2"):
        _layer_norm(b, f"{path}.{norm}", getattr(m, norm), (Tag(stream, tag.axis),), values, out)
    if path.rpartition(".")[2].isdigit():
        b.block(path, None if m.norm_first else (
            "it is post-norm (norm_first=False): LayerNorm follows the residual addition, so a zero branch is not "
            "the identity"))
    return Tag(b.find(stream), tag.axis)


@register_layer_handler(nn.TransformerEncoder)
def _encoder(b: GraphBuilder, path: str, m: nn.TransformerEncoder, tags: tuple, values: tuple, out: Any) -> Tag:
    tag = tags[0]
    for i, layer in enumerate(m.layers):
        tag = b.call(f"{path}.layers.{i}", layer, tag, values[0], out)
    if m.norm is not None:
        tag = b.call(f"{path}.norm", m.norm, tag, values[0], out)
    return tag
