"""Builders shared by the distillation-term tests (tests/distill/...): small teachers and data,
the features a traced student and a teacher compute, and Gaussian log-densities by hand."""

from __future__ import annotations

import math

import torch
from pyro.poutine.messenger import Messenger
from torch import nn

import bayesdistill as bd
from _helpers import randomize_posterior, tiny_mlp
from bayesdistill.bnn import FeatureTaps

LOG_2PI = math.log(2 * math.pi)


def conv_teacher(seed: int = 1) -> nn.Sequential:
    """``[B, 1, 12] -> Conv1d(6) -> ReLU -> MaxPool(2) -> Linear``: path "2" is a ``[B, 6, 6]`` map."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv1d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(36, 3))


def conv_data(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 12, generator=g), torch.arange(n) % 3


def bnn_teacher(seed: int = 1, hidden: int = 8) -> bd.BNN:
    teacher = bd.BNN(tiny_mlp(hidden=hidden, seed=seed))
    randomize_posterior(teacher, seed=seed, scale_range=(0.05, 0.3))
    return teacher


def student_features(bnn: bd.BNN, x, trace, paths):
    """The student's output and tapped features under the weights drawn in ``trace``."""
    weights = {name: trace.nodes[name]["value"] for name in bnn.site_names}
    with FeatureTaps(bnn.net, paths) as taps:
        out = bnn.forward_with(x, weights)
    return out, dict(taps.features)


def teacher_features(teacher: nn.Module, x, paths):
    """Output and features of a plain network, or of a BNN at its posterior mean."""
    net = teacher.net if isinstance(teacher, bd.BNN) else teacher
    with torch.no_grad(), FeatureTaps(net, paths) as taps:
        out = teacher(x)
    return out, dict(taps.features)


def hand_gauss_logq(t, mu, var_c):
    """sum_{c, ...} log N(t; mu, sigma_c^2) per example, written out (variance per channel = dim 1)."""
    b, c = t.shape[0], t.shape[1]
    v = var_c.reshape(1, c, *([1] * (t.dim() - 2))).expand_as(t)
    d = t[0].numel()
    per = 0.5 * torch.log(v) + (t - mu) ** 2 / (2 * v)
    return -per.reshape(b, -1).sum(1) - 0.5 * d * LOG_2PI


class PlateSpy(Messenger):
    """Record the size and batch of every ``distill`` plate and whether an ``obs`` site passed by."""

    def __init__(self):
        super().__init__()
        self.sizes: list[tuple[int, int]] = []
        self.obs_seen = 0

    def _pyro_sample(self, msg):
        if msg["name"] == "distill" and msg["type"] == "sample":
            self.sizes.append((int(msg["fn"].size), len(msg["value"])))  # the batch is the given subsample
        if msg["name"] == "obs":
            self.obs_seen += 1
