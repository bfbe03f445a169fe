"""A learned map from a student feature to a teacher feature's shape (Hint's projection, VID's
regressor), and the per-example flattening the pair terms share."""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn


def _flat(t: Tensor) -> Tensor:
    """``[B, ...] -> [B, D]``."""
    return t.reshape(t.shape[0], -1)


class _Projection(nn.Module):
    """Linear map (vectors) or 1x1 convolution (maps) from student to teacher feature size;
    with ``hidden``, an MLP (vectors) or three 1x1 convolutions with ReLUs (maps). A student map
    whose spatial size differs from the teacher's is adaptively average-pooled to it."""

    def __init__(self, s: Tensor, t: Tensor, hidden: Optional[int] = None):
        super().__init__()
        self.maps = s.dim() > 2 and t.dim() > 2
        if self.maps:
            conv = nn.Conv1d if s.dim() == 3 else nn.Conv2d
            cin, cout = s.shape[1], t.shape[1]
            if hidden:
                self.net = nn.Sequential(conv(cin, hidden, 1), nn.ReLU(), conv(hidden, hidden, 1), nn.ReLU(), conv(hidden, cout, 1))
            else:
                self.net = conv(cin, cout, 1)
            self.spatial = tuple(t.shape[2:])
        else:
            din, dout = _flat(s).shape[1], _flat(t).shape[1]
            self.net = nn.Sequential(nn.Linear(din, hidden), nn.ReLU(), nn.Linear(hidden, dout)) if hidden else nn.Linear(din, dout)
            self.spatial = None
        self.net.to(s.device, s.dtype)

    def forward(self, s: Tensor) -> Tensor:
        if self.maps:
            if tuple(s.shape[2:]) != self.spatial:
                pool = F.adaptive_avg_pool1d if s.dim() == 3 else F.adaptive_avg_pool2d
                s = pool(s, self.spatial)
            return self.net(s)
        return self.net(_flat(s))
