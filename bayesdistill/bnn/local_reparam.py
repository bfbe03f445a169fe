"""Local reparameterization (Kingma, Salimans & Welling, 2015) as a Pyro effect handler.

For a layer ``y = x W^T + b`` with independent Gaussian weights ``W ~ N(M, S^2)``, ``b ~ N(m,
s^2)``, every pre-activation is Gaussian given ``x``:

    y ~ N(x M^T + m,  x^2 (S^2)^T + s^2)

so one can sample the pre-activations instead of the weights. For a Linear layer whose
outputs feed the rest of the network, the per-example joint distribution of its outputs is
exactly that of the weight-sampled layer (given x, different output units use different weight
rows), so the estimator of the expected log-likelihood stays unbiased, its variance drops (the
noise is independent per example) and no weight-sized noise tensor is drawn.

Convolutions are handled with ``conv(x, M)`` and ``conv(x^2, S^2)``, which gives every output
*position* the right marginal but samples positions independently, although they share one
kernel. That drops the correlation between positions, so for convolutions this is a different
estimator, not an unbiased one of the weight-space expected log-likelihood (measured on the
MNIST-1D CNN: ECE 0.124-0.133 with it vs 0.066-0.075 without, docs/bayesian-core.md). On CPU
it also costs 1.4-2.1x an ordinary step (two matmuls/convolutions per layer, docs/benchmarks.md).

The KL term is untouched: it depends only on the guide's ``(loc, scale)``, which the guide
still emits as ``Normal(loc, scale).to_event(k)`` sites, so the ELBO's KL stays exact.

Usage (``bd.fit(..., local_reparam=True)`` does this for you)::

    with bd.local_reparameterization():
        loss = svi.step(x, y)

Inside the handler, guide sites that a :class:`~bayesdistill.BNN` marks as local-
reparameterizable record their ``(loc, scale)`` instead of drawing a weight sample (their value
is the mean, which the model does not use for those layers), and the BNN's forward pass samples
the pre-activations of those Linear/Conv layers from the recorded moments.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn

__all__ = ["LocalReparameterization", "local_reparameterization", "current", "lrt_forward", "LRT_LAYERS",
           "LAYER_CHOICES"]

LRT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ACTIVE: list["LocalReparameterization"] = []
INFER_KEY = "bd_local_reparam"


LAYER_CHOICES = {"all": LRT_LAYERS, "linear": (nn.Linear,)}


class LocalReparameterization(Messenger):
    """Effect handler that turns weight sampling into pre-activation sampling (see module doc).

    Args:
        layers: which layers sample their pre-activations: ``"all"`` (Linear and Conv1d/2d/3d)
            or ``"linear"`` (Linear only: the layers where the estimator is exactly the weight-
            space one for 2-D inputs; convolutions then sample their weights as usual).
    """

    def __init__(self, layers: str = "all") -> None:
        super().__init__()
        if layers not in LAYER_CHOICES:
            raise ValueError(f"local reparameterization layers must be one of {sorted(LAYER_CHOICES)}, got {layers!r}")
        self.layers = layers
        self._types = LAYER_CHOICES[layers]
        self.moments: dict[str, tuple[Tensor, Tensor]] = {}

    def accepts(self, module: nn.Module) -> bool:
        """Whether ``module``'s pre-activations are sampled under this handler."""
        return isinstance(module, self._types)

    def __enter__(self):
        _ACTIVE.append(self)
        self.moments = {}
        return super().__enter__()

    def __exit__(self, *args):
        if _ACTIVE and _ACTIVE[-1] is self:
            _ACTIVE.pop()
        return super().__exit__(*args)

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["done"] or not msg["infer"].get(INFER_KEY):
            return
        base = msg["fn"].base_dist if hasattr(msg["fn"], "base_dist") else msg["fn"]
        self.moments[msg["name"]] = (base.loc, base.scale)
        msg["value"] = base.loc
        msg["done"] = True


def local_reparameterization(layers: str = "all") -> LocalReparameterization:
    """A new :class:`LocalReparameterization` handler, to use as a context manager
    (``layers``: ``"all"`` or ``"linear"``, see the class)."""
    return LocalReparameterization(layers)


def current() -> Optional[LocalReparameterization]:
    """The innermost active handler, or ``None``."""
    return _ACTIVE[-1] if _ACTIVE else None


def lrt_forward(
    module: nn.Module,
    x: Tensor,
    w_loc: Tensor,
    w_scale: Tensor,
    b_loc: Optional[Tensor],
    b_scale: Optional[Tensor],
) -> Tensor:
    """Sample the pre-activations of a Linear/Conv ``module`` given Gaussian weight moments.

    ``x``: the layer input (any batch shape the layer accepts). Returns a tensor shaped like
    ``module(x)``: mean + sqrt(var) * eps with eps ~ N(0, 1) drawn per output element.
    """
    b_var = None if b_scale is None else b_scale * b_scale
    if isinstance(module, nn.Linear):
        mean = F.linear(x, w_loc, b_loc)
        var = F.linear(x * x, w_scale * w_scale, b_var)
    else:
        mean = module._conv_forward(x, w_loc, b_loc)
        var = module._conv_forward(x * x, w_scale * w_scale, b_var)
    return mean + var.clamp_min(1e-16).sqrt() * torch.randn_like(mean)
