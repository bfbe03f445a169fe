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
- ``"cnn2d"``: a 2-D CNN for square images given flattened ``[B, H*W]`` (such as the 8x8
  ``digits``) or as ``[B, 1, H, W]``: ``Conv2d(1, C, 3)`` then one stride-2 ``Conv2d(C, C, 3)``,
  each with ReLU, then a Linear read-out (16 channels); ``"cnn2d-deep"``: 32 channels and one
  more size-preserving ``Conv2d(C, C, 3)`` (a teacher); ``"cnn2d-small"``: 8 channels (its
  student: narrower and one layer shallower, reachable by ``bd.align``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["mlp", "cnn1d", "cnn2d", "build", "available", "Unsqueeze", "ToImage"]


class Unsqueeze(nn.Module):
    """``[B, L] -> [B, 1, L]`` so a sequence can enter a ``Conv1d``; ``[B, C, L]`` passes through."""

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(1) if x.dim() == 2 else x


class ToImage(nn.Module):
    """``[B, H*W] -> [B, 1, H, W]`` (a flattened square image into a ``Conv2d``);
    ``[B, H, W]`` gains the channel dimension and ``[B, C, H, W]`` passes through."""

    def __init__(self, height: int, width: int):
        super().__init__()
        self.height, self.width = int(height), int(width)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return x.reshape(x.shape[0], 1, self.height, self.width)
        return x.unsqueeze(1) if x.dim() == 3 else x

    def extra_repr(self) -> str:
        return f"height={self.height}, width={self.width}"


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


def _image_size(input_shape: Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` of an image input: ``(H, W)``, ``(C, H, W)`` or a flattened square ``(H*W,)``."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) >= 2:
        return shape[-2], shape[-1]
    side = math.isqrt(shape[0])
    if side * side != shape[0]:
        raise ValueError(f"cnn2d needs a square image; a flat input of {shape[0]} values is not one "
                         "(pass input_shape=(H, W))")
    return side, side


def cnn2d(image_size: Sequence[int], output_dim: int, channels: int = 16, extra_layers: int = 0) -> nn.Sequential:
    """A 2-D CNN for one-channel images ``[B, H*W]``, ``[B, H, W]`` or ``[B, 1, H, W]``; output
    ``[B, output_dim]``.

    ``ToImage`` then ``Conv2d(1, C, 3, padding=1)``, ``extra_layers`` size-preserving
    ``Conv2d(C, C, 3, padding=1)``, one ``Conv2d(C, C, 3, stride=2, padding=1)``, each followed by
    ReLU, then a Linear read-out of the flattened ``C x ceil(H/2) x ceil(W/2)`` features (for
    8x8 digits and C = 32: feature maps of 32 x 8 x 8 = 2,048 values, a read-out of 512).
    """
    h, w = (int(s) for s in image_size)
    extra: list[nn.Module] = []
    for _ in range(extra_layers):
        extra += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
    return nn.Sequential(
        ToImage(h, w),
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        *extra,
        nn.Conv2d(channels, channels, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(channels * ((h + 1) // 2) * ((w + 1) // 2), output_dim),
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
    # 2-D counterparts for square images (the 8x8 digits): "cnn2d-small" is reachable from
    # "cnn2d-deep" by removing channels and the extra layer
    "cnn2d": lambda input_shape, output_dim, **kw: cnn2d(_image_size(input_shape), output_dim, **kw),
    "cnn2d-deep": lambda input_shape, output_dim, **kw: cnn2d(
        _image_size(input_shape), output_dim, **{"channels": 32, "extra_layers": 1, **kw}
    ),
    "cnn2d-small": lambda input_shape, output_dim, **kw: cnn2d(_image_size(input_shape), output_dim,
                                                                **{"channels": 8, **kw}),
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
