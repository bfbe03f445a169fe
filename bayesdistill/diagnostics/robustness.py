"""Robustness to weight noise: accuracy of a network whose weights are perturbed.

>>> rob = bd.diagnostics.weight_noise_robustness(bnn, data.test, sigmas=(0, 0.05, 0.1, 0.2))
>>> rob.accuracy            # mean test accuracy per noise level (over the draws)
>>> bd.plots.weight_noise(rob)

The measure of robustness of Petrushina et al. (2022, "anti-distillation"): the accuracy of a
model whose parameters are perturbed by Gaussian noise, as a function of the noise level. Here,
for each level sigma and each of ``draws`` draws, every Bayesian weight of the posterior-mean
network is perturbed, ``w = mu + sigma * eps`` (``relative=False``, absolute units) or
``w = mu * (1 + sigma * eps)`` (``relative=True``), eps ~ N(0, 1), and the perturbed network's
top-1 accuracy is measured (evaluation mode). The posterior scales are not used: the question
is how flat the function is around the point the training reached, not the posterior predictive.
The paper's exact protocol is not available offline; this is the measure as the issue states it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from .._checks import check_int, check_number
from ..bnn.network import BNN

__all__ = ["WeightNoiseRobustness", "weight_noise_robustness"]


@dataclass
class WeightNoiseRobustness:
    """Accuracy under weight noise (see the module docstring).

    Attributes:
        sigmas: the noise levels (weight units, or fractions of each weight with ``relative``).
        accuracy: per level, the mean accuracy over the draws (probability units).
        std: per level, the standard deviation of the accuracy over the draws (0 with one draw).
        draws: the number of noise draws per level.
        relative: multiplicative (``True``) or additive (``False``) noise.
        num_examples: the examples scored.
        seed: the seed of the noise.
    """

    sigmas: list[float]
    accuracy: list[float]
    std: list[float]
    draws: int
    relative: bool
    num_examples: int
    seed: Optional[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def area(self) -> float:
        """The mean accuracy over the levels (trapezoid rule over sigma, divided by the range): one
        number for the curve; with a single level, that level's accuracy."""
        if len(self.sigmas) == 1:
            return self.accuracy[0]
        s, a = self.sigmas, self.accuracy
        total = sum((s[i + 1] - s[i]) * (a[i + 1] + a[i]) / 2 for i in range(len(s) - 1))
        return total / (s[-1] - s[0])


def _tensors(data: Any) -> tuple[Tensor, Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
        return data[0], data[1]
    tensors = getattr(data, "tensors", None)
    if isinstance(tensors, (tuple, list)) and len(tensors) >= 2:
        return tensors[0], tensors[1]
    raise TypeError("weight_noise_robustness expects labelled data as an (inputs, targets) tuple or a TensorDataset, "
                    f"got {type(data).__name__}")


@torch.no_grad()
def weight_noise_robustness(
    bnn: BNN,
    data: Any,
    sigmas: Sequence[float] = (0.0, 0.02, 0.05, 0.1, 0.2),
    *,
    draws: int = 10,
    relative: bool = False,
    seed: Optional[int] = 0,
    batch_size: int = 1024,
) -> WeightNoiseRobustness:
    """Top-1 accuracy of the posterior-mean network under Gaussian weight noise, per noise level.

    Args:
        bnn: a classifier (:class:`~bayesdistill.BNN` whose outputs are class scores).
        data: labelled data: ``(inputs, targets)`` or a ``TensorDataset``.
        sigmas: noise levels, each >= 0, increasing.
        draws: noise draws per level (>= 1); the accuracy is averaged over them.
        relative: multiplicative noise ``mu * (1 + sigma * eps)`` instead of ``mu + sigma * eps``.
        seed: seeds the noise (``None``: the global RNG).
        batch_size: examples per forward pass.

    Raises:
        TypeError: not a BNN, or data of another kind.
        ValueError: a negative or non-increasing sigma, ``draws < 1``.
    """
    if not isinstance(bnn, BNN):
        raise TypeError(f"weight_noise_robustness expects a bd.BNN, got {type(bnn).__name__}")
    levels = [check_number("sigma", s, minimum=0.0) for s in sigmas]
    if not levels or any(b <= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"sigmas must be a non-empty increasing sequence of numbers >= 0, got {list(sigmas)}")
    draws = check_int("draws", draws, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    x, y = _tensors(data)
    device = bnn.loc.device
    gen = torch.Generator(device=device).manual_seed(int(seed)) if seed is not None else None
    loc = bnn.loc.detach()
    was = bnn.training
    bnn.eval()
    accs, stds = [], []
    try:
        for s in levels:
            per_draw = []
            for _ in range(draws):
                eps = torch.randn(loc.shape, generator=gen, device=device, dtype=loc.dtype)
                flat = loc * (1 + s * eps) if relative else loc + s * eps
                weights = {name: t.view(shape) for (name, shape), t in
                           zip(bnn.shapes.items(), flat.split([math.prod(v) for v in bnn.shapes.values()]))}
                correct = 0
                for i in range(0, len(x), batch_size):
                    xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
                    out = bnn.forward_with(xb, weights)
                    correct += int((out.argmax(-1) == yb).sum())
                per_draw.append(correct / len(x))
            accs.append(statistics.fmean(per_draw))
            stds.append(statistics.stdev(per_draw) if len(per_draw) > 1 else 0.0)
    finally:
        bnn.train(was)
    return WeightNoiseRobustness(levels, accs, stds, draws, bool(relative), len(x), seed)
