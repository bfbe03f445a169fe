"""The computation graph of a network (distill/align/graph.py): coupled slices and residual blocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bayesdistill as bd
from bayesdistill import UnsupportedLayerError
from bayesdistill.distill.align import trace_network
from bayesdistill.distill.align.graph import GraphGeometry, Member
from _graph_helpers import tiny_resnet, tiny_transformer


def _group(graph, name):
    return next(g for g in graph.groups if g.name == name)


def _slices(g, role=None):
    return {(m.tensor, m.dim) for m in g.members if role is None or m.role == role}


def test_a_residual_stream_couples_every_layer_that_writes_or_reads_it():
    net = tiny_resnet()  # stem 8, stage 1: two blocks of 8, stage 2: two blocks of 12 (first with a projection)
    g = trace_network(net, torch.randn(2, 3, 8, 8))
    stream1 = _group(g, "conv1")
    assert stream1.units == 8 and stream1.fixed is None
    # written by the stem and both blocks of stage 1 (the residual additions), read by the next layers
    assert _slices(stream1, "out") == {("conv1.weight", 0), ("layer1.0.conv2.weight", 0), ("layer1.1.conv2.weight", 0)}
    assert _slices(stream1, "in") == {("layer1.0.conv1.weight", 1), ("layer1.1.conv1.weight", 1),
                                      ("layer2.0.conv1.weight", 1), ("layer2.0.shortcut.0.weight", 1)}
    bns = {t for t, _ in _slices(stream1, "own")}
    assert bns >= {"bn1.running_mean", "layer1.0.bn2.weight", "layer1.1.bn2.running_var"}
    assert [c.path for c in stream1.consumers] == ["layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1",
                                                   "layer2.0.shortcut.0"]
    # stage 2's stream: the first block's conv2 and its projection shortcut, read by the read-out across the pooling
    stream2 = _group(g, "layer2.0.conv2")
    assert ("layer2.0.shortcut.0.weight", 0) in _slices(stream2, "out") and ("fc.weight", 1) in _slices(stream2, "in")
    # inside a block: conv1's channels, its BatchNorm, conv2's columns
    inner = _group(g, "layer1.1.conv1")
    assert _slices(inner) == {("layer1.1.conv1.weight", 0), ("layer1.1.bn1.weight", 0), ("layer1.1.bn1.bias", 0),
                              ("layer1.1.bn1.running_mean", 0), ("layer1.1.bn1.running_var", 0),
                              ("layer1.1.conv2.weight", 1)}
    assert _group(g, "fc").fixed == "they are the network output"


def test_residual_blocks_are_found_with_the_reason_when_not_removable():
    g = trace_network(tiny_resnet(), torch.randn(2, 3, 8, 8))
    reasons = {b.path: b.removable for b in g.blocks}
    assert reasons["layer1.0"] is None and reasons["layer1.1"] is None and reasons["layer2.1"] is None
    assert "skip connection is not the identity" in reasons["layer2.0"] and "layer2.0.shortcut.1" in reasons["layer2.0"]
    assert {b.stage for b in g.blocks} == {"layer1", "layer2"}


def test_a_flatten_gives_a_channel_its_positions():
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    g = trace_network(net, torch.randn(2, 2, 4, 4))
    conv = _group(g, "0")
    assert Member("3.weight", 1, "in", 16) in conv.members and conv.consumers[0].width == 16


def test_transformer_heads_and_feed_forward_units_are_groups_and_the_stream_is_fixed():
    g = trace_network(tiny_transformer(layers=2), torch.randint(0, 20, (2, 6)))
    heads = _group(g, "layers.1.attn")
    assert heads.kind == "heads" and heads.units == 4
    assert Member("layers.1.attn.q.weight", 0, "out", 2) in heads.members
    assert Member("layers.1.attn.v.bias", 0, "out", 2) in heads.members
    assert Member("layers.1.attn.out.weight", 1, "in", 2) in heads.members
    ffn = _group(g, "layers.0.ffn.0")
    assert _slices(ffn) == {("layers.0.ffn.0.weight", 0), ("layers.0.ffn.0.bias", 0), ("layers.0.ffn.3.weight", 1)}
    stream = _group(g, "embed")
    assert "LayerNorm 'layers.0.norm1'" in stream.fixed
    assert ("pos.weight", 1) in _slices(stream) and ("layers.1.attn.out.weight", 0) in _slices(stream)
    assert [b.removable for b in g.blocks] == [None, None]


def test_torch_transformer_layers_are_handled_as_units():
    def model(norm_first):
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=norm_first)
        return nn.Sequential(nn.Embedding(10, 8), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False))

    g = trace_network(model(True), torch.randint(0, 10, (2, 5)))
    ffn = _group(g, "1.layers.0.linear1")
    assert ffn.fixed is None and [c.path for c in ffn.consumers] == ["1.layers.0.linear2"]
    attn = _group(g, "1.layers.1.self_attn")
    assert "ties heads x head_dim" in attn.fixed
    assert Member("1.layers.1.self_attn.in_proj_weight", 0, "out", 1, 3) in attn.members
    assert [(b.path, b.removable) for b in g.blocks] == [("1.layers.0", None), ("1.layers.1", None)]
    post = trace_network(model(False), torch.randint(0, 10, (2, 5)))
    assert all("post-norm" in b.removable for b in post.blocks)


def test_depthwise_convolutions_carry_their_channels():
    net = bd.models.mobilenetv2(4, width=0.5, last_channels=16, setting=((1, 8, 1, 1), (2, 8, 2, 1)))
    g = trace_network(net, torch.randn(2, 3, 8, 8))
    expand = _group(g, "stages.1.1.conv.0")
    assert ("stages.1.1.conv.3.weight", 0) in _slices(expand, "own")  # the depthwise kernels
    assert {b.path: b.removable for b in g.blocks}["stages.1.1"] is None


class _Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)


class _Split(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        return self.fc(x).reshape(x.shape[0], 2, 3).sum(1)


def test_what_the_rules_do_not_cover_is_named():
    with pytest.raises(UnsupportedLayerError, match=r"cat\(\) in module '<root>'"):
        trace_network(_Cat(), torch.randn(2, 3, 4, 4))
    with pytest.raises(UnsupportedLayerError, match=r"'0' has groups=2"):
        trace_network(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), torch.randn(2, 4, 5, 5))
    with pytest.raises(UnsupportedLayerError, match=r"reshape \(2, 6\) -> \(2, 2, 3\).*splits or mixes"):
        trace_network(_Split(), torch.randn(2, 6))
    with pytest.raises(UnsupportedLayerError, match=r"'1' \(LSTM\)"):
        trace_network(nn.Sequential(nn.Linear(3, 4), nn.LSTM(4, 4)), torch.randn(2, 3))


def test_geometry_round_trips_through_plain_data():
    g = trace_network(tiny_transformer(layers=2), torch.randint(0, 20, (2, 6))).geometry
    again = GraphGeometry.from_state(g.state())
    assert again == g
    torch.save(g.state(), __import__("io").BytesIO())  # plain data: weights_only-loadable
