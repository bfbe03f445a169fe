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

The reference architectures of knowledge distillation, for images ``[B, C, H, W]`` (32x32 CIFAR
stems; ``input_shape = (C, H, W)``):

- ``"resnet18"`` / ``"resnet10"``: :func:`~bayesdistill.models.resnet.resnet` with 2 / 1
  :class:`~bayesdistill.models.resnet.BasicBlock` per stage, widths 64-128-256-512 (keyword
  ``widths=`` for a narrower one);
- ``"resnet8"``, ``"resnet14"``, ``"resnet20"``, ``"resnet32"``, ``"resnet44"``, ``"resnet56"``,
  ``"resnet110"`` (widths 16-16-32-64) and ``"resnet8x4"``, ``"resnet32x4"`` (32-64-128-256):
  :func:`~bayesdistill.models.resnet.cifar_resnet`, the CRD benchmark's CIFAR ResNets;
- ``"wrn-16-1"``, ``"wrn-16-2"``, ``"wrn-40-1"``, ``"wrn-40-2"``: pre-activation WideResNets
  (:class:`~bayesdistill.models.resnet.WideResNet`);
- ``"mobilenetv2"`` and ``"mobile-half"`` (width 0.5): :class:`~bayesdistill.models.mobilenet.MobileNetV2`,
  depthwise convolutions;

and for sequences, ``"transformer"``: :class:`~bayesdistill.models.transformer.TransformerClassifier`
(``input_shape = (L,)``: token ids, needs ``vocab_size=``; ``(L, F)``: feature vectors).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .mobilenet import MobileNetV2, mobilenetv2
from .resnet import ResNet, WideResNet, cifar_resnet, resnet, wide_resnet
from .transformer import EncoderLayer, SelfAttention, TransformerClassifier, transformer

__all__ = ["mlp", "cnn1d", "cnn2d", "build", "available", "Unsqueeze", "ToImage", "resnet", "cifar_resnet", "wide_resnet", "mobilenetv2",
           "transformer", "ResNet", "WideResNet", "MobileNetV2", "TransformerClassifier", "EncoderLayer",
           "SelfAttention"]


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


def _image_channels(name: str, input_shape: Sequence[int]) -> int:
    if len(input_shape) != 3:
        raise ValueError(f"model {name!r} takes images: input_shape must be (channels, height, width), got {tuple(input_shape)}")
    return int(input_shape[0])


def _image(name: str, factory: Callable[..., nn.Module], **defaults) -> Callable[..., nn.Module]:
    def build_image(input_shape, output_dim, **kw):
        return factory(num_classes=output_dim, in_channels=_image_channels(name, input_shape), **{**defaults, **kw})

    return build_image


def _transformer(input_shape: Sequence[int], output_dim: int, **kw) -> nn.Module:
    if len(input_shape) == 1:
        if "vocab_size" not in kw:
            raise ValueError("model 'transformer' on token ids (input_shape (L,)) needs vocab_size=")
        return transformer(output_dim, int(input_shape[0]), **kw)
    if len(input_shape) == 2:
        return transformer(output_dim, int(input_shape[0]), input_dim=int(input_shape[1]), **kw)
    raise ValueError(f"model 'transformer' takes (L,) token ids or (L, F) features, got input_shape {tuple(input_shape)}")


_REGISTRY.update({
    "resnet18": _image("resnet18", resnet, blocks=(2, 2, 2, 2)),
    "resnet10": _image("resnet10", resnet, blocks=(1, 1, 1, 1)),
    **{f"resnet{d}": _image(f"resnet{d}", cifar_resnet, depth=d) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _image("resnet8x4", cifar_resnet, depth=8, widths=(32, 64, 128, 256)),
    "resnet32x4": _image("resnet32x4", cifar_resnet, depth=32, widths=(32, 64, 128, 256)),
    **{f"wrn-{d}-{k}": _image(f"wrn-{d}-{k}", wide_resnet, depth=d, k=k) for d in (16, 40) for k in (1, 2)},
    "mobilenetv2": _image("mobilenetv2", mobilenetv2),
    "mobile-half": _image("mobile-half", mobilenetv2, width=0.5),
    "transformer": _transformer,
})


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
