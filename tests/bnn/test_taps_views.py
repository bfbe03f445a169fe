"""Views of tapped features (bnn/taps.py): ``"<module path>:<view>..."`` reshapes what a tap captures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bayesdistill as bd
from bayesdistill.bnn.taps import VIEWS, FeatureTaps, split_path


def test_views_reshape_the_captured_output():
    net = bd.models.transformer(3, 5, vocab_size=10, d_model=8, num_layers=2)
    x = torch.randint(0, 10, (4, 5))
    with FeatureTaps(net, ["layers.1", "layers.1:seq", "layers.1:seq:pool", "layers.1:flat"]) as taps:
        net(x)
    raw = taps.features["layers.1"]
    assert raw.shape == (4, 5, 8)
    assert torch.equal(taps.features["layers.1:seq"], raw.transpose(1, 2))
    torch.testing.assert_close(taps.features["layers.1:seq:pool"], raw.mean(1))
    assert torch.equal(taps.features["layers.1:flat"], raw.reshape(4, 40))


def test_pool_and_first():
    net = bd.models.resnet(3, blocks=(1, 1), widths=(4, 6))
    x = torch.randn(2, 3, 8, 8)
    with FeatureTaps(net, ["layer2", "layer2:pool"]) as taps:
        net.eval()(x)
    torch.testing.assert_close(taps.features["layer2:pool"], taps.features["layer2"].mean((2, 3)))

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(4, 2, batch_first=True)

        def forward(self, h):
            return self.mha(h, h, h)[0]

    m = Attn()
    h = torch.randn(2, 3, 4)
    with FeatureTaps(m, ["mha:first"]) as taps:
        out = m(h)
    assert torch.equal(taps.features["mha:first"], out)


def test_bad_views_are_named():
    net = bd.models.resnet(3, blocks=(1,), widths=(4,))
    with pytest.raises(KeyError, match=r"unknown view\(s\) \['mean'\]; views: seq, pool, flat, first"):
        FeatureTaps(net, ["layer1:mean"])
    with pytest.raises(KeyError, match="has no module 'layer9'"):
        FeatureTaps(net, ["layer9:pool"])
    with FeatureTaps(net, ["layer1:seq"]) as taps, pytest.raises(ValueError, match=r"'seq' expects a sequence"):
        net(torch.randn(1, 3, 4, 4))
    assert split_path("a.b:seq:pool") == ("a.b", ["seq", "pool"]) and set(VIEWS) == {"seq", "pool", "flat", "first"}
