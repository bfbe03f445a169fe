"""Residual networks of the distillation literature, for 32x32 images (CIFAR stems).

- :class:`ResNet` with :class:`BasicBlock` s: ``resnet18`` / ``resnet10`` (four stages of
  64-128-256-512 channels, 2 or 1 blocks each; He et al. 2016 with the 3x3 CIFAR stem), and
  the CIFAR family ``resnet8 .. resnet110`` / ``resnet8x4`` / ``resnet32x4`` of the CRD
  benchmark (Tian et al. 2020): a 3x3 stem, three stages of ``(depth - 2) / 6`` blocks.
- :class:`WideResNet` with pre-activation :class:`WideBlock` s: ``wrn-16-2``, ``wrn-40-2``, ...
  (Zagoruyko & Komodakis 2016): depth ``d = 6 n + 4``, widths ``16, 16 k, 32 k, 64 k``.

Layout (what alignment and the feature taps rely on): the stages are the children
``layer1``, ``layer2``, ... (``nn.Sequential`` of blocks), so a student with fewer blocks per
stage has the same stage paths; a block's skip connection is the identity unless the block
changes the shape (then ``shortcut`` is a strided 1x1 convolution, with BatchNorm in
:class:`BasicBlock`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["BasicBlock", "ResNet", "WideBlock", "WideResNet", "resnet", "cifar_resnet", "wide_resnet"]


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; shortcut = identity or 1x1 conv + BN."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet for small images: 3x3 stem (conv-BN-ReLU), stages of :class:`BasicBlock`, global
    average pooling, Linear read-out.

    Args:
        blocks: blocks per stage, e.g. ``(2, 2, 2, 2)`` (ResNet-18).
        widths: channels per stage (same length as ``blocks``).
        num_classes: outputs.
        in_channels: input channels (3 for RGB).
        stem: channels of the stem (default ``widths[0]``).

    Input ``[B, in_channels, H, W]`` (any H, W >= 2 ** (stages - 1)); output ``[B, num_classes]``.
    """

    def __init__(self, blocks: Sequence[int], widths: Sequence[int], num_classes: int = 10,
                 in_channels: int = 3, stem: int | None = None):
        super().__init__()
        if len(blocks) != len(widths) or not blocks:
            raise ValueError(f"ResNet: blocks {tuple(blocks)} and widths {tuple(widths)} must have the same, non-zero length")
        stem = int(stem or widths[0])
        self.conv1 = _conv3x3(in_channels, stem)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.stage_names = [f"layer{i + 1}" for i in range(len(blocks))]
        planes = stem
        for i, (n, w) in enumerate(zip(blocks, widths)):
            stage = []
            for j in range(int(n)):
                stage.append(BasicBlock(planes, int(w), stride=2 if (i > 0 and j == 0) else 1))
                planes = int(w)
            self.add_module(self.stage_names[i], nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(self.flatten(self.avgpool(x)))


def resnet(num_classes: int = 10, *, blocks: Sequence[int] = (2, 2, 2, 2), widths: Sequence[int] = (64, 128, 256, 512),
           in_channels: int = 3, stem: int | None = None) -> ResNet:
    """ResNet-18 by default (``blocks=(2, 2, 2, 2)``, widths 64-512, 11.2M weights for 10 classes);
    ``blocks=(1, 1, 1, 1)`` is the ResNet-10 of the distillation literature."""
    return ResNet(blocks, widths, num_classes, in_channels, stem)


def cifar_resnet(depth: int, num_classes: int = 10, *, widths: Sequence[int] = (16, 16, 32, 64),
                 in_channels: int = 3) -> ResNet:
    """The CIFAR ResNets of the CRD benchmark: ``depth = 6 n + 2``, a stem of ``widths[0]`` channels and
    three stages of n blocks with ``widths[1:]`` channels (``resnet8x4``/``resnet32x4``: widths 32-64-128-256)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"cifar_resnet: depth must be 6 n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
    if len(widths) != 4:
        raise ValueError(f"cifar_resnet: widths are (stem, stage1, stage2, stage3), got {tuple(widths)}")
    n = (depth - 2) // 6
    return ResNet((n, n, n), widths[1:], num_classes, in_channels, stem=widths[0])


class WideBlock(nn.Module):
    """Pre-activation block: ``o = relu(bn1(x))``; ``conv2(dropout(relu(bn2(conv1(o))))) + skip``,
    skip = ``x`` or ``shortcut(o)`` (a strided 1x1 convolution) when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv3x3(planes, planes)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = self.relu(self.bn1(x))
        y = self.conv2(self.dropout(self.relu(self.bn2(self.conv1(o)))))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-d-k for small images: a 3x3 stem of 16 channels, three stages of ``(d - 4) / 6``
    :class:`WideBlock` s with ``16 k, 32 k, 64 k`` channels, then BN-ReLU, average pooling and a
    Linear read-out. ``widths`` overrides the stage widths (a narrower student)."""

    def __init__(self, depth: int = 16, k: int = 2, num_classes: int = 10, *, in_channels: int = 3,
                 dropout: float = 0.0, widths: Sequence[int] | None = None, stem: int = 16):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet: depth must be 6 n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = tuple(int(w) for w in (widths or (16 * k, 32 * k, 64 * k)))
        self.conv1 = _conv3x3(in_channels, stem)
        self.stage_names = [f"layer{i + 1}" for i in range(len(widths))]
        planes = stem
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(WideBlock(planes, w, stride=2 if (i > 0 and j == 0) else 1, dropout=dropout))
                planes = w
            self.add_module(self.stage_names[i], nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(self.flatten(self.avgpool(self.relu(self.bn(x)))))


def wide_resnet(depth: int = 16, k: int = 2, num_classes: int = 10, **kw) -> WideResNet:
    """WRN-depth-k (``wrn-16-2``: 0.7M weights, ``wrn-40-2``: 2.2M, for 10 classes)."""
    return WideResNet(depth, k, num_classes, **kw)
