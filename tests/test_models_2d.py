"""The 2-D CNNs for square images (the 8x8 digits): their feature maps, and that the small one
is reachable from the deep one by ``bd.align``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bayesdistill as bd
from bayesdistill.bnn import last_hidden_layer


def test_the_2d_cnns_are_registered_and_take_flat_or_image_inputs():
    assert {"cnn2d", "cnn2d-deep", "cnn2d-small"} <= set(bd.models.available())
    x = torch.rand(5, 64)  # digits: 64 pixels of an 8x8 image
    for name in ("cnn2d", "cnn2d-deep", "cnn2d-small"):
        net = bd.models.build(name, (64,), 10)
        out = net(x)
        assert out.shape == (5, 10)
        torch.testing.assert_close(net(x.reshape(5, 1, 8, 8)), out)  # [B, 1, H, W] passes through ToImage
        torch.testing.assert_close(net(x.reshape(5, 8, 8)), out)
    # the same net from an image shape
    assert bd.models.build("cnn2d", (8, 8), 10)(x).shape == (5, 10)
    with pytest.raises(ValueError, match="square image"):
        bd.models.build("cnn2d", (40,), 10)


def test_the_deep_2d_cnn_has_the_issues_2048_value_feature_map():
    """cnn2d-deep on 8x8 images: 32-channel maps at full resolution (32 x 8 x 8 = 2,048 values,
    module "4") and a 32 x 4 x 4 last hidden map (module "6") before the read-out."""
    net = bd.models.build("cnn2d-deep", (64,), 10)
    feats = {}
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: feats.__setitem__(k, o))
             for k, m in net.named_modules() if k in ("4", "6")]
    net(torch.rand(3, 64))
    for h in hooks:
        h.remove()
    assert feats["4"].shape == (3, 32, 8, 8) and feats["4"][0].numel() == 2048
    assert feats["6"].shape == (3, 32, 4, 4)
    assert last_hidden_layer(net) == "6"
    assert [type(m) for m in net][:2] == [bd.models.ToImage, nn.Conv2d]


def test_the_small_2d_cnn_is_reachable_from_the_deep_one_by_alignment():
    torch.manual_seed(0)
    teacher = bd.BNN(bd.models.build("cnn2d-deep", (64,), 10))
    student = bd.models.build("cnn2d-small", (64,), 10)
    plan = bd.align(teacher, student)
    aligned = bd.BNN(student, prior=bd.priors.TeacherPosterior(teacher.posterior(), plan=plan))
    assert aligned(torch.rand(2, 64)).shape == (2, 10)
