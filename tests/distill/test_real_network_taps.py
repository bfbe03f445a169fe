"""The current function-space terms (VID, Hint, PKT) on ResNet stages and Transformer layers, through
feature taps by module path (with views for sequences, bnn/taps.py)."""

from __future__ import annotations

import math

import torch
from torch import nn

import bayesdistill as bd
from bayesdistill.distill import PKT, VID, Hint
from _graph_helpers import tiny_resnet


def _fit(student, x, y, terms):
    return bd.fit(student, (x, y), epochs=1, batch_size=8, progress=False, seed=0, distill=terms)


def _finite(history, *keys):
    return all(math.isfinite(history[-1][k]) for k in keys)


def test_terms_on_resnet_stages_with_other_widths_and_spatial_sizes():
    torch.manual_seed(0)
    teacher = bd.BNN(tiny_resnet())  # layer1: 8 channels at 8x8, layer2: 12 channels at 4x4
    student = bd.BNN(tiny_resnet(blocks=(1, 1), widths=(6, 8)), dataset_size=16)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    vid = VID(teacher, {"layer1": "layer1", "layer2": "layer2"})
    hint = Hint(teacher, {"layer2": "layer1"})  # a 8x8 student map against the teacher's 4x4
    pkt = PKT(teacher, {"layer2": "layer2:pool"})
    result = _fit(student, x, y, [vid, hint, pkt])
    assert _finite(result.history, "distill/vid/loss", "distill/hint/loss", "distill/pkt/loss")
    assert vid.variance(0).shape == (8,) and vid.variance(1).shape == (12,)  # one variance per teacher channel
    proj = hint.proj["0"].net
    assert isinstance(proj, nn.Conv2d) and (proj.in_channels, proj.out_channels) == (6, 12)


def test_terms_on_transformer_layers_read_sequences_through_views():
    torch.manual_seed(0)
    teacher = bd.BNN(bd.models.transformer(4, 6, vocab_size=20, d_model=8, num_heads=2, ffn_dim=16, num_layers=4))
    student = bd.BNN(bd.models.transformer(4, 6, vocab_size=20, d_model=4, num_heads=2, ffn_dim=8, num_layers=2),
                     dataset_size=16)
    x, y = torch.randint(0, 20, (16, 6)), torch.randint(0, 4, (16,))
    # ":seq" presents [B, L, D] as [B, D, L]: channels are the model dimensions, positions the spatial axis
    vid = VID(teacher, {"layers.3:seq": "layers.1:seq"})
    hint = Hint(teacher, {"layers.1:seq": "layers.0:seq"})
    pkt = PKT(teacher, {"layers.3:seq:pool": "layers.1:seq:pool"})  # the mean token of each
    result = _fit(student, x, y, [vid, hint, pkt])
    assert _finite(result.history, "distill/vid/loss", "distill/hint/loss", "distill/pkt/loss")
    assert vid.variance(0).shape == (8,)  # per teacher model dimension, not per position
    proj = hint.proj["0"].net
    assert isinstance(proj, nn.Conv1d) and (proj.in_channels, proj.out_channels) == (4, 8)
