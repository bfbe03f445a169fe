"""Observation models p(y | f(x; w)).

A likelihood turns the network output of a batch into one Pyro sample site ``"obs"``; the
:class:`~bayesdistill.BNN` places it inside ``pyro.plate("data", dataset_size, subsample=...)``
so the batch log-likelihood is scaled by ``dataset_size / batch_size``.

- :class:`Categorical`: classification, output = logits ``[B, C]``, targets int64 ``[B]``.
- :class:`Normal`: regression, output = mean ``[B, D]``, targets float ``[B, D]``, fixed or
  learned observation noise (standard deviation, in target units).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_number
from ..errors import DataError

__all__ = ["Likelihood", "Categorical", "Normal"]


class Likelihood(nn.Module):
    """Base class of observation models (an ``nn.Module`` so that learned noise moves with ``.to``)."""

    task: str = ""

    def distribution(self, output: Tensor) -> dist.TorchDistribution:
        """p(y | output) with batch shape ``[B]`` (event dims folded in)."""
        raise NotImplementedError

    def observe(self, output: Tensor, y: Tensor | None) -> Tensor:
        """Emit the ``"obs"`` site (inside the caller's data plate); return the sampled/observed y."""
        return pyro.sample("obs", self.distribution(output), obs=y)

    def check(self, output: Tensor, y: Tensor | None) -> None:
        """Raise :class:`DataError` if ``output``/``y`` cannot be scored by this likelihood."""
        raise NotImplementedError

    def log_prob(self, output: Tensor, y: Tensor) -> Tensor:
        """log p(y | output), shape ``[B]``, in nats."""
        return self.distribution(output).log_prob(y)


class Categorical(Likelihood):
    """Categorical likelihood on logits: p(y = c | x, w) = softmax(f(x; w))_c.

    Output ``[B, C]`` (logits); targets int64 ``[B]`` with values in ``[0, C)``.
    """

    task = "classification"

    def distribution(self, output: Tensor) -> dist.TorchDistribution:
        return dist.Categorical(logits=output, validate_args=False)

    def check(self, output: Tensor, y: Tensor | None) -> None:
        if output.dim() != 2:
            raise DataError(
                f"Categorical likelihood expects network output of shape [batch, num_classes], "
                f"got {tuple(output.shape)}"
            )
        if y is None:
            return
        if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise DataError(
                f"Categorical likelihood expects integer class labels (int64), got dtype {y.dtype}; "
                "for regression use bd.likelihoods.Normal()"
            )
        if y.shape != output.shape[:1]:
            raise DataError(
                f"Categorical likelihood expects labels of shape [batch] = [{output.shape[0]}], "
                f"got {tuple(y.shape)}"
            )
        num_classes = output.shape[1]
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise DataError(
                f"labels must lie in [0, {num_classes}) for a network with {num_classes} outputs; "
                f"got labels from {int(y.min())} to {int(y.max())}"
            )

    def log_prob(self, output: Tensor, y: Tensor) -> Tensor:
        return -F.cross_entropy(output, y, reduction="none")

    def extra_repr(self) -> str:
        return ""


class Normal(Likelihood):
    """Gaussian likelihood y ~ N(f(x; w), sigma^2 I) for regression.

    Args:
        scale: observation noise standard deviation sigma (target units), > 0. With
            ``learn_scale=True`` this is the initial value and sigma becomes a point-estimated
            parameter (positive through ``softplus``) fitted with the variational parameters.
        learn_scale: fit sigma by maximizing the ELBO (type-II maximum likelihood).

    Output ``[B, D]`` (means); targets float ``[B, D]`` (a ``[B]`` target is accepted when D = 1).
    """

    task = "regression"

    def __init__(self, scale: float = 1.0, learn_scale: bool = False):
        super().__init__()
        scale = check_number("Normal likelihood: scale", scale, minimum=0.0, exclusive_minimum=True)
        self.learn_scale = bool(learn_scale)
        raw = torch.tensor(math.log(math.expm1(scale)))
        if learn_scale:
            self.raw_scale = nn.Parameter(raw)
        else:
            self.register_buffer("raw_scale", raw)

    @property
    def scale(self) -> Tensor:
        """Observation noise standard deviation sigma (0-d tensor)."""
        return F.softplus(self.raw_scale)

    def _match(self, output: Tensor, y: Tensor | None) -> Tensor | None:
        if y is not None and y.dim() == 1 and output.dim() == 2 and output.shape[1] == 1:
            return y.unsqueeze(-1)
        return y

    def distribution(self, output: Tensor) -> dist.TorchDistribution:
        return dist.Normal(output, self.scale, validate_args=False).to_event(1)

    def observe(self, output: Tensor, y: Tensor | None) -> Tensor:
        return pyro.sample("obs", self.distribution(output), obs=self._match(output, y))

    def log_prob(self, output: Tensor, y: Tensor) -> Tensor:
        return self.distribution(output).log_prob(self._match(output, y))

    def check(self, output: Tensor, y: Tensor | None) -> None:
        if output.dim() != 2:
            raise DataError(
                f"Normal likelihood expects network output of shape [batch, dim], got {tuple(output.shape)}"
            )
        if y is None:
            return
        if not y.is_floating_point():
            raise DataError(
                f"Normal likelihood expects float targets, got dtype {y.dtype}; "
                "for class labels use bd.likelihoods.Categorical()"
            )
        y = self._match(output, y)
        if y.shape != output.shape:
            raise DataError(
                f"Normal likelihood expects targets of shape {tuple(output.shape)} (the network "
                f"output), got {tuple(y.shape)}"
            )

    def extra_repr(self) -> str:
        return f"scale={float(self.scale.detach()):.4g}, learn_scale={self.learn_scale}"
