"""Built-in network architectures (plain ``nn.Module`` factories) for the command line and examples.

Any ``nn.Module`` works with :class:`~bayesdistill.BNN`; these are the defaults the
``bayesdistill`` command knows by name.

- ``"mlp"``: ``input -> hidden... -> output`` with ReLU (default hidden ``(256, 256)``).
- ``"cnn"``: a 1-D CNN for sequence inputs ``[B, L]`` such as MNIST-1D (Greydanus & Kobak
  2020 use a 3-layer 1-D CNN): three ``Conv1d`` layers (kernel 5/3/3, strides 1/2/2) with
  ReLU, then a Linear read-out over the flattened channels (32 channels).
- ``"cnn-deep"``: the same with one more length-preserving ``Conv1d(32, 32, 3)`` (a teacher
  for distillation); ``"cnn-small"``: ``"cnn"`` with 16 channels (its student: narrower and
  one layer shallower).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["mlp", "cnn1d", "build", "available", "Unsqueeze"]


class Unsqueeze(nn.Module):
    """``[B, L] -> [B, 1, L]`` so a sequence can enter a ``Conv1d``; ``[B, C, L]`` passes through."""

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(1) if x.dim() == 2 else x


def mlp(input_dim: int, output_dim: int, hidden: Sequence[int] = (256, 256)) -> nn.Sequential:
    """A ReLU multilayer perceptron ``input_dim -> *hidden -> output_dim`` on flattened inputs."""
    layers: list[nn.Module] = [nn.Flatten()]
    sizes = [input_dim, *hidden]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], output_dim))
    return nn.Sequential(*layers)


def cnn1d(length: int, output_dim: int, channels: int = 32, extra_layers: int = 0) -> nn.Sequential:
    """A 1-D CNN for ``[B, length]`` (or ``[B, 1, length]``) inputs; output ``[B, output_dim]``.

    ``Conv1d(1, C, 5)`` then ``extra_layers`` length-preserving ``Conv1d(C, C, 3, padding=1)``
    layers, then two stride-2 ``Conv1d(C, C, 3)``, each followed by ReLU, then a Linear
    read-out of the flattened ``C x ceil(length / 4)`` features.
    """
    out_len = (length + 1) // 2
    out_len = (out_len + 1) // 2
    extra: list[nn.Module] = []
    for _ in range(extra_layers):
        extra += [nn.Conv1d(channels, channels, 3, padding=1), nn.ReLU()]
    return nn.Sequential(
        Unsqueeze(),
        nn.Conv1d(1, channels, 5, padding=2),
        nn.ReLU(),
        *extra,
        nn.Conv1d(channels, channels, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(channels * out_len, output_dim),
    )


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda input_shape, output_dim, **kw: mlp(int(torch.Size(input_shape).numel()), output_dim, **kw),
    "cnn": lambda input_shape, output_dim, **kw: cnn1d(int(input_shape[-1]), output_dim, **kw),
    # a deeper teacher (one more length-preserving conv) and a narrower, shallower student:
    # "cnn-small" is reachable from "cnn-deep" by removing channels and the extra layer
    "cnn-deep": lambda input_shape, output_dim, **kw: cnn1d(
        int(input_shape[-1]), output_dim, **{"channels": 32, "extra_layers": 1, **kw}
    ),
    "cnn-small": lambda input_shape, output_dim, **kw: cnn1d(int(input_shape[-1]), output_dim, **{"channels": 16, **kw}),
}


def available() -> list[str]:
    """Names :func:`build` knows."""
    return sorted(_REGISTRY)


def build(name: str, input_shape: Sequence[int], output_dim: int, **kwargs) -> nn.Module:
    """Build the named architecture for inputs of ``input_shape`` (without batch dim)."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(available())}") from None
    return factory(tuple(input_shape), int(output_dim), **kwargs)
