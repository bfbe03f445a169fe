"""The reference architectures of bd.models: sizes of the literature, shapes, the attention's formula."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bayesdistill as bd
from bayesdistill.models import EncoderLayer, SelfAttention

# parameter counts reported by the CRD benchmark (Tian et al. 2020) for CIFAR-100, and ResNet-18's
# usual 11.17M for 10 classes: (classes, count)
SIZES = {"resnet8x4": (100, 1_233_000), "resnet32x4": (100, 7_433_000), "wrn-16-2": (100, 703_000),
         "wrn-40-2": (100, 2_255_000), "resnet56": (100, 861_000), "resnet110": (100, 1_735_000),
         "resnet18": (10, 11_174_000)}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_parameter_counts_match_the_literature(name):
    classes, expected = SIZES[name]
    with torch.device("meta"):
        net = bd.models.build(name, (3, 32, 32), classes)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - expected) / expected < 0.005, n


IMAGE_MODELS = [n for n in bd.models.available() if n.startswith(("resnet", "wrn", "mobile"))]


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_map_images_to_logits(name):
    kw = {"last_channels": 32} if name.startswith("mobile") else {}
    if name in ("resnet18", "resnet10"):
        kw["widths"] = (8, 8, 8, 8)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = bd.models.build(name, (3, 16, 16), 7, **kw).eval()
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 7)
    # the stages are children named layer1.. / stages.. so that students with fewer blocks share paths
    assert any(p in dict(net.named_children()) for p in ("layer1", "stages"))


def test_resnet_layout_and_shortcuts():
    net = bd.models.resnet(10, blocks=(2, 1), widths=(8, 16))
    assert [type(m).__name__ for m in net.layer1] == ["BasicBlock", "BasicBlock"]
    assert len(net.layer1[0].shortcut) == 0  # identity skip
    assert isinstance(net.layer2[0].shortcut[0], nn.Conv2d) and net.layer2[0].shortcut[0].stride == (2, 2)
    with pytest.raises(ValueError, match="6 n \\+ 2"):
        bd.models.cifar_resnet(9)
    with pytest.raises(ValueError, match="6 n \\+ 4"):
        bd.models.wide_resnet(15)
    with pytest.raises(ValueError, match=r"input_shape must be \(channels, height, width\)"):
        bd.models.build("resnet8", (40,), 10)


def test_mobilenet_uses_depthwise_convolutions():
    net = bd.models.build("mobile-half", (3, 32, 32), 10)
    depthwise = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)


def test_self_attention_is_multi_head_attention_by_its_formula():
    torch.manual_seed(0)
    attn = SelfAttention(6, num_heads=3, head_dim=4).eval()  # heads x head_dim (12) need not equal the width
    x = torch.randn(2, 5, 6)
    q, k, v = attn.q(x), attn.k(x), attn.v(x)
    heads = []
    for h in range(3):
        s = slice(4 * h, 4 * h + 4)
        w = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(4), dim=-1)
        heads.append(w @ v[..., s])
    expected = attn.out(torch.cat(heads, -1))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_a_pre_norm_layer_with_zero_branches_is_the_identity():
    layer = EncoderLayer(8, 2, 16).eval()
    with torch.no_grad():
        for lin in (layer.attn.out, layer.ffn[3]):
            lin.weight.zero_()
            lin.bias.zero_()
    x = torch.randn(3, 4, 8)
    assert torch.equal(layer(x), x)


def test_transformer_inputs():
    tokens = bd.models.build("transformer", (7,), 3, vocab_size=11, num_layers=1)
    assert tokens(torch.randint(0, 11, (2, 7))).shape == (2, 3)
    features = bd.models.build("transformer", (7, 5), 3, num_layers=1)
    assert isinstance(features.embed, nn.Linear) and features(torch.randn(2, 7, 5)).shape == (2, 3)
    with pytest.raises(ValueError, match="vocab_size"):
        bd.models.build("transformer", (7,), 3)
    with pytest.raises(ValueError, match="divisible"):
        SelfAttention(10, 3)
